"""A hostile pass over latent groups, per-call priors and step axes (issues 12 and 13).

Every value is checked against an independent computation written here (torch's
``kl_divergence`` per group, Monte Carlo with fixed seeds, hand-written formulas), never
against another rdloss call. Cases that show a bug are written as the code *should* behave
and marked ``xfail(strict=True, reason="BUG: ...")`` so that the fix flips them.
"""

from __future__ import annotations

import collections
import math
import types
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import (
    Categorical,
    Independent,
    MixtureSameFamily,
    Normal,
    OneHotCategorical,
    kl_divergence,
)
from torch.testing import assert_close

import rdloss
from rdloss import functional as F
from rdloss import marginals, objectives, schedules

EXACT = {"rtol": 1e-10, "atol": 1e-12}
B, D = 4, 3


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _normal(
    *shape: int, seed: int = 0, dtype: torch.dtype = torch.float64, grad: bool = False
) -> tuple[Tensor, Tensor]:
    """Random ``(loc, scale)`` of a given shape (scale in [0.5, 1.5])."""
    g = _gen(seed)
    loc = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    scale = (torch.rand(*shape, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    if grad:
        loc.requires_grad_()
        scale.requires_grad_()
    return loc, scale


def _q(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> Independent:
    """A diagonal Gaussian over the trailing dims of ``shape`` after the batch."""
    loc, scale = _normal(*shape, seed=seed, dtype=dtype)
    return Independent(Normal(loc, scale), len(shape) - 1)


def _kl(q: Any, p: Any) -> Tensor:
    """Per-example KL summed over every non-batch dim, torch's closed form (not rdloss)."""
    kl = kl_divergence(q, p)
    return kl.flatten(1).sum(1) if kl.ndim > 1 else kl


def _gaussian_kl(mq: Tensor, sq: Tensor, mp: Tensor, sp: Tensor) -> Tensor:
    """KL(N(mq, sq) || N(mp, sp)) elementwise, written out."""
    return torch.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5


def _x(dtype: torch.dtype = torch.float64) -> tuple[Tensor, Normal]:
    x = torch.zeros(B, 2, dtype=dtype)
    return x, Normal(torch.zeros(B, 2, dtype=dtype), torch.ones(B, 2, dtype=dtype))


def _nll(x: Tensor) -> Tensor:
    """Distortion of ``_x``: -log N(0 | 0, 1) summed over 2 dims."""
    return torch.full((x.shape[0],), math.log(2 * math.pi), dtype=x.dtype)


# --- values per group against kl_divergence ------------------------------------------------


@pytest.mark.parametrize("n_groups", [1, 2, 3, 7])
def test_total_rate_is_the_sum_of_torch_kls_over_groups(n_groups: int) -> None:
    post = {f"z{i}": _q(B, i + 1, seed=i) for i in range(n_groups)}
    prior = {f"z{i}": _q(B, i + 1, seed=100 + i) for i in range(n_groups)}
    x, lik = _x()
    out = rdloss.RateDistortionLoss()(x, posterior=post, prior=prior, likelihood=lik)
    expected = {k: _kl(post[k], prior[k]) for k in post}
    assert out.rate_per_group is not None
    assert list(out.rate_per_group) == list(post)
    for k in post:
        assert_close(out.rate_per_group[k], expected[k], **EXACT)
    total = torch.stack(list(expected.values())).sum(0)
    assert_close(out.rate_per_example, total, **EXACT)
    assert_close(out.rate, total.mean(), **EXACT)
    assert_close(out.elbo, -(total + _nll(x)).mean(), **EXACT)


@pytest.mark.parametrize(
    "shape",
    [(B, 2, 4, 4), (B, 1, 1, 1), (B, 8), (B, 1)],
    ids=["conv", "conv-1x1", "vector", "one-dim"],
)
def test_conv_latents_per_group_and_per_dimension(shape: tuple[int, ...]) -> None:
    lq, sq = _normal(*shape, seed=1)
    lp, sp = _normal(*shape, seed=2)
    post = {"top": Normal(lq, sq), "bottom": _q(B, 5, seed=3)}
    prior = {"top": Normal(lp, sp)}  # bottom: N(0, I)
    x, lik = _x()
    out = rdloss.RateDistortionLoss()(x, posterior=post, prior=prior, likelihood=lik)
    per_elem = _gaussian_kl(lq, sq, lp, sp).flatten(1)
    bottom = post["bottom"].base_dist
    per_bottom = _gaussian_kl(
        bottom.loc, bottom.scale, torch.zeros_like(bottom.loc), torch.ones_like(bottom.loc)
    )
    assert out.rate_per_group_dimension is not None
    assert_close(out.rate_per_group_dimension["top"], per_elem, **EXACT)
    assert_close(out.rate_per_group_dimension["bottom"], per_bottom, **EXACT)
    assert out.rate_per_dimension is not None
    assert_close(out.rate_per_dimension, torch.cat([per_elem, per_bottom], 1), **EXACT)
    assert_close(out.rate_per_example, per_elem.sum(1) + per_bottom.sum(1), **EXACT)


def test_scalar_latent_with_a_per_example_prior() -> None:
    lq, sq = _normal(B, seed=4)
    lp, sp = _normal(B, seed=5)
    r = F.rate(Normal(lq, sq), prior=Normal(lp, sp))
    assert_close(r.per_example, _gaussian_kl(lq, sq, lp, sp), **EXACT)


def test_scalar_latent_with_a_shared_scalar_prior() -> None:
    lq, sq = _normal(B, seed=4)
    r = F.rate(Normal(lq, sq), prior=Normal(torch.tensor(0.5, dtype=torch.float64), 2.0))
    expected = _gaussian_kl(lq, sq, torch.full_like(lq, 0.5), torch.full_like(sq, 2.0))
    assert_close(r.per_example, expected, **EXACT)


@pytest.mark.xfail(
    strict=True,
    reason="BUG: a scalar latent has rate_per_dimension (B, 1) against N(0, I) but None "
    "against an explicit Normal marginal or prior, though the KL trivially factorises",
)
@pytest.mark.parametrize("against", ["marginal", "prior"])
def test_scalar_latent_has_a_per_dimension_rate_whatever_it_is_against(against: str) -> None:
    lq, sq = _normal(B, seed=4)
    unit = Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
    r = (
        F.rate(Normal(lq, sq), unit)
        if against == "marginal"
        else F.rate(Normal(lq, sq), prior=unit)
    )
    assert r.per_dimension is not None
    assert_close(r.per_dimension[:, 0], r.per_example, **EXACT)


def test_batch_one_grouped_with_prior() -> None:
    post = {"a": _q(1, 3, seed=1), "b": _q(1, 2, 2, seed=2)}
    prior = {"a": _q(1, 3, seed=3), "b": _q(1, 2, 2, seed=4)}
    x = torch.zeros(1, 2, dtype=torch.float64)
    lik = Normal(torch.zeros_like(x), torch.ones_like(x))
    out = rdloss.RateDistortionLoss()(x, posterior=post, prior=prior, likelihood=lik)
    assert_close(out.rate_per_example, _kl(post["a"], prior["a"]) + _kl(post["b"], prior["b"]))


def test_batch_equal_to_latent_size_shared_prior_is_not_read_per_example() -> None:
    # B == D: a (D,) prior must be one shared latent, not one scalar prior per example.
    lq, sq = _normal(4, 4, seed=1)
    lp, sp = _normal(4, seed=2)
    r = F.rate(Normal(lq, sq), prior=Normal(lp, sp))
    assert_close(r.per_example, _gaussian_kl(lq, sq, lp, sp).sum(1), **EXACT)


def test_group_names_keep_the_posterior_order_whatever_the_prior_order() -> None:
    post = {"b": _q(B, 2, seed=1), "a": _q(B, 3, seed=2), "c": _q(B, 1, seed=3)}
    prior = {"c": _q(B, 1, seed=4), "a": _q(B, 3, seed=5), "b": _q(B, 2, seed=6)}
    x, lik = _x()
    out = rdloss.RateDistortionLoss()(x, posterior=post, prior=prior, likelihood=lik)
    assert out.rate_per_group is not None and out.rate_per_dimension is not None
    assert list(out.rate_per_group) == ["b", "a", "c"]
    for k in post:
        assert_close(out.rate_per_group[k], _kl(post[k], prior[k]), **EXACT)
    # the per-dimension rate is concatenated in the posterior's order too
    first = kl_divergence(post["b"].base_dist, prior["b"].base_dist)
    assert_close(out.rate_per_dimension[:, :2], first, **EXACT)


@pytest.mark.parametrize(
    "mapping",
    [dict, collections.OrderedDict, types.MappingProxyType, "subclass"],
    ids=["dict", "OrderedDict", "MappingProxyType", "dict-subclass"],
)
def test_any_mapping_type_gives_the_same_groups(mapping: Any) -> None:
    class MyDict(dict):  # type: ignore[type-arg]
        pass

    make = MyDict if mapping == "subclass" else mapping
    post = make({"z1": _q(B, 3, seed=1), "z2": _q(B, 2, seed=2)})
    prior = make({"z1": _q(B, 3, seed=3)})
    x, lik = _x()
    out = rdloss.RateDistortionLoss()(x, posterior=post, prior=prior, likelihood=lik)
    assert out.rate_per_group is not None
    assert_close(out.rate_per_group["z1"], _kl(post["z1"], prior["z1"]), **EXACT)
    unit = Independent(Normal(torch.zeros(2, dtype=torch.float64), 1.0), 1)
    assert_close(out.rate_per_group["z2"], _kl(post["z2"], unit), **EXACT)


def test_prior_none_entry_means_the_groups_marginal() -> None:
    marginal = Independent(
        Normal(torch.full((3,), 0.3, dtype=torch.float64), torch.full((3,), 2.0)), 1
    )
    post = {"a": _q(B, 3, seed=1), "b": _q(B, 3, seed=2)}
    loss = rdloss.RateDistortionLoss(marginal={"a": marginal})
    x, lik = _x()
    out = loss(x, posterior=post, prior={"a": None, "b": None}, likelihood=lik)
    assert out.rate_per_group is not None
    assert_close(out.rate_per_group["a"], _kl(post["a"], marginal), **EXACT)
    unit = Independent(Normal(torch.zeros(3, dtype=torch.float64), 1.0), 1)
    assert_close(out.rate_per_group["b"], _kl(post["b"], unit), **EXACT)


def test_prior_replaces_the_groups_learned_marginal() -> None:
    learned = marginals.DiagonalGaussian(3).double()
    with torch.no_grad():
        learned.loc.fill_(5.0)  # far from the prior: would show if it were used
    loss = rdloss.RateDistortionLoss(marginal={"a": learned})
    loc, scale = _normal(B, 3, seed=1, grad=True)
    post = {"a": Independent(Normal(loc, scale), 1)}
    prior = {"a": _q(B, 3, seed=2)}
    x, lik = _x()
    out = loss(x, posterior=post, prior=prior, likelihood=lik)
    assert_close(out.rate_per_example, _kl(post["a"], prior["a"]), **EXACT)
    out.loss.backward()
    assert loc.grad is not None
    assert learned.loc.grad is None  # the marginal did not enter the loss


def test_one_group_equals_the_ungrouped_call() -> None:
    q, p = _q(B, 3, seed=1), _q(B, 3, seed=2)
    x, lik = _x()
    loss = rdloss.RateDistortionLoss(objective=objectives.FreeBits(0.4))
    a = loss(x, posterior=q, prior=p, likelihood=lik)
    b = loss(x, posterior={"z": q}, prior={"z": p}, likelihood=lik)
    for name in ("loss", "rate", "distortion", "rate_per_example", "rate_per_dimension"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.rate_per_group is None and b.rate_per_group is not None


def test_metrics_has_one_entry_per_group_also_with_clashing_names() -> None:
    post = {"rate": _q(B, 3, seed=1), "loss": _q(B, 2, seed=2), "": _q(B, 1, seed=3)}
    x, lik = _x()
    out = rdloss.RateDistortionLoss()(x, posterior=post, likelihood=lik)
    m = out.metrics()
    unit = {k: Independent(Normal(torch.zeros(v.event_shape), 1.0), 1) for k, v in post.items()}
    expected = {k: float(_kl(post[k], unit[k]).mean()) for k in post}
    for k, v in expected.items():
        assert m[f"rate/{k}"] == pytest.approx(v, rel=1e-6)
    assert m["rate"] == pytest.approx(sum(expected.values()), rel=1e-6)
    assert m["loss"] == pytest.approx(float(out.loss), rel=1e-6)


def test_metrics_group_rates_are_weighted_like_the_rate() -> None:
    post = {"a": _q(B, 3, seed=1), "b": _q(B, 2, seed=2)}
    x, lik = _x()
    w = torch.tensor([1.0, 0.0, 3.0, 0.0], dtype=torch.float64)
    out = rdloss.RateDistortionLoss()(x, posterior=post, likelihood=lik, weight=w)
    m = out.metrics()
    assert out.rate_per_group is not None
    for k, r in out.rate_per_group.items():
        assert m[f"rate/{k}"] == pytest.approx(float((w * r).sum() / w.sum()), rel=1e-6)
    assert m["rate"] == pytest.approx(sum(m[f"rate/{k}"] for k in post), rel=1e-6)
