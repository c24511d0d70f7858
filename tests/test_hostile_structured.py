"""A hostile pass over latent groups, per-call priors and step axes (issues 12 and 13).

Every value is checked against an independent computation written here (torch's
``kl_divergence`` per group, Monte Carlo with fixed seeds, hand-written formulas), never
against another rdloss call. The 18 cases that found a bug or an unclear error (half-precision
priors, differently split conv latents, KL balancing of enumerated rates, ...) now pass as
regression tests.
"""

from __future__ import annotations

import collections
import math
import types
from typing import Any

import pytest
import torch
from torch import Tensor
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


def _qs(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> Independent:
    """A stepped diagonal Gaussian: batch ``shape[:2]`` (B, T), event ``shape[2:]``."""
    loc, scale = _normal(*shape, seed=seed, dtype=dtype)
    return Independent(Normal(loc, scale), len(shape) - 2)


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


# --- dtypes and devices --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grouped_rate_keeps_float32_and_float64(dtype: torch.dtype) -> None:
    post = {"a": _q(B, 3, seed=1, dtype=dtype), "b": _q(B, 2, 2, seed=2, dtype=dtype)}
    prior = {"a": _q(B, 3, seed=3, dtype=dtype)}
    x, lik = _x(dtype)
    out = rdloss.RateDistortionLoss()(x, posterior=post, prior=prior, likelihood=lik)
    assert out.rate.dtype == dtype
    ref_a = _kl(_q(B, 3, seed=1), _q(B, 3, seed=3))
    tol = EXACT if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    assert out.rate_per_group is not None
    assert_close(out.rate_per_group["a"].double(), ref_a, **tol)


def test_mixed_dtypes_between_groups_promote_not_truncate() -> None:
    post = {"a": _q(B, 3, seed=1, dtype=torch.float32), "b": _q(B, 3, seed=2)}
    x, lik = _x()
    out = rdloss.RateDistortionLoss()(x, posterior=post, likelihood=lik)
    assert out.rate_per_example.dtype == torch.float64
    assert out.rate_per_group is not None
    unit = Independent(Normal(torch.zeros(3, dtype=torch.float64), 1.0), 1)
    assert_close(out.rate_per_group["b"], _kl(post["b"], unit), **EXACT)


def test_float64_posterior_against_float32_prior_promotes() -> None:
    q = _q(B, 3, seed=1)
    p = _q(B, 3, seed=2, dtype=torch.float32)
    r = F.rate(q, prior=p)
    assert r.per_example.dtype == torch.float64
    ref = _kl(q, Independent(Normal(p.base_dist.loc.double(), p.base_dist.scale.double()), 1))
    assert_close(r.per_example, ref, **EXACT)


HALF_BUG = (
    "BUG: with a half-precision prior or learned marginal the KL is computed in float16/"
    "bfloat16 and only widened afterwards (rdloss/functional.py _analytic_rate: widen_half "
    "is applied to the KL, not to the parameters), unlike the N(0, I) path which widens first"
)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_prior_is_computed_in_float32(dtype: torch.dtype) -> None:
    lq, sq = _normal(B, D, seed=1, dtype=dtype)
    lp, sp = _normal(B, D, seed=2, dtype=dtype)
    r = F.rate(Normal(lq, sq), prior=Normal(lp, sp))
    assert r.per_example.dtype == torch.float32
    # the reference: the same (rounded) parameters, in float64
    ref = _gaussian_kl(lq.double(), sq.double(), lp.double(), sp.double()).sum(1)
    assert_close(r.per_example.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_posterior_against_n01_is_computed_in_float32(dtype: torch.dtype) -> None:
    lq, sq = _normal(B, D, seed=1, dtype=dtype)
    post = {"a": Normal(lq, sq), "b": Normal(lq, sq)}
    x, lik = _x(torch.float32)
    out = rdloss.RateDistortionLoss()(x, posterior=post, likelihood=lik)
    ref = _gaussian_kl(lq.double(), sq.double(), torch.zeros(1), torch.ones(1)).sum(1)
    assert out.rate_per_group is not None
    assert out.rate_per_group["a"].dtype == torch.float32
    assert_close(out.rate_per_group["a"].double(), ref, rtol=1e-5, atol=1e-5)


def test_bfloat16_loss_with_a_learned_group_marginal_is_computed_in_float32() -> None:
    loss = rdloss.RateDistortionLoss(marginal={"a": marginals.DiagonalGaussian(D)})
    loss = loss.to(torch.bfloat16)
    lq, sq = _normal(B, D, seed=1, dtype=torch.bfloat16)
    x, lik = _x(torch.float32)
    out = loss(x, posterior={"a": Normal(lq, sq)}, likelihood=lik)
    ref = _gaussian_kl(lq.double(), sq.double(), torch.zeros(1), torch.ones(1)).sum(1)
    assert out.rate_per_group is not None
    assert_close(out.rate_per_group["a"].double(), ref, rtol=1e-5, atol=1e-5)


def test_half_loss_with_a_learned_group_marginal_and_float32_posterior() -> None:
    loss = rdloss.RateDistortionLoss(marginal={"a": marginals.DiagonalGaussian(D)}).half()
    lq, sq = _normal(B, D, seed=1, dtype=torch.float32)
    x, lik = _x(torch.float32)
    out = loss(x, posterior={"a": Normal(lq, sq)}, likelihood=lik)
    ref = _gaussian_kl(lq.double(), sq.double(), torch.zeros(1), torch.ones(1)).sum(1)
    assert out.rate_per_group is not None
    assert_close(out.rate_per_group["a"].double(), ref, rtol=1e-5, atol=1e-5)


def test_double_loss_with_learned_and_fixed_group_marginals() -> None:
    fixed = Independent(Normal(torch.full((D,), 0.5), torch.full((D,), 2.0)), 1)
    loss = rdloss.RateDistortionLoss(
        marginal={"a": marginals.DiagonalGaussian(D), "b": fixed}
    ).double()
    q = _q(B, D, seed=1)
    x, lik = _x()
    out = loss(x, posterior={"a": q, "b": q}, likelihood=lik)
    assert out.rate_per_group is not None
    unit = Independent(Normal(torch.zeros(D, dtype=torch.float64), 1.0), 1)
    assert out.rate_per_group["a"].dtype == torch.float64
    # the softplus of a float32 log(e - 1) cast to float64 is 1 only to float32 precision
    assert_close(out.rate_per_group["a"], _kl(q, unit), rtol=1e-6, atol=1e-6)
    ref_b = _kl(q, Independent(Normal(torch.full((D,), 0.5, dtype=torch.float64), 2.0), 1))
    assert_close(out.rate_per_group["b"], ref_b, rtol=1e-6, atol=1e-6)


def test_integer_x_with_groups_and_bernoulli() -> None:
    g = _gen(3)
    x = torch.randint(0, 2, (B, 5), generator=g)
    logits = torch.randn(B, 5, generator=g, dtype=torch.float64)
    lik = Independent(torch.distributions.Bernoulli(logits=logits), 1)
    post = {"a": _q(B, 2, seed=1), "b": _q(B, 3, seed=2)}
    out = rdloss.RateDistortionLoss()(x, posterior=post, likelihood=lik)
    ref = -torch.distributions.Bernoulli(logits=logits).log_prob(x.double()).sum(1)
    assert_close(out.distortion_per_example, ref, **EXACT)


def _meta_normal(*shape: int) -> Normal:
    return Normal(
        torch.zeros(*shape, device="meta"), torch.ones(*shape, device="meta"), validate_args=False
    )


@pytest.mark.parametrize(
    "objective",
    [
        objectives.Beta(1.0),
        objectives.FreeBits(0.2, per="group"),
        objectives.FreeBits(0.2, per="step", reduction="example"),
        objectives.Beta(0.5, group_balance=True),
    ],
    ids=["beta", "freebits-group", "freebits-step", "nvae"],
)
def test_meta_device_groups_steps_and_priors_give_shapes(objective: Any) -> None:
    post = {"a": Independent(_meta_normal(B, 3, D), 1), "b": Independent(_meta_normal(B, 2, 2), 1)}
    prior = {"a": Independent(_meta_normal(B, 3, D), 1)}
    x = torch.zeros(B, 2, device="meta")
    lik = _meta_normal(B, 2)
    loss = rdloss.RateDistortionLoss(objective=objective, validate_args=False)
    out = loss(x, posterior=post, prior=prior, likelihood=lik)
    assert out.loss.device.type == "meta" and out.loss.shape == ()
    assert out.rate_per_step is not None
    assert out.rate_per_step["a"].shape == (B, 3)
    assert out.rate_per_step["b"].shape == (B, 2)


def test_meta_device_with_default_validation_works() -> None:
    post = {"a": Independent(_meta_normal(B, D), 1)}
    out = rdloss.RateDistortionLoss()(
        torch.zeros(B, 2, device="meta"), posterior=post, likelihood=_meta_normal(B, 2)
    )
    assert out.rate.device.type == "meta"


# --- Monte Carlo, mixtures and discrete priors ----------------------------------------------


def test_mc_rate_per_group_equals_the_log_ratio_of_the_same_samples() -> None:
    post = {"a": _q(B, 3, seed=1), "b": _q(B, 2, seed=2)}
    prior = {"a": _q(B, 3, seed=3), "b": _q(B, 2, seed=4)}
    torch.manual_seed(0)
    z = {k: q.rsample((5,)) for k, q in post.items()}
    x = torch.zeros(B, 2, dtype=torch.float64)
    lik = Normal(torch.zeros(5, B, 2, dtype=torch.float64), 1.0)
    loss = rdloss.RateDistortionLoss(rate_estimator="mc")
    out = loss(x, posterior=post, prior=prior, z=z, likelihood=lik)
    assert out.estimator == "mc" and out.rate_per_group is not None
    for k in post:
        ref = (post[k].log_prob(z[k]) - prior[k].log_prob(z[k])).mean(0)
        assert_close(out.rate_per_group[k], ref, **EXACT)


def test_auto_estimator_mixes_analytic_and_mc_per_group() -> None:
    q_mix = _q(B, D, seed=1)
    loc, scale = _normal(B, 4, D, seed=2)
    mix = MixtureSameFamily(
        Categorical(logits=torch.randn(B, 4, generator=_gen(3), dtype=torch.float64)),
        Independent(Normal(loc, scale), 1),
    )
    post = {"n": _q(B, 2, seed=4), "m": q_mix}
    z = {"m": q_mix.mean + 0.1}
    x, lik = _x()
    out = rdloss.RateDistortionLoss()(x, posterior=post, prior={"m": mix}, z=z, likelihood=lik)
    assert out.estimator == "analytic+mc"
    assert out.rate_per_group is not None
    assert_close(out.rate_per_group["m"], q_mix.log_prob(z["m"]) - mix.log_prob(z["m"]), **EXACT)
    assert out.rate_per_dimension is None  # the mixture does not factorise


def test_mixture_prior_per_example_matches_a_seeded_monte_carlo_estimate() -> None:
    q = _q(B, D, seed=1)
    loc, scale = _normal(B, 3, D, seed=2)
    logits = torch.randn(B, 3, generator=_gen(5), dtype=torch.float64)
    mix = MixtureSameFamily(Categorical(logits=logits), Independent(Normal(loc, scale), 1))
    torch.manual_seed(1)
    z = q.rsample((4000,))
    r = F.rate(q, prior=mix, z=z)
    # independent estimate: logsumexp over the components, written out
    comp = Normal(loc, scale).log_prob(z.unsqueeze(2)).sum(-1)  # (S, B, K)
    log_m = torch.logsumexp(comp + logits.log_softmax(-1), dim=-1)
    ref = (q.log_prob(z) - log_m).mean(0)
    assert_close(r.per_example, ref, **EXACT)
    assert r.per_example.shape == (B,)


def test_mixture_prior_without_z_says_z_is_needed() -> None:
    q = _q(B, D, seed=1)
    loc, scale = _normal(B, 3, D, seed=2)
    mix = MixtureSameFamily(
        Categorical(logits=torch.zeros(B, 3, dtype=torch.float64)),
        Independent(Normal(loc, scale), 1),
    )
    with pytest.raises(ValueError, match="z is required"):
        F.rate(q, prior=mix)


@pytest.mark.parametrize("one_hot", [False, True])
def test_categorical_prior_per_example(one_hot: bool) -> None:
    g = _gen(7)
    lq, lp = torch.randn(B, 6, generator=g, dtype=torch.float64), torch.randn(B, 6, generator=g)
    cls = OneHotCategorical if one_hot else Categorical
    q, p = cls(logits=lq), cls(logits=lp.double())
    r = F.rate(q, prior=p)
    ref = (lq.softmax(-1) * (lq.log_softmax(-1) - lp.double().log_softmax(-1))).sum(-1)
    assert_close(r.per_example, ref, **EXACT)


def _unimix(logits: Tensor, mix: float = 0.01) -> Tensor:
    """DreamerV3's 1% unimix: (1 - mix) softmax + mix / K."""
    return (1 - mix) * logits.softmax(-1) + mix / logits.shape[-1]


@pytest.mark.parametrize("steps", [1, 4])
def test_onehot_unimix_steps_per_step_rate(steps: int) -> None:
    g = _gen(11)
    pq = _unimix(torch.randn(B, steps, 4, 5, generator=g, dtype=torch.float64))
    pp = _unimix(torch.randn(B, steps, 4, 5, generator=g, dtype=torch.float64))
    q = Independent(OneHotCategorical(probs=pq), 1)
    p = Independent(OneHotCategorical(probs=pp), 1)
    r = F.rate(q, prior=p)
    ref = (pq * (pq.log() - pp.log())).sum((-1, -2))  # (B, T)
    assert r.per_step is not None
    assert_close(r.per_step, ref, **EXACT)
    assert_close(r.per_example, ref.sum(1), **EXACT)


def test_discrete_group_against_default_marginal_says_discrete() -> None:
    q = Categorical(logits=torch.zeros(B, 4))
    x, lik = _x(torch.float32)
    with pytest.raises(ValueError, match="discrete"):
        rdloss.RateDistortionLoss()(x, posterior={"c": q, "g": _q(B, 2)}, likelihood=lik)


def test_per_group_rate_errors_name_the_group() -> None:
    q = Categorical(logits=torch.zeros(B, 4))
    x, lik = _x(torch.float32)
    with pytest.raises(ValueError, match=r"posterior\['c'\]"):
        rdloss.RateDistortionLoss()(
            x, posterior={"g": _q(B, 2, dtype=torch.float32), "c": q}, likelihood=lik
        )


# --- errors: shapes, keys, types -----------------------------------------------------------


def _call(**kwargs: Any) -> Any:
    x, lik = _x()
    loss = kwargs.pop("loss", None) or rdloss.RateDistortionLoss()
    return loss(x, likelihood=lik, **kwargs)


ERRORS = [
    ("prior-batch-1", dict(posterior=_q(B, D), prior=_q(1, D)), ValueError, "batch_shape"),
    ("prior-other-batch", dict(posterior=_q(B, D), prior=_q(B + 1, D)), ValueError, r"\(4,\)"),
    ("prior-event", dict(posterior=_q(B, D), prior=_q(B, D + 1)), ValueError, "event_shape"),
    (
        "prior-scalar-for-vector",
        dict(posterior=_q(B, D), prior=Normal(torch.tensor(0.0), 1.0)),
        ValueError,
        "event_shape",
    ),
    (
        "prior-steps-missing",
        dict(posterior=_qs(B, 5, D), prior=_q(B, D)),
        ValueError,
        "step axis differs",
    ),
    (
        "prior-steps-other-T",
        dict(posterior=_qs(B, 5, D), prior=_qs(B, 4, D)),
        ValueError,
        "T = 4",
    ),
    (
        "prior-per-step-shared-over-batch",
        dict(posterior=_qs(B, 5, D), prior=_q(5, D)),
        ValueError,
        "batch_shape",
    ),
    ("prior-key", dict(posterior={"a": _q(B, D)}, prior={"b": _q(B, D)}), ValueError, "'b'"),
    ("prior-int-key", dict(posterior={"a": _q(B, D)}, prior={1: _q(B, D)}), ValueError, "1"),
    ("z-key", dict(posterior={"a": _q(B, D)}, z={"zz": torch.zeros(B, D)}), ValueError, "'zz'"),
    (
        "z-shape",
        dict(posterior={"a": _q(B, D)}, z={"a": torch.zeros(B, D + 1)}),
        ValueError,
        r"z\['a'\]",
    ),
    (
        "z-steps-shape",
        dict(posterior={"a": _qs(B, 5, D)}, z={"a": torch.zeros(B, 4, D)}),
        ValueError,
        "B, T",
    ),
    ("posterior-int-key", dict(posterior={1: _q(B, D)}), TypeError, "str"),
    ("posterior-empty", dict(posterior={}), ValueError, "empty"),
    ("posterior-list", dict(posterior=[_q(B, D)]), TypeError, "list"),
    ("posterior-tensor-in-map", dict(posterior={"a": torch.zeros(B)}), TypeError, "Tensor"),
    (
        "groups-batch",
        dict(posterior={"a": _q(B, D), "b": _q(B - 1, D)}),
        ValueError,
        "same examples",
    ),
    ("prior-map-single", dict(posterior=_q(B, D), prior={"z": _q(B, D)}), TypeError, "mapping"),
    ("prior-single-map", dict(posterior={"a": _q(B, D)}, prior=_q(B, D)), TypeError, "prior"),
    ("z-single-map", dict(posterior={"a": _q(B, D)}, z=torch.zeros(B, D)), TypeError, "z must"),
    ("prior-tensor", dict(posterior=_q(B, D), prior=torch.zeros(B, D)), TypeError, "prior"),
    (
        "prior-in-map-tensor",
        dict(posterior={"a": _q(B, D)}, prior={"a": torch.zeros(B, D)}),
        TypeError,
        "prior",
    ),
    (
        "z-mismatched-samples",
        dict(
            posterior={"a": _q(B, D), "b": _q(B, D)},
            z={"a": torch.zeros(2, B, D), "b": torch.zeros(B, D)},
        ),
        ValueError,
        "sample dims",
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"), [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS]
)
def test_misuse_raises_a_named_error(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        _call(**kwargs)


def test_empty_step_axis_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        _call(posterior={"a": _qs(B, 0, D)})


def test_marginal_mapping_with_an_unused_group_names_it() -> None:
    loss = rdloss.RateDistortionLoss(marginal={"a": marginals.DiagonalGaussian(D)})
    with pytest.raises(ValueError, match="'a'"):
        _call(loss=loss, posterior={"b": _q(B, D)})


def test_marginal_mapping_with_one_ungrouped_posterior_is_refused() -> None:
    loss = rdloss.RateDistortionLoss(marginal={"a": marginals.DiagonalGaussian(D)})
    with pytest.raises(TypeError, match="marginal is a mapping"):
        _call(loss=loss, posterior=_q(B, D))


@pytest.mark.parametrize("name", ["a.b", "", 3])
def test_marginal_mapping_rejects_bad_group_names(name: object) -> None:
    with pytest.raises(ValueError, match="group names"):
        rdloss.RateDistortionLoss(marginal={name: marginals.DiagonalGaussian(D)})  # type: ignore[dict-item]


@pytest.mark.parametrize("name", ["forward", "keys", "training", "type"])
def test_marginal_group_named_like_a_module_attribute(name: str) -> None:
    try:
        loss = rdloss.RateDistortionLoss(marginal={name: marginals.DiagonalGaussian(D)})
    except ValueError as error:  # a clear refusal naming the group is fine too
        assert repr(name) in str(error)
        return
    out = _call(loss=loss, posterior={name: _q(B, D)})
    assert out.rate_per_group is not None and name in out.rate_per_group


def test_objective_passed_as_marginal_is_refused_at_construction() -> None:
    with pytest.raises(TypeError, match="marginal"):
        rdloss.RateDistortionLoss(objectives.Beta(0.5))  # type: ignore[arg-type]


def test_functional_rate_checks_z_shape_also_when_analytic() -> None:
    with pytest.raises(ValueError, match="z must have shape"):
        F.rate(_q(B, D), prior=_q(B, D), z=torch.zeros(B, D + 1))


def test_no_silent_broadcast_of_a_prior_with_loc_expanded() -> None:
    # an expanded (B, 1) loc is a legitimate (B, D) prior: one prior per example
    lp = torch.randn(B, 1, generator=_gen(1), dtype=torch.float64).expand(B, D)
    q = _q(B, D, seed=2)
    r = F.rate(q, prior=Normal(lp, 1.0))
    base = q.base_dist
    assert_close(r.per_example, _gaussian_kl(base.loc, base.scale, lp, 1.0).sum(1), **EXACT)


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


# --- KL balancing: the value is the KL, the gradient is split ------------------------------


def _balance_case(alpha: float | None, estimator: str) -> tuple[Tensor, list[Tensor]]:
    lq, sq = _normal(B, 3, D, seed=1, grad=True)
    lp, sp = _normal(B, 3, D, seed=2, grad=True)
    lg, sg = _normal(B, 2, seed=3, grad=True)
    learned = marginals.DiagonalGaussian(2).double()
    with torch.no_grad():
        learned.loc.fill_(0.3)
    post = {"s": Independent(Normal(lq, sq), 1), "g": Independent(Normal(lg, sg), 1)}
    prior = {"s": Independent(Normal(lp, sp), 1)}
    loss = rdloss.RateDistortionLoss(
        marginal={"g": learned},
        rate_estimator=estimator,  # type: ignore[arg-type]
        kl_balance=alpha,
    )
    torch.manual_seed(0)
    eps = {"s": torch.randn(B, 3, D, dtype=torch.float64), "g": torch.randn(B, 2)}
    z = {"s": lq + sq * eps["s"], "g": lg + sg * eps["g"].double()}
    x, lik = _x()
    kwargs: dict[str, Any] = {"z": z} if estimator == "mc" else {}
    out = loss(x, posterior=post, prior=prior, likelihood=lik, **kwargs)
    return out.loss, [lq, sq, lg, sg, lp, sp, learned.loc, learned.raw_scale]


@pytest.mark.parametrize("estimator", ["analytic", "mc"])
@pytest.mark.parametrize("alpha", [0.0, 0.2, 0.8, 1.0])
def test_kl_balance_keeps_the_value_and_splits_the_gradient(alpha: float, estimator: str) -> None:
    plain, leaves = _balance_case(None, estimator)
    balanced, leaves_b = _balance_case(alpha, estimator)
    assert_close(balanced, plain, **EXACT)
    g_plain = torch.autograd.grad(plain, leaves)
    g_bal = torch.autograd.grad(balanced, leaves_b)
    # the posterior's parameters (first four) get 1 - alpha, the prior's and the learned
    # marginal's (last four) get alpha, of the plain gradient
    for i, (a, b) in enumerate(zip(g_bal, g_plain, strict=True)):
        share = 1.0 - alpha if i < 4 else alpha
        assert_close(a, share * b, **EXACT)


def test_kl_balance_with_the_default_n01_marginal_gives_the_posterior_its_share() -> None:
    lq, sq = _normal(B, D, seed=1, grad=True)
    x, lik = _x()
    out = rdloss.RateDistortionLoss(kl_balance=0.8)(
        x, posterior={"a": Normal(lq, sq)}, likelihood=lik
    )
    ref = _gaussian_kl(lq, sq, torch.zeros(1), torch.ones(1)).sum(1).mean()
    assert_close(out.rate, ref, **EXACT)
    g = torch.autograd.grad(out.loss, [lq, sq])
    r = torch.autograd.grad(ref, [lq, sq])
    for a, b in zip(g, r, strict=True):
        assert_close(a, 0.2 * b, **EXACT)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "half"])
def test_kl_balance_out_of_range_is_refused(bad: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="kl_balance"):
        rdloss.RateDistortionLoss(kl_balance=bad)


def test_kl_balance_on_a_flow_prior_is_refused_clearly() -> None:
    # zuko turns torch.distributions' argument validation off at import: keep the default
    default = torch.distributions.Distribution._validate_args
    try:
        zuko = pytest.importorskip("zuko")
    finally:
        torch.distributions.Distribution.set_default_validate_args(default)
    flow = zuko.flows.MAF(D, transforms=1, hidden_features=(8,)).double()
    q = _q(B, D, seed=1)
    x, lik = _x()
    loss = rdloss.RateDistortionLoss(kl_balance=0.5)
    with pytest.raises(TypeError, match="stop-gradient"):
        loss(x, posterior=q, prior=flow(), z=q.mean, likelihood=lik)


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


# --- the decoder= path with groups, steps and samples --------------------------------------


def _recording_decoder(seen: dict[str, Any]) -> Any:
    """A decoder whose likelihood mean is a fixed function of every group's z."""

    def decoder(z: dict[str, Tensor]) -> Normal:
        seen.update(z)
        mean = z["s"].flatten(1)[:, :2] + z["g"][:, :1]
        return Normal(mean, torch.ones_like(mean))

    return decoder


@pytest.mark.parametrize("samples", [1, 3])
@pytest.mark.parametrize("estimator", ["analytic", "mc"])
def test_decoder_with_groups_steps_and_samples(samples: int, estimator: str) -> None:
    post = {"s": _qs(B, 3, 2, seed=1), "g": _q(B, 2, seed=2)}
    prior = {"s": _qs(B, 3, 2, seed=3)}
    seen: dict[str, Tensor] = {}
    g = _gen(4)
    x = torch.randn(B, 2, generator=g, dtype=torch.float64)
    loss = rdloss.RateDistortionLoss(rate_estimator=estimator)  # type: ignore[arg-type]
    out = loss(x, posterior=post, prior=prior, decoder=_recording_decoder(seen), samples=samples)
    assert seen["s"].shape == (samples * B, 3, 2) and seen["g"].shape == (samples * B, 2)
    zs = {k: v.reshape(samples, B, *v.shape[1:]) for k, v in seen.items()}  # rows are (s b)
    mean = zs["s"].flatten(2)[..., :2] + zs["g"][..., :1]
    ref_d = -Normal(mean, 1.0).log_prob(x).sum(-1).mean(0)
    assert_close(out.distortion_per_example, ref_d, **EXACT)
    unit = Independent(Normal(torch.zeros(2, dtype=torch.float64), 1.0), 1)
    assert out.rate_per_group is not None and out.rate_per_step is not None
    if estimator == "analytic":
        ref_s = kl_divergence(post["s"], prior["s"])
        ref_g = kl_divergence(post["g"], unit)
    else:
        ref_s = (post["s"].log_prob(zs["s"]) - prior["s"].log_prob(zs["s"])).mean(0)
        ref_g = (post["g"].log_prob(zs["g"]) - unit.log_prob(zs["g"])).mean(0)
    assert_close(out.rate_per_step["s"], ref_s, **EXACT)
    assert_close(out.rate_per_group["g"], ref_g, **EXACT)
    assert_close(out.rate_per_example, ref_s.sum(1) + ref_g, **EXACT)


def test_decoder_gets_one_tensor_for_an_ungrouped_stepped_latent() -> None:
    seen: list[Tensor] = []

    def decoder(z: Tensor) -> Normal:
        seen.append(z)
        return Normal(z.flatten(1)[:, :2], 1.0)

    x, _ = _x()
    out = rdloss.RateDistortionLoss()(x, posterior=_qs(B, 3, 2), decoder=decoder, samples=2)
    assert isinstance(seen[0], Tensor) and seen[0].shape == (2 * B, 3, 2)
    assert out.rate_per_step is not None and list(out.rate_per_step) == ["z"]
    assert out.rate_per_group is None


def test_decoder_path_with_a_discrete_group_without_rsample_is_refused() -> None:
    q = Independent(OneHotCategorical(probs=_unimix(torch.zeros(B, 3, 4, 5))), 1)
    x, _ = _x(torch.float32)
    with pytest.raises(ValueError, match="rsample"):
        rdloss.RateDistortionLoss()(
            x,
            posterior={"c": q},
            prior={"c": q},
            decoder=lambda z: Normal(z["c"].flatten(1)[:, :2], 1.0),
            samples=2,
        )


def test_decoder_path_with_straight_through_onehot_steps() -> None:
    from torch.distributions import OneHotCategoricalStraightThrough

    g = _gen(5)
    pq = _unimix(torch.randn(B, 3, 4, 5, generator=g, dtype=torch.float64))
    pp = _unimix(torch.randn(B, 3, 4, 5, generator=g, dtype=torch.float64))
    q = Independent(OneHotCategoricalStraightThrough(probs=pq), 1)
    p = Independent(OneHotCategorical(probs=pp), 1)
    x, _ = _x()
    out = rdloss.RateDistortionLoss()(
        x,
        posterior={"c": q},
        prior={"c": p},
        decoder=lambda z: Normal(z["c"].flatten(1)[:, :2], 1.0),
        samples=2,
    )
    assert out.rate_per_step is not None
    assert_close(out.rate_per_step["c"], (pq * (pq.log() - pp.log())).sum((-1, -2)), **EXACT)


def test_enumerate_with_a_per_example_prior() -> None:
    g = _gen(6)
    lq, lp = torch.randn(B, 5, generator=g), torch.randn(B, 5, generator=g)
    q, p = Categorical(logits=lq), Categorical(logits=lp)
    x = torch.zeros(B, 2)

    def decoder(z: Tensor) -> Normal:
        return Normal(torch.nn.functional.one_hot(z, 5).float()[..., :2], 1.0)

    out = rdloss.RateDistortionLoss()(x, posterior=q, prior=p, decoder=decoder, samples="enumerate")
    ref = (lq.softmax(-1) * (lq.log_softmax(-1) - lp.log_softmax(-1))).sum(-1)
    assert_close(out.rate_per_example, ref)


def test_enumerate_with_groups_is_refused() -> None:
    q = Categorical(logits=torch.zeros(B, 5))
    with pytest.raises(ValueError, match="enumerate"):
        rdloss.RateDistortionLoss()(
            torch.zeros(B, 2),
            posterior={"c": q},
            prior={"c": q},
            decoder=lambda z: Normal(z["c"], 1.0),
            samples="enumerate",
        )


def test_z_with_decoder_is_refused_for_groups() -> None:
    with pytest.raises(ValueError, match="do not pass z"):
        rdloss.RateDistortionLoss()(
            torch.zeros(B, 2, dtype=torch.float64),
            posterior={"a": _q(B, 2)},
            z={"a": torch.zeros(B, 2)},
            decoder=lambda z: Normal(z["a"], 1.0),
        )


# --- checkpoints, compile, torch.func ------------------------------------------------------


def _mapped_loss(objective: Any = None) -> rdloss.RateDistortionLoss:
    fixed = Independent(Normal(torch.zeros(2, dtype=torch.float64), 2.0), 1)
    return rdloss.RateDistortionLoss(
        marginal={"a": marginals.DiagonalGaussian(D).double(), "b": fixed}, objective=objective
    )


def test_state_dict_round_trip_of_a_marginal_mapping() -> None:
    src = _mapped_loss(objectives.FreeBits(schedules.Linear(0.0, 1.0, steps=10), per="group"))
    with torch.no_grad():
        src.marginal["a"].loc.copy_(torch.tensor([0.1, -0.2, 0.3]))  # type: ignore[index]
    post = {"a": _q(B, D, seed=1), "b": _q(B, 2, seed=2), "c": _q(B, 1, seed=3)}
    x, lik = _x()
    for _ in range(3):
        src(x, posterior=post, likelihood=lik)
    dst = _mapped_loss(objectives.FreeBits(schedules.Linear(0.0, 1.0, steps=10), per="group"))
    dst.load_state_dict(src.state_dict())
    a = src(x, posterior=post, likelihood=lik)
    b = dst(x, posterior=post, likelihood=lik)
    assert torch.equal(a.loss, b.loss)
    assert a.rate_per_group is not None and b.rate_per_group is not None
    for k in post:
        assert torch.equal(a.rate_per_group[k], b.rate_per_group[k])
    assert int(dst.objective.step) == 4


def test_state_dict_of_a_mapping_does_not_load_into_a_loss_without_it() -> None:
    state = _mapped_loss().state_dict()
    with pytest.raises(RuntimeError, match=r"marginal\.a\.loc"):
        rdloss.RateDistortionLoss().load_state_dict(state)


def test_state_dict_of_a_mapping_does_not_load_into_other_group_names() -> None:
    state = _mapped_loss().state_dict()
    other = rdloss.RateDistortionLoss(marginal={"z1": marginals.DiagonalGaussian(D)})
    with pytest.raises(RuntimeError, match="Missing key"):
        other.load_state_dict(state)


def test_state_dict_of_an_unmapped_learned_marginal_into_a_mapping_is_refused() -> None:
    state = rdloss.RateDistortionLoss(marginal=marginals.DiagonalGaussian(D)).state_dict()
    with pytest.raises(RuntimeError):
        _mapped_loss().load_state_dict(state)


def test_fixed_group_marginals_stay_put_under_to() -> None:
    # documented: a Distribution marginal is not moved by .to(); the learned one is
    loss = _mapped_loss().float()
    assert loss.marginal["a"].loc.dtype == torch.float32  # type: ignore[index]
    dist = loss.marginal_distribution(_q(B, 2), group="b")
    assert dist.mean.dtype == torch.float64


def test_marginal_distribution_per_group() -> None:
    loss = _mapped_loss()
    got = loss.marginal_distribution(_q(B, 2), group="b")
    assert_close(got.stddev, torch.full((2,), 2.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="name the group"):
        loss.marginal_distribution(_q(B, 2))


@pytest.mark.slow
def test_compile_fullgraph_steps_groups_free_bits_and_balance_compile_once() -> None:
    from torch._dynamo.testing import CompileCounterWithBackend

    loss = rdloss.RateDistortionLoss(
        objective=objectives.FreeBits(1.0, per="step", reduction="example", beta=0.6),
        kl_balance=0.5 / 0.6,
    )

    def step(mu: Tensor, pm: Tensor, x: Tensor) -> Tensor:
        post = {"s": Independent(Normal(mu, 1.0), 1), "t": Independent(Normal(mu[:, :2], 1.0), 1)}
        prior = {"s": Independent(Normal(pm, 1.0), 1)}
        out = loss(x, posterior=post, prior=prior, likelihood=Normal(x * 0, 1.0))
        return out.loss

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    g = _gen(0)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(3):
            mu = torch.randn(B, 3, 2, generator=g, requires_grad=True)
            pm = torch.randn(B, 3, 2, generator=g)
            x = torch.zeros(B, 2)
            got = compiled(mu, pm, x)
            assert_close(got, step(mu, pm, x))
    assert counter.frame_count == 1


def test_torch_func_grad_and_vmap_in_eval_mode_over_groups() -> None:
    from torch.func import grad, vmap

    loss = rdloss.RateDistortionLoss(objective=objectives.FreeBits(0.3, per="group")).eval()
    x, lik = _x()
    lp = torch.full((B, D), 0.1, dtype=torch.float64)

    def fn(mu: Tensor) -> Tensor:
        post = {"a": Independent(Normal(mu, 1.0), 1), "b": Independent(Normal(2 * mu, 1.0), 1)}
        prior = {"a": Independent(Normal(lp, 1.0), 1)}
        return loss(x, posterior=post, prior=prior, likelihood=lik).loss

    mu = torch.randn(B, D, generator=_gen(1), dtype=torch.float64)
    # reference: plain autograd on the same function
    leaf = mu.clone().requires_grad_()
    (ref,) = torch.autograd.grad(fn(leaf), [leaf])
    assert_close(grad(fn)(mu), ref, **EXACT)
    batch = torch.randn(5, B, D, generator=_gen(2), dtype=torch.float64)
    assert_close(vmap(fn)(batch), torch.stack([fn(m) for m in batch]), **EXACT)


def test_torch_func_in_train_mode_refuses_clearly() -> None:
    from torch.func import grad

    loss = rdloss.RateDistortionLoss(objective=objectives.FreeBits(0.3, per="group"))
    x, lik = _x()

    def fn(mu: Tensor) -> Tensor:
        post = {"a": Independent(Normal(mu, 1.0), 1)}
        return loss(x, posterior=post, likelihood=lik).loss

    with pytest.raises(RuntimeError, match="eval"):
        grad(fn)(torch.zeros(B, D, dtype=torch.float64))


# --- the same product of Normals, split differently between batch and event ----------------

SPLIT_BUG = (
    "BUG: a conv posterior Normal(mu) (B, C, H, W) against a prior or marginal "
    "Independent(Normal(...), 1) over the same elements is not recognised as a product of "
    "Normals (rdloss/_kl.py factorised_parts compares reinterpreted_batch_ndims of the outer "
    "Independent only): 'no closed-form KL for (Independent, Independent)', and with z a "
    "silent switch to Monte Carlo"
)


@pytest.mark.parametrize("against", ["prior", "marginal", "prior-z"])
def test_conv_latent_against_a_differently_split_product_is_analytic(against: str) -> None:
    lq, sq = _normal(B, 2, 3, 3, seed=1)
    lp, sp = _normal(B if against != "marginal" else 1, 2, 3, 3, seed=2)
    if against == "marginal":
        lp, sp = lp[0], sp[0]
    other = Independent(Normal(lp, sp), 1)
    q = Normal(lq, sq)
    if against == "marginal":
        r = F.rate(q, other)
    elif against == "prior":
        r = F.rate(q, prior=other)
    else:
        r = F.rate(q, prior=other, z=lq)  # z given: must still use the closed form
    assert r.estimator == "analytic"
    assert_close(r.per_example, _gaussian_kl(lq, sq, lp, sp).flatten(1).sum(1), **EXACT)


def test_stepped_posterior_against_an_elementwise_prior_is_analytic() -> None:
    q = _qs(B, 5, 3, seed=1)
    lp, sp = _normal(B, 5, 3, seed=2)
    r = F.rate(q, prior=Normal(lp, sp))
    assert r.estimator == "analytic" and r.per_step is not None
    base = q.base_dist
    assert_close(r.per_step, _gaussian_kl(base.loc, base.scale, lp, sp).sum(-1), **EXACT)


# --- many groups, big and odd names, diagnostics over grouped outputs ----------------------


def test_fifty_groups_none_dropped() -> None:
    post = {f"layer.{i}/z": _q(B, 1 + i % 3, seed=i) for i in range(50)}
    prior = {k: _q(B, v.event_shape[0], seed=1000 + i) for i, (k, v) in enumerate(post.items())}
    prior = {k: v for i, (k, v) in enumerate(prior.items()) if i % 2 == 0}
    x, lik = _x()
    out = rdloss.RateDistortionLoss()(x, posterior=post, prior=prior, likelihood=lik)
    assert out.rate_per_group is not None and len(out.rate_per_group) == 50
    total = torch.zeros(B, dtype=torch.float64)
    for k, q in post.items():
        p = prior.get(k) or Independent(
            Normal(torch.zeros(q.event_shape, dtype=torch.float64), 1.0), 1
        )
        ref = _kl(q, p)
        assert_close(out.rate_per_group[k], ref, **EXACT)
        total = total + ref
    assert_close(out.rate_per_example, total, **EXACT)
    assert len([k for k in out.metrics() if k.startswith("rate/")]) == 50


def test_batch_mismatch_with_x_names_the_group() -> None:
    x, _ = _x()
    with pytest.raises(ValueError, match=r"posterior\['b'\]"):
        rdloss.RateDistortionLoss()(
            x[:2],
            posterior={"b": _q(B, 2)},
            likelihood=Normal(torch.zeros(2, 2, dtype=torch.float64), 1.0),
        )


def test_rate_per_dimension_metric_over_a_grouped_output() -> None:
    from rdloss.diagnostics import RateDistortion, RatePerDimension

    post = {"a": _q(B, 2, seed=1), "b": _q(B, 3, seed=2)}
    prior = {"a": _q(B, 2, seed=3)}
    x, lik = _x()
    out = rdloss.RateDistortionLoss()(x, posterior=post, prior=prior, likelihood=lik)
    per_dim = RatePerDimension()
    per_dim.update(out)
    a = kl_divergence(post["a"].base_dist, prior["a"].base_dist)
    bb = post["b"].base_dist
    b = _gaussian_kl(bb.loc, bb.scale, torch.zeros(1), torch.ones(1))
    expected = torch.cat([a, b], 1).mean(0)
    assert_close(per_dim.compute().double(), expected, rtol=1e-6, atol=1e-6)
    rd = RateDistortion()
    rd.update(out)
    assert float(rd.compute().rate) == pytest.approx(float((a.sum(1) + b.sum(1)).mean()), rel=1e-6)


# --- fuzzing against torch.distributions ---------------------------------------------------


def _random_case(seed: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Tensor]]:
    """Random groups (event shapes, steps), each against a per-example, shared or no prior."""
    g = _gen(seed)
    n = int(torch.randint(1, 5, (1,), generator=g))
    batch = int(torch.randint(1, 4, (1,), generator=g))
    post, prior, expected = {}, {}, {}
    for i in range(n):
        kind = int(torch.randint(0, 3, (1,), generator=g))  # vector, conv, stepped
        if kind == 0:
            shape: tuple[int, ...] = (int(torch.randint(1, 4, (1,), generator=g)),)
        elif kind == 1:
            shape = (2, 2, int(torch.randint(1, 3, (1,), generator=g)))
        else:
            shape = (int(torch.randint(1, 4, (1,), generator=g)), 2)
        loc = torch.randn(batch, *shape, generator=g, dtype=torch.float64)
        scale = torch.rand(batch, *shape, generator=g, dtype=torch.float64) + 0.3
        event = 1 if kind == 2 else len(shape)
        q = Independent(Normal(loc, scale), event)
        which = int(torch.randint(0, 3, (1,), generator=g))  # per-example, shared, none
        p_shape = (batch, *shape) if which == 0 else shape[1:] if kind == 2 else shape
        p_loc = torch.randn(*p_shape, generator=g, dtype=torch.float64)
        p_scale = torch.rand(*p_shape, generator=g, dtype=torch.float64) + 0.3
        name = f"g{i}"
        post[name] = q
        if which == 2:
            p_loc, p_scale = torch.zeros(()), torch.ones(())
        else:
            prior[name] = Normal(p_loc, p_scale)  # elementwise: the loss reinterprets
        kl = _gaussian_kl(loc, scale, p_loc, p_scale)  # broadcast, written out
        expected[name] = kl.flatten(2).sum(2) if kind == 2 else kl.flatten(1).sum(1)
    return post, prior, expected


@pytest.mark.parametrize("seed", range(40))
def test_fuzz_groups_against_written_out_kls(seed: int) -> None:
    post, prior, expected = _random_case(seed)
    batch = next(iter(post.values())).batch_shape[0]
    x = torch.zeros(batch, 2, dtype=torch.float64)
    lik = Normal(torch.zeros_like(x), 1.0)
    out = rdloss.RateDistortionLoss()(x, posterior=post, prior=prior, likelihood=lik)
    assert out.rate_per_group is not None
    total = torch.zeros(batch, dtype=torch.float64)
    for k, ref in expected.items():
        if ref.ndim == 2:  # stepped group
            assert out.rate_per_step is not None
            assert_close(out.rate_per_step[k], ref, **EXACT)
            ref = ref.sum(1)
        assert_close(out.rate_per_group[k], ref, **EXACT)
        # and torch's own KL agrees with the written-out one
        p = prior.get(k)
        if p is not None:
            q = post[k]
            torch_kl = kl_divergence(q.base_dist, p).flatten(1).sum(1)
            assert_close(torch_kl, ref.reshape(batch, -1).sum(1), **EXACT)
        total = total + ref
    assert_close(out.rate_per_example, total, **EXACT)


def _enumerated_grads(alpha: float | None) -> tuple[Tensor, tuple[Tensor, ...]]:
    g = _gen(8)
    lq = torch.randn(B, 5, generator=g, dtype=torch.float64).requires_grad_()
    lp = torch.randn(B, 5, generator=g, dtype=torch.float64).requires_grad_()
    loss = rdloss.RateDistortionLoss(kl_balance=alpha)
    out = loss(
        torch.zeros(B, 2, dtype=torch.float64),
        posterior=Categorical(logits=lq),
        prior=Categorical(logits=lp),
        decoder=lambda z: Normal(torch.zeros(z.shape[0], 2, dtype=torch.float64), 1.0),
        samples="enumerate",
    )
    return out.rate, torch.autograd.grad(out.rate, [lq, lp])


def test_kl_balance_applies_to_the_enumerated_rate() -> None:
    plain, (gq, gp) = _enumerated_grads(None)
    value, (bq, bp) = _enumerated_grads(0.8)
    assert_close(value, plain, **EXACT)
    assert_close(bq, 0.2 * gq, **EXACT)
    assert_close(bp, 0.8 * gp, **EXACT)


def test_kl_balance_keeps_per_step_and_per_dimension_values() -> None:
    q, p = _qs(B, 3, 2, seed=1), _qs(B, 3, 2, seed=2)
    plain = F.rate(q, prior=p)
    balanced = F.rate(q, prior=p, balance=0.3)
    assert plain.per_step is not None and balanced.per_step is not None
    assert torch.equal(balanced.per_example, plain.per_example)
    assert torch.equal(balanced.per_step, plain.per_step)
    assert plain.per_dimension is not None and balanced.per_dimension is not None
    assert torch.equal(balanced.per_dimension, plain.per_dimension)


def _tril(seed: int) -> Tensor:
    g = _gen(seed)
    a = torch.randn(B, D, D, generator=g, dtype=torch.float64)
    return torch.linalg.cholesky(a @ a.transpose(-1, -2) + torch.eye(D, dtype=torch.float64))


@pytest.mark.parametrize("alpha", [None, 0.3])
def test_full_covariance_groups_with_balance(alpha: float | None) -> None:
    from torch.distributions import MultivariateNormal

    lq, _ = _normal(B, D, seed=1, grad=True)
    lp, _ = _normal(B, D, seed=2, grad=True)
    tq, tp = _tril(3).requires_grad_(), _tril(4).requires_grad_()
    q = MultivariateNormal(lq, scale_tril=tq)
    p = MultivariateNormal(lp, scale_tril=tp)
    x, lik = _x()
    loss = rdloss.RateDistortionLoss(kl_balance=alpha)
    out = loss(x, posterior={"m": q, "n": _q(B, 2)}, prior={"m": p}, likelihood=lik)
    ref = kl_divergence(
        MultivariateNormal(lq, scale_tril=tq), MultivariateNormal(lp, scale_tril=tp)
    )
    assert out.rate_per_group is not None and out.rate_per_group_dimension is not None
    assert_close(out.rate_per_group["m"], ref, **EXACT)
    assert out.rate_per_group_dimension["m"] is None and out.rate_per_dimension is None
    got = torch.autograd.grad(out.rate_per_group["m"].sum(), [lq, tq, lp, tp])
    plain = torch.autograd.grad(ref.sum(), [lq, tq, lp, tp])
    share = [1.0, 1.0, 1.0, 1.0] if alpha is None else [1 - alpha, 1 - alpha, alpha, alpha]
    for a, b, s in zip(got, plain, share, strict=True):
        assert_close(a, s * b, **EXACT)


def test_mixture_prior_with_balance_under_mc_splits_the_gradient() -> None:
    lq, sq = _normal(B, D, seed=1, grad=True)
    loc, scale = _normal(B, 3, D, seed=2, grad=True)
    logits = torch.zeros(B, 3, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(B, D, generator=_gen(3), dtype=torch.float64)

    def value(alpha: float | None) -> tuple[Tensor, ...]:
        q = Independent(Normal(lq, sq), 1)
        mix = MixtureSameFamily(Categorical(logits=logits), Independent(Normal(loc, scale), 1))
        r = F.rate(q, prior=mix, z=lq + sq * eps, balance=alpha).per_example.sum()
        return (r, *torch.autograd.grad(r, [lq, sq, loc, scale, logits]))

    plain, *g_plain = value(None)
    bal, *g_bal = value(0.6)
    assert_close(bal, plain, **EXACT)
    for i, (a, b) in enumerate(zip(g_bal, g_plain, strict=True)):
        assert_close(a, (0.4 if i < 2 else 0.6) * b, **EXACT)


def test_deepcopy_and_torch_save_keep_every_group_marginal() -> None:
    import copy
    import io

    loss = _mapped_loss()
    buffer = io.BytesIO()
    torch.save(loss, buffer)
    buffer.seek(0)
    restored = [copy.deepcopy(loss), torch.load(buffer, weights_only=False)]
    post = {"a": _q(B, D, seed=1), "b": _q(B, 2, seed=2)}
    x, lik = _x()
    ref = loss(x, posterior=post, likelihood=lik)
    for other in restored:
        out = other(x, posterior=post, likelihood=lik)
        assert out.rate_per_group is not None and ref.rate_per_group is not None
        for k in post:
            assert torch.equal(out.rate_per_group[k], ref.rate_per_group[k])


def test_repr_names_every_group_marginal() -> None:
    assert "'b'" in repr(_mapped_loss()) or "(b)" in repr(_mapped_loss())
