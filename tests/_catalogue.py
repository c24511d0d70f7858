"""Catalogue of bad inputs: each raises a clear error naming the argument; none returns a number.

The catalogue is split by the module the error belongs to: each module's test file holds a
``BAD_INPUTS`` dict of ``key: (call, exception, message pattern)`` and parametrises its own
test over it with `expect_named_error`. ``docs/errors.md`` tabulates the keys of every part
(`catalogue` gathers them for the check in ``test_docs_code.py``, so the table cannot drift).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pytest
import torch
from _builders import B, D

import rdloss
from rdloss import helpers

Entry = tuple[Callable[[], object], type[Exception], str]

PARTS = (
    "test_loss",
    "test_latents",
    "test_helpers",
    "test_marginals",
    "test_schedules",
    "test_objective_state",
    "test_diagnostics_functional",
    "test_diagnostics_metrics",
    "test_mutual_information",
    "test_plot",
    "test_cli",
)

P = 6


def _x() -> torch.Tensor:
    return torch.randint(0, 2, (B, P)).float()


def _q(batch: int = B) -> torch.distributions.Distribution:
    return helpers.normal(torch.randn(batch, D), scale=1.0)


def _p(batch: int = B) -> torch.distributions.Distribution:
    return helpers.bernoulli(logits=torch.randn(batch, P))


def _loss(**kwargs: object) -> Callable[..., object]:
    return rdloss.RateDistortionLoss(**kwargs)  # type: ignore[arg-type]


def expect_named_error(entry: Entry) -> None:
    """Run one catalogue entry: its call must raise its exception with a matching message."""
    call, error, message = entry
    with pytest.raises(error, match=message):
        call()


def catalogue() -> dict[str, Entry]:
    """Every part's ``BAD_INPUTS``, merged (a key in two parts is an error)."""
    cases: dict[str, Entry] = {}
    for name in PARTS:
        part = importlib.import_module(name).BAD_INPUTS
        clash = sorted(set(part) & set(cases))
        assert not clash, f"{name} repeats catalogue keys {clash}"
        cases.update(part)
    return cases
