"""rdloss.latents: latent groups, per-call priors and step axes resolved into canonical groups.

Every value is checked against an independent computation written here (torch's
``kl_divergence`` per group, hand-written formulas), never against another rdloss call: the
rate per group and per dimension, dtypes and devices, shape/key/type errors, differently
split products of Normals, many groups, and a fuzz over random groupings (issues 12 and 13).
The catalogue's ``groups:`` part of bad inputs closes the file.
"""

from __future__ import annotations

import collections
import types
from typing import Any

import pytest
import torch
from _builders import EXACT, B, D, _call, _gaussian_kl, _gen, _kl, _nll, _normal, _q, _qs, _x
from _catalogue import Entry, _loss, _p, expect_named_error
from _catalogue import _q as _bad_q
from _catalogue import _x as _bad_x
from torch import Tensor
from torch.distributions import (
    Categorical,
    Independent,
    Normal,
    kl_divergence,
)
from torch.testing import assert_close

import rdloss
from rdloss import functional as F
from rdloss import helpers, marginals, objectives

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


# --- errors: shapes, keys, types -----------------------------------------------------------


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


# --- bad inputs: latent groups, per-call priors, steps ------------------------------------
# The catalogue's part for this module (tests/_catalogue.py); docs/errors.md lists its keys.


BAD_INPUTS: dict[str, Entry] = {
    "groups: prior key names no posterior group": (
        lambda: _loss()(
            _bad_x(), posterior={"z1": _bad_q()}, prior={"z9": _bad_q()}, likelihood=_p()
        ),
        ValueError,
        r"prior has a key 'z9' that names no posterior group; the groups are \['z1'\]",
    ),
    "groups: z key names no posterior group": (
        lambda: _loss(rate_estimator="mc")(
            _bad_x(), posterior={"z1": _bad_q()}, z={"zz": torch.zeros(B, D)}, likelihood=_p()
        ),
        ValueError,
        r"z has a key 'zz' that names no posterior group",
    ),
    "groups: marginal key names no posterior group": (
        lambda: _loss(marginal={"top": marginals.StandardNormal(D)})(
            _bad_x(), posterior={"z1": _bad_q()}, likelihood=_p()
        ),
        ValueError,
        r"marginal has a key 'top' that names no posterior group",
    ),
    "groups: prior mapping for one posterior": (
        lambda: _loss()(_bad_x(), posterior=_bad_q(), prior={"z1": _bad_q()}, likelihood=_p()),
        TypeError,
        r"prior is a mapping of groups but the posterior is one Independent",
    ),
    "groups: one prior for a mapping of posteriors": (
        lambda: _loss()(_bad_x(), posterior={"z1": _bad_q()}, prior=_bad_q(), likelihood=_p()),
        TypeError,
        r"posterior is a mapping of groups \['z1'\], so prior must be a mapping",
    ),
    "groups: empty posterior mapping": (
        lambda: _loss()(_bad_x(), posterior={}, likelihood=_p()),
        ValueError,
        r"posterior is an empty mapping",
    ),
    "groups: groups of different batch sizes": (
        lambda: _loss()(_bad_x(), posterior={"a": _bad_q(), "b": _bad_q(B - 1)}, likelihood=_p()),
        ValueError,
        r"posterior\['b'\] has batch size 3, the first group 4",
    ),
    "groups: prior batch neither () nor the posterior's": (
        lambda: _loss()(_bad_x(), posterior=_bad_q(), prior=_bad_q(B - 1), likelihood=_p()),
        ValueError,
        r"prior must have batch_shape \(\) or the posterior's \(4,\) and the posterior's "
        r"event_shape \(3,\), got batch_shape \(3,\)",
    ),
    "groups: prior event shape differs": (
        lambda: _loss()(
            _bad_x(),
            posterior=_bad_q(),
            prior=helpers.normal(torch.zeros(B, D + 1), scale=1.0),
            likelihood=_p(),
        ),
        ValueError,
        r"prior must have batch_shape \(\) or the posterior's \(4,\) and the posterior's "
        r"event_shape \(3,\), got batch_shape \(4,\) and event_shape \(4,\)",
    ),
    "groups: step axis differs between posterior and prior": (
        lambda: _loss()(
            _bad_x(),
            posterior=Independent(Normal(torch.zeros(B, 5, D), torch.ones(B, 5, D)), 1),
            prior=Independent(Normal(torch.zeros(B, 4, D), torch.ones(B, 4, D)), 1),
            likelihood=_p(),
        ),
        ValueError,
        r"the step axis differs: posterior T = 5, prior T = 4",
    ),
    "groups: z of a group has the wrong shape": (
        lambda: _loss(rate_estimator="mc")(
            _bad_x(), posterior={"z1": _bad_q()}, z={"z1": torch.zeros(B, D + 2)}, likelihood=_p()
        ),
        ValueError,
        r"z\['z1'\] must have shape \(B, \*event\) = \(4, 3\) or \(S, B, \*event\), got \(4, 5\)",
    ),
    "groups: free bits per step without a step axis": (
        lambda: _loss(objective=objectives.FreeBits(per="step"))(
            _bad_x(), posterior={"z1": _bad_q()}, likelihood=_p()
        ),
        ValueError,
        r"FreeBits\(per='step'\) needs a step axis in every group, but \['z1'\] have none",
    ),
    "groups: free bits per group on an ungrouped call": (
        lambda: _loss(objective=objectives.FreeBits(per="group"))(
            _bad_x(), posterior=_bad_q(), likelihood=_p()
        ),
        ValueError,
        r"FreeBits\(per='group'\) needs named latent groups",
    ),
    "groups: discrete posterior against the default N(0, I)": (
        lambda: _loss()(_bad_x(), posterior=Categorical(logits=torch.zeros(B, D)), likelihood=_p()),
        ValueError,
        r"the posterior Categorical is discrete but the rate is taken against the "
        r"continuous Normal \(the default marginal is N\(0, I\)\)",
    ),
    "groups: flow posterior with the default marginal": (
        lambda: _loss()(
            _bad_x(),
            posterior=torch.distributions.TransformedDistribution(
                helpers.normal(torch.zeros(B, D), scale=1.0),
                [torch.distributions.transforms.TanhTransform()],
            ),
            likelihood=_p(),
        ),
        ValueError,
        r"the default marginal N\(0, I\) needs the posterior's dtype and device from its "
        r"mean, which TransformedDistribution does not implement",
    ),
    "groups: kl_balance outside [0, 1]": (
        lambda: _loss(kl_balance=1.5),
        ValueError,
        r"kl_balance must lie in \[0, 1\], got 1.5",
    ),
    "groups: marginal group name with a dot": (
        lambda: _loss(marginal={"enc.z": marginals.StandardNormal(D)}),
        ValueError,
        r"marginal group names must be non-empty strings without '.', got 'enc.z'",
    ),
    "groups: enumeration of grouped latents": (
        lambda: _loss(marginal={"c": marginals.Categorical(D)})(
            _bad_x(),
            posterior={"c": Categorical(logits=torch.zeros(B, D))},
            decoder=lambda z: _p(),
            samples="enumerate",
        ),
        ValueError,
        r"samples='enumerate' takes one discrete latent without steps",
    ),
    "groups: NVAE balancing on an ungrouped call": (
        lambda: _loss(objective=objectives.Beta(0.5, group_balance=True))(
            _bad_x(), posterior=_bad_q(), likelihood=_p()
        ),
        ValueError,
        r"Beta\(group_balance=True\) balances named latent groups",
    ),
    "groups: NVAE alpha without balancing": (
        lambda: objectives.Beta(0.5, alpha={"z1": 1.0}),
        ValueError,
        r"alpha weights NVAE's group balancing: pass group_balance=True",
    ),
    "groups: NVAE alpha missing a group": (
        lambda: _loss(objective=objectives.Beta(0.5, group_balance=True, alpha={"a": 1.0}))(
            _bad_x(), posterior={"a": _bad_q(), "b": _bad_q()}, likelihood=_p()
        ),
        ValueError,
        r"alpha must give every group a value; missing \['b'\]",
    ),
    "groups: KL balancing of a flow prior": (
        lambda: _loss(kl_balance=0.5, rate_estimator="mc")(
            _bad_x(),
            posterior=_bad_q(),
            prior=torch.distributions.TransformedDistribution(
                helpers.normal(torch.zeros(B, D), scale=1.0),
                [torch.distributions.transforms.AffineTransform(0.0, 2.0)],
            ),
            z=torch.zeros(B, D),
            likelihood=_p(),
        ),
        TypeError,
        r"KL balancing needs a stop-gradient copy of TransformedDistribution, whose "
        r"parameters rdloss cannot reach",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_named_error(case: str) -> None:
    expect_named_error(BAD_INPUTS[case])
