"""Two gloo processes on CPU: every metric equals the single-process value on the union."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _ddp import close_group, open_group
from torch.testing import assert_close

from rdloss import helpers
from rdloss.diagnostics import (
    ActiveUnits,
    MutualInformation,
    MutualInformationBounds,
    RateDistortion,
    RatePerDimension,
    StepRate,
)
from rdloss.marginals import StandardNormal

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")

N, D = 60, 4
# Uneven batches on purpose: rank 0 holds rows 0..35 in three batches, rank 1 the rest in two.
RANK_BATCHES = {0: [(0, 10), (10, 30), (30, 36)], 1: [(36, 50), (50, 60)]}


def _dataset() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "rate": torch.rand(N, generator=g) * 5,
        "distortion": torch.rand(N, generator=g) * 50 + 20,
        "loc": 1e3 + torch.randn(N, D, generator=g) * torch.tensor([1.0, 0.3, 0.05, 0.001]),
        "scale": 0.1 + torch.rand(N, D, generator=g),
        "per_dim": torch.rand(N, D, generator=g),
        # sequences of 5 steps padded after a random length: steps are the samples
        "step_rate": torch.rand(N, 5, generator=g) * 3,
        "step_loc": 50.0 + torch.randn(N, 5, D, generator=g),
        "step_mask": torch.arange(5) < torch.randint(0, 6, (N, 1), generator=g),
    }


def _metrics() -> dict[str, torch.nn.Module]:
    return {
        "rd": RateDistortion(data_dims=10),
        "bounds": MutualInformationBounds(data_entropy=40.0),
        "active": ActiveUnits(),
        "per_dim": RatePerDimension(),
        "mi": MutualInformation(StandardNormal(D), tc_samples=30),
        "step_rate": StepRate(free_bits=1.0),
        "step_active": ActiveUnits(steps=True),
        "step_per_dim": RatePerDimension(steps=True),
    }


def _run(batches: list[tuple[int, int]]) -> dict[str, list[torch.Tensor]]:
    data, metrics = _dataset(), _metrics()
    for lo, hi in batches:
        metrics["rd"].update(data["rate"][lo:hi], data["distortion"][lo:hi])
        metrics["bounds"].update(data["rate"][lo:hi], data["distortion"][lo:hi])
        metrics["active"].update(data["loc"][lo:hi])
        metrics["per_dim"].update(data["per_dim"][lo:hi])
        metrics["mi"].update(helpers.normal(data["loc"][lo:hi], scale=data["scale"][lo:hi]))
        mask = data["step_mask"][lo:hi]
        metrics["step_rate"].update(data["step_rate"][lo:hi], mask=mask)
        metrics["step_active"].update(data["step_loc"][lo:hi], mask=mask)
        metrics["step_per_dim"].update(data["step_loc"][lo:hi], mask=mask)
    results = {}
    for name, metric in metrics.items():
        value = metric.compute()
        items = value if isinstance(value, tuple) else (value,)
        results[name] = [torch.as_tensor(v) for v in items if v is not None]
    return results


def _worker(rank: int, port: int, out_dir: str) -> None:
    open_group(rank, 2, port)
    try:
        torch.save(_run(RANK_BATCHES[rank]), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        close_group()


def test_two_process_metrics_equal_single_process_union(tmp_path, free_port):
    torch.set_num_threads(1)
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    single = _run(RANK_BATCHES[0] + RANK_BATCHES[1])
    for rank in (0, 1):
        synced = torch.load(tmp_path / f"rank{rank}.pt")
        assert synced.keys() == single.keys()
        for name in single:
            assert len(synced[name]) == len(single[name]), name
            for got, want in zip(synced[name], single[name], strict=True):
                assert_close(got, want, msg=lambda m, n=name: f"{n}: {m}")
    # the union really differs from each half (the test can fail)
    half = _run(RANK_BATCHES[0])
    assert not torch.allclose(half["rd"][0], single["rd"][0])
    assert not torch.allclose(half["mi"][0], single["mi"][0])
    assert not torch.allclose(half["step_rate"][1], single["step_rate"][1])
    assert not torch.allclose(half["step_active"][1], single["step_active"][1])
