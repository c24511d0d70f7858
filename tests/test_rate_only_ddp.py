"""The rate alone under two gloo processes with ``sync_dist=True``: the whole batch's loss.

Each rank holds half of a float64 batch of sequence posteriors and priors (with a step mask)
and calls the rate alone; `TargetRate` is nonlinear in the batch mean, so only the
all-reduced mean gives the whole batch's loss. The loss equals the single-process loss on
the union of the halves, and each rank's gradient to its own rows is ``WORLD`` times the
whole-batch gradient (the all-reduce's backward sums every rank's loss; DDP would divide by
``WORLD``).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _ddp import close_group, open_group
from torch import Tensor
from torch.distributions import Independent, Normal
from torch.testing import assert_close

from rdloss import RateDistortionLoss
from rdloss.objectives import TargetRate

pytestmark = [
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing"),
    pytest.mark.slow,  # two spawned interpreters
]

WORLD, HALF, T, D = 2, 3, 4, 2


def _batch() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "loc": torch.randn(WORLD * HALF, T, D, generator=g, dtype=torch.float64),
        "prior": torch.randn(WORLD * HALF, T, D, generator=g, dtype=torch.float64),
        "mask": torch.tensor([4, 2, 3, 1, 4, 3])[:, None] > torch.arange(T),
    }


def _loss(rows: slice, sync: bool) -> tuple[Tensor, Tensor]:
    b = _batch()
    loc = b["loc"][rows].clone().requires_grad_()
    loss_fn = RateDistortionLoss(
        objective=TargetRate(1.5), kl_balance=0.8, sync_dist=sync
    )  # the target lies inside the range of the rates, so |sigma - mean R| bends
    out = loss_fn(
        posterior=Independent(Normal(loc, 1.0), 1),
        prior=Independent(Normal(b["prior"][rows], 1.0), 1),
        mask=b["mask"][rows],
    )
    (grad,) = torch.autograd.grad(out.loss, [loc])
    return out.loss.detach(), grad


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    open_group(rank, WORLD)
    try:
        loss, grad = _loss(slice(rank * HALF, (rank + 1) * HALF), sync=True)
        torch.save({"loss": loss, "grad": grad}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        close_group()


def test_rate_alone_with_sync_dist_equals_the_whole_batch(tmp_path: Any, free_port: Any) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    whole_loss, whole_grad = _loss(slice(None), sync=False)
    halves = [torch.load(tmp_path / f"{r}.pt") for r in range(WORLD)]
    for rank, half in enumerate(halves):
        assert_close(half["loss"], whole_loss, rtol=1e-12, atol=1e-12)
        rows = whole_grad[rank * HALF : (rank + 1) * HALF]
        assert_close(half["grad"], WORLD * rows, rtol=1e-12, atol=1e-12)
    local_loss, _ = _loss(slice(0, HALF), sync=False)
    assert not torch.allclose(local_loss, whole_loss)  # the halves really differ
