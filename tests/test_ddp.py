"""DDP through `RateDistortionLoss`: two gloo processes against one process on the whole batch.

Each rank holds one half of a combined float64 batch; the model, its learnable marginal and
the loss live in one module wrapped by ``DistributedDataParallel`` (a marginal outside the
wrapped module would get no gradient averaging). DDP averages the ranks' gradients. By
default every rdloss objective reduces by the rank's *local* batch mean, so

    DDP gradient = mean over ranks of the gradient of the rank's own loss       (always)
                 = gradient of the combined-batch loss   only if the objective is linear in
                   the batch means and every rank holds the same (weight) total.

Hence, checked below: `Beta` with equal halves (also with per-example weights whose
per-rank sums agree) is exact; `Beta` with unequal weight sums, `TargetRate` whose target
lies between the two halves' mean rates (``|sigma - mean R|`` is not linear) and the
`RateController` (β from the local mean rate) are not, and equal the per-rank average
instead; feedback state (GECO's multiplier, the controller's integrator) updates from the
local batch on each rank. With ``RateDistortionLoss(sync_dist=True)`` the objectives reduce
by the differentiably all-reduced global means, and every case is exact: gradients, loss and
feedback state equal the single-process values on the whole batch at every step. The
torchmetrics diagnostics, synchronised at ``compute``, equal the single-process values
exactly up to summation order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _ddp import close_group, open_group
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.testing import assert_close

from rdloss import RateDistortionLoss, RDOutput, helpers
from rdloss.diagnostics import ActiveUnits, RateDistortion, RatePerDimension
from rdloss.marginals import DiagonalGaussian, GaussianMixture
from rdloss.objectives import GECO, Beta, Objective, RateController, TargetRate
from rdloss.schedules import Linear

pytestmark = [
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing"),
    pytest.mark.slow,  # two spawned interpreters
]

HALF, DIM, LATENT, HIDDEN = 6, 10, 3, 8
WORLD = 2
EXACT = {"rtol": 1e-10, "atol": 1e-12}  # equal up to the order of the float64 sums


class Net(nn.Module):
    """Encoder, decoder and the loss (with its marginal) in one module for DDP."""

    def __init__(self, marginal: nn.Module, objective: Objective, sync: bool) -> None:
        super().__init__()
        self.encoder = nn.Linear(DIM, 2 * LATENT)
        self.decoder = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, DIM))
        self.loss_fn = RateDistortionLoss(marginal, objective, sync_dist=sync)

    def forward(self, x: Tensor, eps: Tensor, weight: Tensor | None) -> tuple[RDOutput, Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        z = mu + (0.5 * logvar).exp() * eps  # fixed noise: every process sees the same z
        likelihood = helpers.bernoulli(logits=self.decoder(z))
        out = self.loss_fn(
            x,
            posterior=helpers.normal(mu, logvar=logvar),
            likelihood=likelihood,
            z=z,
            weight=weight,
        )
        return out, mu


class Case(NamedTuple):
    marginal: str  # "mixture" (Monte Carlo rate with the given z) or "diagonal" (analytic)
    objective: Callable[[dict[str, float]], Objective]  # from the half-mean rates
    weights: str  # "none", "equal_sums", "unequal_sums"
    steps: int
    exact: bool  # DDP gradient == combined-batch gradient
    sync: bool = False  # RateDistortionLoss(sync_dist=...)


CASES: dict[str, Case] = {
    "beta_schedule": Case("mixture", lambda s: Beta(Linear(0.5, 1.0, steps=3)), "none", 3, True),
    "beta_weights_equal_sums": Case("diagonal", lambda s: Beta(0.7), "equal_sums", 2, True),
    "beta_weights_unequal_sums": Case("diagonal", lambda s: Beta(0.7), "unequal_sums", 1, False),
    "target_rate_below": Case("mixture", lambda s: TargetRate(s["below"], 2.0), "none", 2, True),
    "target_rate_between": Case(
        "mixture", lambda s: TargetRate(s["between"], 2.0), "none", 1, False
    ),
    # exact at the first step only: the multiplier used there is the initial one
    "geco": Case("diagonal", lambda s: GECO(30.0, lr=0.05), "none", 1, True),
    "rate_controller": Case(
        "diagonal", lambda s: RateController(s["between"], kp=0.5, ki=0.5), "none", 1, False
    ),
    # sync_dist=True: every case exact, over several steps, feedback state included
    "sync_beta_unequal_sums": Case("diagonal", lambda s: Beta(0.7), "unequal_sums", 2, True, True),
    "sync_target_rate_between": Case(
        "mixture", lambda s: TargetRate(s["between"], 2.0), "unequal_sums", 2, True, True
    ),
    "sync_geco": Case("diagonal", lambda s: GECO(30.0, lr=0.05), "none", 3, True, True),
    "sync_rate_controller": Case(
        "diagonal", lambda s: RateController(s["between"], kp=0.5, ki=0.5), "none", 3, True, True
    ),
}

FEEDBACK = ("geco", "rate_controller")


def _data() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    n = WORLD * HALF
    # the second half is denser, so the halves' rates differ
    density = torch.cat([torch.full((HALF, DIM), 0.2), torch.full((HALF, DIM), 0.7)])
    return {
        "x": (torch.rand(n, DIM, generator=g) < density).double(),
        "eps": torch.randn(n, LATENT, generator=g, dtype=torch.float64),
        "equal_sums": torch.tensor([1.0, 2.0, 3.0, 0.5, 1.5, 4.0] * 2, dtype=torch.float64),
        "unequal_sums": torch.rand(n, generator=g, dtype=torch.float64) * torch.arange(1, n + 1),
    }


def _net(case: Case, sigmas: dict[str, float]) -> Net:
    torch.manual_seed(1)  # the same initial parameters in every process
    marginal = (
        GaussianMixture(LATENT, n_components=3)
        if case.marginal == "mixture"
        else DiagonalGaussian(LATENT)
    )
    return Net(marginal, case.objective(sigmas), case.sync).double()


def _sigmas() -> dict[str, float]:
    """Targets below both halves' mean rates, and between them (nearer the lower)."""
    net, data = _net(CASES["beta_schedule"], {}), _data()
    with torch.no_grad():
        rates = [
            net(data["x"][s], data["eps"][s], None)[0].rate.item()
            for s in (slice(0, HALF), slice(HALF, None))
        ]
    low, high = sorted(rates)
    assert 0 < low < high / 2  # the halves really differ
    return {"below": 0.5 * low, "between": 0.75 * low + 0.25 * high}


def _train(case: Case, sigmas: dict[str, float], rows: slice, ddp: bool) -> dict[str, Any]:
    """``case.steps`` SGD steps on ``rows``; gradients, metrics and state after each step."""
    data = _data()
    net = _net(case, sigmas)
    module: nn.Module = DistributedDataParallel(net) if ddp else net
    diagnostics = {"rd": RateDistortion(), "active": ActiveUnits(latent_dim=LATENT)}
    if case.marginal == "diagonal":
        diagnostics["per_dim"] = RatePerDimension(latent_dim=LATENT)
    for metric in diagnostics.values():
        metric.set_dtype(torch.float64)
    x, eps = data["x"][rows], data["eps"][rows]
    weight = None if case.weights == "none" else data[case.weights][rows]
    history = []
    for _ in range(case.steps):
        net.zero_grad()
        out, mu = module(x, eps, weight)
        out.loss.backward()
        diagnostics["rd"].update(out)
        diagnostics["active"].update(mu)
        if "per_dim" in diagnostics:
            diagnostics["per_dim"].update(out)
        history.append(
            {
                "grads": {n: p.grad.clone() for n, p in net.named_parameters()},
                "metrics": out.metrics(),
                "weight_sum": float(len(x) if weight is None else weight.sum()),
                "state": {n: b.clone() for n, b in net.loss_fn.objective.named_buffers()},
            }
        )
        with torch.no_grad():  # plain SGD (torch.optim would import torch._dynamo: seconds)
            for p in net.parameters():
                p -= 0.05 * p.grad
    synced = {name: metric.compute() for name, metric in diagnostics.items()}
    return {"history": history, "diagnostics": synced}


def _worker(rank: int, port: int, out_dir: str, sigmas: dict[str, float]) -> None:
    torch.set_num_threads(1)
    open_group(rank, WORLD, port)
    try:
        rows = slice(rank * HALF, (rank + 1) * HALF)
        results = {name: _train(case, sigmas, rows, ddp=True) for name, case in CASES.items()}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        close_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, free_port) -> dict[str, Any]:
    """DDP results of both ranks, and single-process results on the whole batch and halves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out_dir = tmp_path_factory.mktemp("ddp")
        sigmas = _sigmas()
        mp.spawn(_worker, args=(free_port(), str(out_dir), sigmas), nprocs=WORLD, join=True)
        halves = [slice(0, HALF), slice(HALF, None)]
        return {
            "ddp": [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)],
            "whole": {n: _train(c, sigmas, slice(None), ddp=False) for n, c in CASES.items()},
            "halves": {
                n: [_train(c, sigmas, h, ddp=False) for h in halves] for n, c in CASES.items()
            },
        }
    finally:
        torch.set_num_threads(threads)


def _mean_grads(halves: list[dict[str, Any]]) -> dict[str, Tensor]:
    first = [h["history"][0]["grads"] for h in halves]
    return {n: sum(g[n] for g in first) / WORLD for n in first[0]}


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if not c.sync])
def test_ddp_gradient_is_the_mean_of_the_ranks_local_losses(runs, name):
    # DDP's semantics through rdloss's objectives: the average of per-rank gradients.
    want = _mean_grads(runs["halves"][name])
    for rank in range(WORLD):
        got = runs["ddp"][rank][name]["history"][0]["grads"]
        assert got.keys() == want.keys()
        assert any(n.startswith("loss_fn.marginal.") for n in got)  # the marginal is trained
        for n in want:
            assert_close(got[n], want[n], **EXACT, msg=lambda m, n=n: f"{name} {n}: {m}")


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.exact])
def test_ddp_gradients_equal_whole_batch_gradients(runs, name):
    whole = runs["whole"][name]["history"]
    for rank in range(WORLD):
        ddp = runs["ddp"][rank][name]["history"]
        assert len(ddp) == len(whole) == CASES[name].steps
        for step, (got, want) in enumerate(zip(ddp, whole, strict=True)):
            for n in want["grads"]:
                assert_close(
                    got["grads"][n],
                    want["grads"][n],
                    **EXACT,
                    msg=lambda m, n=n, s=step: f"{name} step {s} {n}: {m}",
                )


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if not c.exact])
def test_ddp_gradients_differ_from_whole_batch_where_rdloss_is_not_exact(runs, name):
    # Documents the limitation: a batch-mean nonlinearity, or unequal weight totals, per rank.
    got = runs["ddp"][0][name]["history"][0]["grads"]
    want = runs["whole"][name]["history"][0]["grads"]
    worst = max(
        float(((got[n] - want[n]).abs() / (want[n].abs().max() + 1e-12)).max()) for n in want
    )
    assert worst > 1e-3, f"{name}: expected a visible difference, got {worst:.2e}"


def test_target_between_the_halves_really_straddles(runs):
    # sign(sigma - R_r) differs between the ranks, so no rescaling of the local losses helps
    rates = sorted(
        h["history"][0]["metrics"]["rate"] for h in runs["halves"]["target_rate_between"]
    )
    sigma = runs["halves"]["target_rate_between"][0]["history"][0]["metrics"]["target_rate"]
    assert rates[0] < sigma < sum(rates) / WORLD < rates[1]


@pytest.mark.parametrize("name", list(CASES))
def test_output_metrics_aggregate_to_whole_batch_values(runs, name):
    # RDOutput.metrics() are float32 floats: rate, distortion and ELBO are the weighted means
    # of the ranks' values; hyperparameters agree; the loss averages only where exact.
    want = runs["whole"][name]["history"][0]["metrics"]
    per_rank = [runs["ddp"][r][name]["history"][0] for r in range(WORLD)]
    total = sum(h["weight_sum"] for h in per_rank)
    for key in want:
        values = [h["metrics"][key] for h in per_rank]
        if key in ("rate", "distortion", "elbo", "rate_bits", "distortion_bits"):
            got = sum(v * h["weight_sum"] for v, h in zip(values, per_rank, strict=True)) / total
        elif key == "loss":
            if not CASES[name].exact:
                continue
            got = sum(values) / WORLD
        elif name in FEEDBACK and key in ("multiplier", "constraint_ma", "beta"):
            continue  # rank-local state: see test_feedback_state_is_rank_local
        else:  # target_rate, target_distortion, scheduled beta
            assert values[0] == values[1], key
            got = values[0]
        assert_close(got, want[key], rtol=2e-6, atol=1e-6, msg=lambda m, k=key: f"{name} {k}: {m}")


def _leaves(value: object) -> list[Tensor]:
    """The tensors of a metric result (a tensor or a named tuple with optional fields)."""
    items = value if isinstance(value, tuple) else (value,)
    return [torch.as_tensor(v) for v in items if v is not None]


@pytest.mark.parametrize("name", list(CASES))
def test_synced_diagnostics_equal_whole_batch(runs, name):
    want = runs["whole"][name]["diagnostics"]
    for rank in range(WORLD):
        got = runs["ddp"][rank][name]["diagnostics"]
        assert got.keys() == want.keys()
        for key in want:
            for g, w in zip(_leaves(got[key]), _leaves(want[key]), strict=True):
                assert_close(g, w, **EXACT, msg=lambda m, k=key: f"{name} {k}: {m}")


@pytest.mark.parametrize("name", [n for n in CASES if n not in FEEDBACK])
def test_objective_state_equals_whole_batch(runs, name):
    want = runs["whole"][name]["history"]
    for rank in range(WORLD):
        got = runs["ddp"][rank][name]["history"]
        for step, (g, w) in enumerate(zip(got, want, strict=True)):
            assert g["state"].keys() == w["state"].keys()
            assert torch.equal(g["state"]["step"], w["state"]["step"])
            for b in w["state"]:  # with sync_dist also GECO's and the controller's state
                assert_close(
                    g["state"][b], w["state"][b], **EXACT, msg=lambda m, b=b, s=step: f"{s} {b}"
                )
        assert int(got[-1]["state"]["step"]) == CASES[name].steps


@pytest.mark.parametrize("name", ["sync_geco", "sync_rate_controller"])
def test_synced_feedback_state_moves(runs, name):
    # Not vacuous: the state the test above compares changes from step to step.
    history = runs["whole"][name]["history"]
    states = [h["state"] for h in history]
    moving = [b for b in states[0] if b != "step" and not torch.equal(states[0][b], states[-1][b])]
    assert moving, f"{name}: no feedback state changed"


@pytest.mark.parametrize(
    ("name", "buffers"),
    [("geco", ("multiplier", "constraint_ma")), ("rate_controller", ("beta", "integral"))],
)
def test_feedback_state_is_rank_local(runs, name, buffers):
    # GECO and RateController update from the rank's own batch mean: after one step each
    # rank holds the state of a single-process step on its half, not on the whole batch.
    # (DDP's default broadcast_buffers=True then overwrites every rank's buffers with rank
    # 0's at the next forward, so a run goes on from the state of rank 0's data alone.)
    whole = runs["whole"][name]["history"][0]["state"]
    for rank in range(WORLD):
        got = runs["ddp"][rank][name]["history"][0]["state"]
        half = runs["halves"][name][rank]["history"][0]["state"]
        for b in buffers:
            assert_close(got[b], half[b], **EXACT)
            assert not torch.allclose(got[b], whole[b], rtol=1e-4), f"{name}.{b}"
