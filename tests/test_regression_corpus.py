"""``scripts/regression_corpus.py``: the corpus runs in-process and its comparison classifies.

No git here: a handful of configurations run in this process (the rdloss being tested),
their results are checked for the recorded structure, compared with themselves (all
bit-identical), and perturbed copies are classified as the script's docstring says.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "regression_corpus.py"


@pytest.fixture(scope="module")
def rc() -> ModuleType:
    spec = importlib.util.spec_from_file_location("regression_corpus", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _pick(rc: ModuleType) -> list[Any]:
    """One eager configuration per structure, plus discrete and hostile ones (no flows)."""
    seen: set[str] = set()
    picked = []
    for cfg in rc.corpus(flows=False):
        key = cfg.structure if not cfg.posterior.startswith(("cat", "one")) else cfg.posterior
        if cfg.compiled or key in seen or (cfg.dtype, cfg.validate) != ("float64", True):
            continue
        seen.add(key)
        picked.append(cfg)
    return picked


@pytest.fixture(scope="module")
def results(rc: ModuleType) -> dict[str, Any]:
    out: dict[str, Any] = rc.run_corpus(_pick(rc))
    return out


def test_corpus_size_and_unique_names(rc: ModuleType) -> None:
    configs = rc.corpus(flows=True)
    assert 300 <= len(configs) <= 500
    assert len({c.name for c in configs}) == len(configs)
    assert {c.dtype for c in configs} == {"float64", "float32"}
    assert {c.validate for c in configs} == {True, False}
    assert 3 <= sum(c.compiled for c in configs) <= 5
    assert {c.call for c in configs} >= {"likelihood", "decoder1", "decoder3", "enumerate"}


def test_results_have_the_recorded_structure(rc: ModuleType, results: dict[str, Any]) -> None:
    assert len(results) >= 12
    ran = [r for r in results.values() if r["ok"]]
    assert len(ran) >= 10
    assert any(not r["ok"] for r in results.values())  # the hostile ones raise
    for result in ran:
        assert len(result["calls"]) == 2
        for call in result["calls"]:
            assert set(call["out"]) == set(rc.FIELDS)
            assert isinstance(call["out"]["loss"], torch.Tensor)
            assert call["out"]["loss"].ndim == 0
            assert isinstance(call["out"]["estimator"], str)
            assert any(k.startswith("decoder.") for k in call["grad"])
            assert all(g is None or not g.requires_grad for g in call["grad"].values())
        assert "step" in result["state"]
    for name, result in results.items():
        if not result["ok"]:
            assert "hostile" in name or result["error_type"] in ("ValueError", "TypeError")


def test_same_results_are_identical(rc: ModuleType, results: dict[str, Any]) -> None:
    verdicts = rc.compare(results, copy.deepcopy(results))
    assert {v.status for v in verdicts} <= {"identical", "raised"}
    assert sum(v.status == "identical" for v in verdicts) >= 10


def _perturbed(result: dict[str, Any], factor: float) -> dict[str, Any]:
    changed = copy.deepcopy(result)
    loss = changed["calls"][0]["out"]["loss"]
    changed["calls"][0]["out"]["loss"] = loss * factor
    return changed


def test_differences_are_classified(rc: ModuleType, results: dict[str, Any]) -> None:
    name, result = next((n, r) for n, r in results.items() if r["ok"] and r["tags"])
    tiny = rc.compare_one(name, result, _perturbed(result, 1 + 4e-16))
    assert tiny.status == "tolerance" and 0 < tiny.relative <= 1e-15
    large = rc.compare_one(name, result, _perturbed(result, 1 + 1e-9))
    assert large.status == "FAIL" and "worst at /calls/0/out/loss" in large.detail
    untagged = dict(_perturbed(result, 1 + 4e-16), tags=[])
    assert rc.compare_one(name, result, untagged).status == "FAIL"
    rate = copy.deepcopy(result)
    rate["calls"][1]["out"]["rate"] = rate["calls"][1]["out"]["rate"] * (1 + 4e-16)
    bernoulli_only = dict(rate, tags=[rc.BERNOULLI_LIKELIHOOD])
    assert rc.compare_one(name, result, bernoulli_only).status == "FAIL"  # not the rate's path
    gaussian = dict(rate, tags=[rc.GAUSSIAN_POSTERIOR])
    assert rc.compare_one(name, result, gaussian).status == "tolerance"
    raised = {"ok": False, "error_type": "ValueError", "error": "boom", "compiled": False}
    assert rc.compare_one(name, result, raised).status == "FAIL"
    assert rc.compare_one(name, raised, raised).status == "raised"
    assert rc.compare_one(name, raised, dict(raised, compiled=True)).status == "raised"
    assert rc.compare_one(name, result, dict(raised, compiled=True)).status == "compile_skipped"
    assert rc.compare_one(name, result, None).status == "FAIL"


def test_tensor_difference(rc: ModuleType) -> None:
    a = torch.tensor([1.0, math.nan, math.inf, 0.0], dtype=torch.float64)
    assert rc.tensor_difference(a, a.clone()) == 0.0
    assert rc.tensor_difference(torch.tensor(0.0), torch.tensor(-0.0)) > 0.0
    assert rc.tensor_difference(a, a.float()) == math.inf
    b = a.clone()
    b[0] = 1.0 + 2**-52
    assert rc.tensor_difference(a, b) == pytest.approx(2**-52)
    b[1] = 0.0
    assert rc.tensor_difference(a, b) == math.inf
