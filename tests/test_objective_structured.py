"""Objectives over the structure of the rate (rdloss.objectives._structured).

Free bits at every level (dimension, group, step, total; per batch or per example, weighted
or not) and NVAE's group balancing against hand-written references, the existing objectives
on grouped models, ``sync_dist`` on one process, and float64 gradchecks (issues 12 and 13).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _builders import EXACT, B, D, _call, _gaussian_kl, _nll, _normal, _q, _x
from torch import Tensor
from torch.distributions import (
    Categorical,
    Independent,
    MixtureSameFamily,
    Normal,
)
from torch.testing import assert_close

import rdloss
from rdloss import functional as F
from rdloss import objectives, schedules

# --- objectives over groups, steps and dimensions (hand-written references) ----------------


def _wmean(v: Tensor, w: Tensor | None) -> Tensor:
    """Weighted mean over dim 0, written out."""
    if w is None:
        return v.mean(0)
    shape = (-1,) + (1,) * (v.ndim - 1)
    return (w.reshape(shape) * v).sum(0) / w.sum()


def _model(seed: int = 0) -> tuple[dict[str, Any], dict[str, Any], list[Tensor]]:
    """Two stepped groups (T = 3 and T = 2) and a plain one, priors with gradients."""
    lq1, sq1 = _normal(B, 3, 2, seed=seed, grad=True)
    lp1, sp1 = _normal(B, 3, 2, seed=seed + 1, grad=True)
    lq2, sq2 = _normal(B, 2, 4, seed=seed + 2, grad=True)
    lq3, sq3 = _normal(B, 5, seed=seed + 3, grad=True)
    post = {
        "s1": Independent(Normal(lq1, sq1), 1),
        "s2": Independent(Normal(lq2, sq2), 1),
        "g": Independent(Normal(lq3, sq3), 1),
    }
    prior = {"s1": Independent(Normal(lp1, sp1), 1)}
    return post, prior, [lq1, sq1, lp1, sp1, lq2, sq2, lq3, sq3]


def _ref_terms(post: dict[str, Any], prior: dict[str, Any]) -> dict[str, Tensor]:
    """Per-element KLs of `_model`'s groups, written out."""
    out = {}
    for k, q in post.items():
        base = q.base_dist
        if k in prior:
            p = prior[k].base_dist
            out[k] = _gaussian_kl(base.loc, base.scale, p.loc, p.scale)
        else:
            out[k] = _gaussian_kl(
                base.loc, base.scale, torch.zeros_like(base.loc), torch.ones_like(base.loc)
            )
    return out


WEIGHTS = [None, torch.tensor([1.0, 0.0, 2.0, 0.5], dtype=torch.float64)]


@pytest.mark.parametrize("weight", WEIGHTS, ids=["unweighted", "weighted"])
@pytest.mark.parametrize("reduction", ["batch", "example"])
@pytest.mark.parametrize("per", ["dimension", "group", "total"])
def test_free_bits_at_every_level_matches_the_formula(
    per: str, reduction: str, weight: Tensor | None
) -> None:
    post, prior, leaves = _model()
    lam, beta = 0.7, 0.6
    loss = rdloss.RateDistortionLoss(
        objective=objectives.FreeBits(lam, per=per, reduction=reduction, beta=beta)  # type: ignore[arg-type]
    )
    x, lik = _x()
    out = loss(x, posterior=post, prior=prior, likelihood=lik, weight=weight)
    kl = _ref_terms(post, prior)
    if per == "dimension":
        units = torch.cat([kl[k].flatten(1) for k in post], 1)
    elif per == "group":
        units = torch.stack([kl[k].flatten(1).sum(1) for k in post], 1)
    else:
        units = torch.cat([kl[k].flatten(1) for k in post], 1).sum(1, keepdim=True)
    if reduction == "batch":
        clamped = torch.clamp(_wmean(units, weight), min=lam).sum()
    else:
        clamped = _wmean(torch.clamp(units, min=lam).sum(1), weight)
    expected = _wmean(_nll(x), weight) + beta * clamped
    assert_close(out.loss, expected, **EXACT)
    assert_close(out.hyper["clamped_rate"], clamped.detach(), **EXACT)
    # the reported rate is not clamped
    assert_close(out.rate, _wmean(units.sum(1), weight), **EXACT)
    got = torch.autograd.grad(out.loss, leaves)
    ref = torch.autograd.grad(expected, leaves)
    for a, b in zip(got, ref, strict=True):
        assert_close(a, b, **EXACT)


@pytest.mark.parametrize("weight", WEIGHTS, ids=["unweighted", "weighted"])
@pytest.mark.parametrize("reduction", ["batch", "example"])
def test_free_bits_per_step_over_groups_of_different_lengths(
    reduction: str, weight: Tensor | None
) -> None:
    post, prior, _ = _model()
    del post["g"]
    lam = 1.0
    loss = rdloss.RateDistortionLoss(
        objective=objectives.FreeBits(lam, per="step", reduction=reduction)  # type: ignore[arg-type]
    )
    x, lik = _x()
    out = loss(x, posterior=post, prior=prior, likelihood=lik, weight=weight)
    kl = _ref_terms(post, prior)
    units = torch.cat([kl["s1"].sum(-1), kl["s2"].sum(-1)], 1)  # (B, 3 + 2)
    assert out.rate_per_step is not None
    assert_close(out.rate_per_step["s1"], kl["s1"].sum(-1), **EXACT)
    assert_close(out.rate_per_step["s2"], kl["s2"].sum(-1), **EXACT)
    if reduction == "batch":
        clamped = torch.clamp(_wmean(units, weight), min=lam).sum()
    else:
        clamped = _wmean(torch.clamp(units, min=lam).sum(1), weight)
    assert_close(out.loss, _wmean(_nll(x), weight) + clamped, **EXACT)


def test_free_bits_per_step_with_a_group_without_steps_names_it() -> None:
    post, prior, _ = _model()
    loss = rdloss.RateDistortionLoss(objective=objectives.FreeBits(1.0, per="step"))
    x, lik = _x()
    with pytest.raises(ValueError, match="'g'"):
        loss(x, posterior=post, prior=prior, likelihood=lik)


def test_free_bits_per_group_on_an_ungrouped_call_is_refused() -> None:
    loss = rdloss.RateDistortionLoss(objective=objectives.FreeBits(1.0, per="group"))
    with pytest.raises(ValueError, match="named latent groups"):
        _call(loss=loss, posterior=_q(B, D))


def test_free_bits_per_dimension_with_a_mixture_group_is_refused() -> None:
    loc, scale = _normal(B, 3, D, seed=2)
    mix = MixtureSameFamily(
        Categorical(logits=torch.zeros(B, 3, dtype=torch.float64)),
        Independent(Normal(loc, scale), 1),
    )
    q = _q(B, D, seed=1)
    loss = rdloss.RateDistortionLoss(objective=objectives.FreeBits(0.1))
    with pytest.raises(ValueError, match="per='group'"):
        _call(loss=loss, posterior={"m": q, "n": _q(B, 2)}, prior={"m": mix}, z={"m": q.mean})


def _nvae_reference(kl_all: list[Tensor], alpha: Tensor, weight: Tensor | None) -> Tensor:
    """NVAE's ``utils.kl_balancer`` (kl_coeff < 1, kl_balance=True), per example.

    NVAE (NVlabs/NVAE, utils.py): ``kl_coeff_i = mean(|kl_all|, dim=0) + 0.01``; ``total_kl
    = sum(kl_coeff_i)``; ``kl_coeff_i = kl_coeff_i / alpha_i * total_kl``; ``kl_coeff_i =
    kl_coeff_i / mean(kl_coeff_i)``; ``kl = sum(kl_all * kl_coeff_i.detach(), dim=1)``. The
    batch mean is weighted where the call is.
    """
    stacked = torch.stack(kl_all, 1)
    coeff = _wmean(stacked.abs(), weight) + 0.01
    coeff = coeff / alpha * coeff.sum()
    coeff = coeff / coeff.mean()
    return (stacked * coeff.detach()).sum(1)


@pytest.mark.parametrize("weight", WEIGHTS, ids=["unweighted", "weighted"])
@pytest.mark.parametrize("alpha", [None, {"s1": 1.0, "s2": 4.0, "g": 2.0}])
def test_nvae_balancing_with_steps_weights_and_alpha(
    alpha: dict[str, float] | None, weight: Tensor | None
) -> None:
    post, prior, leaves = _model()
    beta = 0.3
    loss = rdloss.RateDistortionLoss(
        objective=objectives.Beta(beta, group_balance=True, alpha=alpha)
    )
    x, lik = _x()
    out = loss(x, posterior=post, prior=prior, likelihood=lik, weight=weight)
    kl = _ref_terms(post, prior)
    kl_all = [kl[k].flatten(1).sum(1) for k in post]
    # default alpha: each group's latent dimensions per example, steps included
    a = torch.tensor(
        [6.0, 8.0, 5.0] if alpha is None else [alpha[k] for k in post], dtype=torch.float64
    )
    balanced = _nvae_reference(kl_all, a, weight)
    expected = _wmean(_nll(x), weight) + beta * _wmean(balanced, weight)
    assert_close(out.loss, expected, **EXACT)
    assert_close(out.rate, _wmean(sum(kl_all), weight), **EXACT)  # reported: unbalanced
    for g, r in zip(
        torch.autograd.grad(out.loss, leaves),
        torch.autograd.grad(expected, leaves),
        strict=True,
    ):
        assert_close(g, r, **EXACT)


def test_nvae_balancing_is_off_once_the_warm_up_reaches_one() -> None:
    post, prior, _ = _model()
    ramp = schedules.Linear(0.5, 1.0, steps=2)
    loss = rdloss.RateDistortionLoss(objective=objectives.Beta(ramp, group_balance=True))
    x, lik = _x()
    kl = _ref_terms(post, prior)
    kl_all = [kl[k].flatten(1).sum(1) for k in post]
    values = [loss(x, posterior=post, prior=prior, likelihood=lik).loss for _ in range(3)]
    balanced = _nvae_reference(kl_all, torch.tensor([6.0, 8.0, 5.0], dtype=torch.float64), None)
    assert_close(values[0], _nll(x).mean() + 0.5 * balanced.mean(), **EXACT)
    assert_close(values[1], _nll(x).mean() + 0.75 * balanced.mean(), **EXACT)
    assert_close(values[2], _nll(x).mean() + sum(kl_all).mean(), **EXACT)


def test_nvae_balancing_of_one_group_is_the_plain_rate() -> None:
    post, _, _ = _model()
    one = {"g": post["g"]}
    x, lik = _x()
    a = rdloss.RateDistortionLoss(objective=objectives.Beta(0.4, group_balance=True))
    b = rdloss.RateDistortionLoss(objective=objectives.Beta(0.4))
    assert_close(a(x, posterior=one, likelihood=lik).loss, b(x, posterior=one, likelihood=lik).loss)


def test_nvae_alpha_missing_a_group_names_it() -> None:
    post, prior, _ = _model()
    loss = rdloss.RateDistortionLoss(
        objective=objectives.Beta(0.4, group_balance=True, alpha={"s1": 1.0, "g": 1.0})
    )
    x, lik = _x()
    with pytest.raises(ValueError, match="s2"):
        loss(x, posterior=post, prior=prior, likelihood=lik)


@pytest.mark.parametrize("bad", [{"a": 0.0}, {"a": -1.0}, [1.0], {"a": float("nan")}])
def test_nvae_alpha_bad_values(bad: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="alpha"):
        objectives.Beta(0.4, group_balance=True, alpha=bad)


@pytest.mark.parametrize(
    "objective",
    [
        objectives.GECO(3.0),
        objectives.TargetRate(2.0),
        objectives.Beta(0.5),
    ],
    ids=["geco", "target-rate", "beta"],
)
def test_existing_objectives_see_the_total_rate_of_a_grouped_model(objective: Any) -> None:
    post, prior, _ = _model()
    x, lik = _x()
    grouped = rdloss.RateDistortionLoss(objective=objective).eval()
    total = sum(v.flatten(1).sum(1) for v in _ref_terms(post, prior).values())
    out = grouped(x, posterior=post, prior=prior, likelihood=lik)
    # the same objective on the total rate, called directly
    assert isinstance(total, Tensor)
    direct = objective(total, _nll(x)).loss
    assert_close(out.loss, direct, **EXACT)


@pytest.fixture
def one_process_group() -> Any:
    """A one-process gloo group, so that ``sync_dist=True`` takes its all-reduce path."""
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "make",
    [
        lambda: objectives.FreeBits(0.5, per="group", reduction="batch"),
        lambda: objectives.FreeBits(0.5, per="dimension", reduction="batch"),
        lambda: objectives.FreeBits(0.5, per="total", reduction="example"),
        lambda: objectives.Beta(0.3, group_balance=True),
    ],
    ids=["freebits-group", "freebits-dimension", "freebits-total", "nvae"],
)
def test_sync_dist_on_one_process_equals_local(make: Any, one_process_group: None) -> None:
    weight = WEIGHTS[1]
    results = []
    for sync in (False, True):
        post, prior, leaves = _model()
        loss = rdloss.RateDistortionLoss(objective=make(), sync_dist=sync)
        x, lik = _x()
        out = loss(x, posterior=post, prior=prior, likelihood=lik, weight=weight)
        results.append((out.loss, torch.autograd.grad(out.loss, leaves)))
    assert_close(results[0][0], results[1][0], **EXACT)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        assert_close(a, b, **EXACT)


# --- gradients in float64 ------------------------------------------------------------------


def _leaves_loss(objective: Any) -> tuple[Any, list[Tensor]]:
    lq1, sq1 = _normal(B, 2, 2, seed=1, grad=True)
    lp1, sp1 = _normal(B, 2, 2, seed=2, grad=True)
    lq2, sq2 = _normal(B, 2, 3, seed=3, grad=True)
    leaves = [lq1, sq1, lp1, sp1, lq2, sq2]
    x, lik = _x()
    loss = rdloss.RateDistortionLoss(objective=objective).eval()

    def fn(*params: Tensor) -> Tensor:
        a, b, c, d, e, f = params
        post = {"s": Independent(Normal(a, b), 1), "t": Independent(Normal(e, f), 1)}
        out = loss(x, posterior=post, prior={"s": Independent(Normal(c, d), 1)}, likelihood=lik)
        return out.loss

    return fn, leaves


@pytest.mark.parametrize(
    "objective",
    [
        objectives.Beta(0.7),
        objectives.FreeBits(0.3, per="dimension"),
        objectives.FreeBits(0.3, per="dimension", reduction="example"),
        objectives.FreeBits(1.0, per="group"),
        objectives.FreeBits(1.0, per="group", reduction="example"),
        objectives.FreeBits(0.8, per="step"),
        objectives.FreeBits(0.8, per="step", reduction="example"),
        objectives.FreeBits(2.0, per="total"),
        objectives.FreeBits(2.0, per="total", reduction="example"),
    ],
    ids=lambda o: repr(o),
)
def test_gradcheck_grouped_stepped_rates(objective: Any) -> None:
    fn, leaves = _leaves_loss(objective)
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6)


def test_gradcheck_functional_rate_with_steps_and_prior() -> None:
    lq, sq = _normal(B, 3, 2, seed=1, grad=True)
    lp, sp = _normal(B, 3, 2, seed=2, grad=True)

    def fn(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> Tensor:
        r = F.rate(Independent(Normal(a, b), 1), prior=Independent(Normal(c, d), 1))
        assert r.per_step is not None
        return r.per_step

    assert torch.autograd.gradcheck(fn, [lq, sq, lp, sp])
