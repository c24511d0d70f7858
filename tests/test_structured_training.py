"""Training a structured model: compile once, resume bit for bit, DDP equals one process.

The model is a two-group hierarchical VAE: the top group ``z2`` against a learned marginal,
the bottom group ``z1`` against the conditional prior ``p(z1 | z2)`` that the model computes
in the same forward pass (a residual posterior on it, as NVAE's). Its objectives keep state
over the groups: free bits per group with a scheduled ``lam`` and GECO on the total.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _ddp import close_group, open_group
from torch import Tensor, nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch.nn.parallel import DistributedDataParallel
from torch.testing import assert_close

import rdloss
from rdloss import helpers, marginals, objectives, schedules

DATA, TOP, BOTTOM, BATCH, STEPS = 8, 2, 3, 6, 4
EXACT = {"rtol": 1e-10, "atol": 1e-12}


class Hierarchical(nn.Module):
    """Encoder, top-down prior, decoder and the losses of a two-group VAE."""

    def __init__(self, *, sync_dist: bool = False, kl_balance: float | None = None) -> None:
        super().__init__()
        self.encoder = nn.Linear(DATA, 2 * (TOP + BOTTOM))
        self.prior_net = nn.Linear(TOP, 2 * BOTTOM)
        self.decoder = nn.Linear(TOP + BOTTOM, DATA)
        lam = schedules.Linear(0.0, 0.5, steps=STEPS)
        self.losses = nn.ModuleList(
            rdloss.RateDistortionLoss(
                {"z2": marginals.DiagonalGaussian(TOP)},
                objective,
                sync_dist=sync_dist,
                kl_balance=kl_balance,
            )
            for objective in (
                objectives.FreeBits(lam, per="group"),
                objectives.GECO(6.0, lr=0.05),
            )
        )

    def forward(self, x: Tensor, eps: Tensor) -> tuple[Tensor, list[rdloss.RDOutput]]:
        mu2, lv2, mu1, lv1 = self.encoder(x).split([TOP, TOP, BOTTOM, BOTTOM], dim=-1)
        q2 = helpers.normal(mu2, logvar=lv2)
        z2 = mu2 + (0.5 * lv2).exp() * eps[:, :TOP]
        p_mu, p_lv = self.prior_net(z2).chunk(2, dim=-1)
        p1 = helpers.normal(p_mu, logvar=p_lv)
        q1 = helpers.normal(p_mu + mu1, logvar=lv1)
        z1 = p_mu + mu1 + (0.5 * lv1).exp() * eps[:, TOP:]
        likelihood = helpers.bernoulli(logits=self.decoder(torch.cat([z2, z1], dim=-1)))
        outs = [
            loss_fn(
                x,
                posterior={"z2": q2, "z1": q1},
                prior={"z1": p1},
                z={"z2": z2, "z1": z1},
                likelihood=likelihood,
            )
            for loss_fn in self.losses
        ]
        return torch.stack([o.loss for o in outs]).sum(), outs


def _data(rows: int = BATCH, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(rows, DATA, generator=g) < 0.4).float()
    return x, torch.randn(rows, TOP + BOTTOM, generator=g)


def _grads(module: nn.Module) -> dict[str, Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@contextmanager
def _strict_compile() -> Iterator[None]:
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True, trace_autograd_ops=True):
        yield
    torch._dynamo.reset()


@pytest.mark.parametrize("kl_balance", [None, 0.8])
def test_two_groups_with_a_conditional_prior_compile_once(kl_balance: float | None) -> None:
    torch.manual_seed(0)
    model = Hierarchical(kl_balance=kl_balance)
    eager = copy.deepcopy(model)

    def step(net: Hierarchical, x: Tensor, eps: Tensor) -> tuple[Tensor, list[Tensor]]:
        loss, outs = net(x, eps)
        loss.backward()
        report = [o.rate_per_group[k].detach() for o in outs for k in ("z2", "z1")]  # type: ignore[index]
        return loss.detach(), report

    counter = CompileCounterWithBackend("aot_eager")
    optimisers = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (model, eager)]
    with _strict_compile():
        compiled = torch.compile(step, backend=counter, fullgraph=True)
        for i in range(STEPS):
            x, eps = _data(seed=i)
            for m in (model, eager):
                m.zero_grad(set_to_none=True)
            want = step(eager, x, eps)
            got = compiled(model, x, eps)
            assert_close(got, want)
            assert_close(_grads(model), _grads(eager))
            for optimiser in optimisers:
                optimiser.step()
    assert counter.frame_count == 1
    assert_close(model.state_dict(), eager.state_dict())
    assert int(model.losses[0].objective.step) == STEPS
    assert any(n.startswith("losses.0.marginal.z2.") for n in _grads(model))


def test_state_dict_resume_is_bit_identical_over_groups() -> None:
    torch.manual_seed(0)
    straight = Hierarchical().double()
    resumed = copy.deepcopy(straight)
    opt_straight = torch.optim.Adam(straight.parameters(), lr=0.01)
    want = _train(straight, opt_straight, range(2 * STEPS))

    opt = torch.optim.Adam(resumed.parameters(), lr=0.01)
    first = _train(resumed, opt, range(STEPS))
    checkpoint = {"model": resumed.state_dict(), "optimiser": opt.state_dict()}
    fresh = Hierarchical().double()
    fresh.load_state_dict(copy.deepcopy(checkpoint["model"]))
    opt_fresh = torch.optim.Adam(fresh.parameters(), lr=0.01)
    opt_fresh.load_state_dict(copy.deepcopy(checkpoint["optimiser"]))
    assert int(fresh.losses[0].objective.step) == STEPS  # the schedule's position came back
    second = _train(fresh, opt_fresh, range(STEPS, 2 * STEPS))

    for got, expected in zip(first + second, want, strict=True):
        assert torch.equal(got, expected)
    for (name, a), (_, b) in zip(
        fresh.state_dict().items(), straight.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def _train(model: Hierarchical, optimiser: torch.optim.Optimizer, steps: range) -> list[Tensor]:
    losses = []
    for i in steps:
        x, eps = _data(seed=i)
        optimiser.zero_grad()
        loss, _ = model(x.double(), eps.double())
        loss.backward()
        optimiser.step()
        losses.append(loss.detach())
    return losses


# --- DDP: per-group free bits with sync_dist equal the single process on the whole batch ----

WORLD = 2


def _ddp_net(lam: float) -> Hierarchical:
    torch.manual_seed(1)
    net = Hierarchical(sync_dist=True).double()
    net.losses = nn.ModuleList(
        [
            rdloss.RateDistortionLoss(
                {"z2": marginals.DiagonalGaussian(TOP)},
                objectives.FreeBits(lam, per="group"),
                sync_dist=True,
            ).double()
        ]
    )
    return net


def _halves() -> list[slice]:
    return [slice(r * BATCH, (r + 1) * BATCH) for r in range(WORLD)]


def _straddling_lam() -> float:
    """A free-bits level between the two halves' mean rates of group z1."""
    net = _ddp_net(0.0)
    x, eps = _data(rows=WORLD * BATCH, seed=5)
    with torch.no_grad():
        means = [
            float(net(x.double()[h], eps.double()[h])[1][0].rate_per_group["z1"].mean())  # type: ignore[index]
            for h in _halves()
        ]
    low, high = sorted(means)
    assert high - low > 0.1  # the halves differ enough for the clamp to tell them apart
    # Not the midpoint: that is the whole batch's mean, where max(lam, mean) has its kink
    # and an ulp of the rate decides which side's gradient the test compares.
    return low + 0.25 * (high - low)


def _ddp_run(rows: slice, ddp: bool, lam: float) -> list[dict[str, Tensor]]:
    net = _ddp_net(lam)
    module: nn.Module = DistributedDataParallel(net) if ddp else net
    x, eps = _data(rows=WORLD * BATCH, seed=5)
    x, eps = x.double()[rows], eps.double()[rows]
    grads = []
    for _ in range(2):
        net.zero_grad()
        loss, _ = module(x, eps)
        loss.backward()
        grads.append(_grads(net))
        with torch.no_grad():
            for p in net.parameters():
                p -= 0.1 * p.grad
    return grads


def _worker(rank: int, port: int, out_dir: str, lam: float) -> None:
    torch.set_num_threads(1)
    open_group(rank, WORLD, port)
    try:
        result = _ddp_run(_halves()[rank], ddp=True, lam=lam)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        close_group()


@pytest.mark.slow  # two spawned interpreters
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")
def test_ddp_sync_dist_gradients_equal_whole_batch_for_free_bits_per_group(
    tmp_path: Any, free_port: Any
) -> None:
    lam = _straddling_lam()
    mp.spawn(_worker, args=(free_port(), str(tmp_path), lam), nprocs=WORLD, join=True)
    whole = _ddp_run(slice(None), ddp=False, lam=lam)
    # Without sync_dist each rank would clamp its own mean: one clamped, one not.
    local = [_ddp_run(h, ddp=False, lam=lam)[0] for h in _halves()]
    local_mean = {n: sum(g[n] for g in local) / WORLD for n in local[0]}
    assert any(not torch.allclose(local_mean[n], whole[0][n]) for n in whole[0])
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for step, (g, w) in enumerate(zip(got, whole, strict=True)):
            for name in w:
                assert_close(
                    g[name], w[name], **EXACT, msg=lambda m, n=name, s=step: f"{s} {n}: {m}"
                )
