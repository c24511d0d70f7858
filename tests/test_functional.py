"""rdloss.functional against independent computations."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from _builders import EXACT, B, D, _gaussian_kl, _gen, _normal, _q, _qs, _unimix, _x
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    MixtureSameFamily,
    Normal,
    OneHotCategorical,
    StudentT,
    kl_divergence,
)
from torch.testing import assert_close

import rdloss
from rdloss import functional as F
from rdloss import marginals


def _gaussians(batch: int = 5, dim: int = 3, dtype: torch.dtype = torch.float64):
    loc = torch.randn(batch, dim, dtype=dtype)
    scale = torch.rand(batch, dim, dtype=dtype) + 0.5
    m_loc = torch.randn(dim, dtype=dtype) * 0.3
    m_scale = torch.rand(dim, dtype=dtype) + 0.7
    return Independent(Normal(loc, scale), 1), Independent(Normal(m_loc, m_scale), 1)


def test_analytic_rate_matches_closed_form() -> None:
    q, m = _gaussians()
    mu, s = q.base_dist.loc, q.base_dist.scale
    mu0, s0 = m.base_dist.loc, m.base_dist.scale
    # KL(N(mu, s^2) || N(mu0, s0^2)) written out by hand, summed over dims.
    expected = (torch.log(s0 / s) + (s**2 + (mu - mu0) ** 2) / (2 * s0**2) - 0.5).sum(-1)
    result = F.rate(q, m)
    assert result.estimator == "analytic"
    assert_close(result.per_example, expected)
    assert result.per_dimension is not None
    assert result.per_dimension.shape == (5, 3)
    assert_close(result.per_dimension.sum(-1), result.per_example)


def test_analytic_rate_equals_monte_carlo_within_sampling_error() -> None:
    q, m = _gaussians()
    z = q.sample((200_000,))
    mc = F.rate(q, m, z=z, estimator="mc")
    analytic = F.rate(q, m, estimator="analytic")
    assert mc.estimator == "mc"
    log_ratio = q.log_prob(z) - m.log_prob(z)
    stderr = log_ratio.std(0) / math.sqrt(z.shape[0])
    assert ((mc.per_example - analytic.per_example).abs() < 5 * stderr).all()
    assert mc.per_dimension is not None and analytic.per_dimension is not None
    assert_close(mc.per_dimension.sum(-1), mc.per_example)


def test_auto_falls_back_to_mc_without_registered_kl() -> None:
    q = Independent(Normal(torch.zeros(4, 2), torch.ones(4, 2)), 1)
    m = Independent(StudentT(3.0, torch.zeros(2), torch.ones(2)), 1)
    z = q.sample((3,))
    result = F.rate(q, m, z=z)
    assert result.estimator == "mc"
    expected = (q.log_prob(z) - m.log_prob(z)).mean(0)
    assert_close(result.per_example, expected)


def test_batch_dims_are_reinterpreted_as_latent_dims() -> None:
    q_flat = Normal(torch.randn(4, 3), torch.rand(4, 3) + 0.5)
    m_flat = Normal(torch.zeros(3), torch.ones(3))
    wrapped = F.rate(Independent(q_flat, 1), Independent(m_flat, 1))
    assert_close(F.rate(q_flat, m_flat).per_example, wrapped.per_example)


def test_rate_gradcheck_float64() -> None:
    loc = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    log_scale = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    m_loc = torch.randn(2, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(4, 3, 2, dtype=torch.float64)

    def analytic(loc, log_scale, m_loc):
        q = Normal(loc, log_scale.exp())
        return F.rate(q, Normal(m_loc, torch.ones_like(m_loc))).per_example

    def monte_carlo(loc, log_scale, m_loc):
        q = Normal(loc, log_scale.exp())
        z = loc + log_scale.exp() * eps
        return F.rate(q, Normal(m_loc, torch.ones_like(m_loc)), z=z, estimator="mc").per_example

    assert torch.autograd.gradcheck(analytic, (loc, log_scale, m_loc))
    assert torch.autograd.gradcheck(monte_carlo, (loc, log_scale, m_loc))


def test_distortion_gradcheck_float64() -> None:
    logits = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randint(0, 2, (3, 2, 4)).double()

    def distortion(logits):
        return F.distortion(x, Independent(Bernoulli(logits=logits), 2))

    assert torch.autograd.gradcheck(distortion, (logits,))


def test_distortion_sums_over_data_dims_any_split() -> None:
    x = torch.randint(0, 2, (4, 1, 3, 3)).double()
    logits = torch.randn(4, 1, 3, 3, dtype=torch.float64)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, x, reduction="none"
    ).sum((1, 2, 3))
    for event_dims in range(4):
        dist = Bernoulli(logits=logits)
        if event_dims:
            dist = Independent(dist, event_dims)
        assert_close(F.distortion(x, dist), expected)


def test_distortion_with_sample_dimension() -> None:
    x = torch.randint(0, 2, (4, 6)).double()
    logits = torch.randn(3, 4, 6, dtype=torch.float64)
    per_sample = F.distortion(x, Independent(Bernoulli(logits=logits), 1))
    assert per_sample.shape == (3, 4)
    for s in range(3):
        assert_close(per_sample[s], F.distortion(x, Independent(Bernoulli(logits=logits[s]), 1)))


def test_distortion_rejects_silent_broadcast() -> None:
    x = torch.rand(4, 1, 28, 28)
    with pytest.raises(ValueError, match=r"likelihood must cover x exactly"):
        F.distortion(x, Independent(Bernoulli(logits=torch.zeros(4, 784)), 1))


def test_enumerated_rate_equals_brute_force_sum() -> None:
    probs = torch.softmax(torch.randn(5, 4, dtype=torch.float64), -1)
    prior = torch.softmax(torch.randn(4, dtype=torch.float64), -1)
    brute = (probs * (probs.log() - prior.log())).sum(-1)
    analytic = F.enumerated_rate(Categorical(probs=probs), Categorical(probs=prior))
    assert analytic.estimator == "analytic"
    assert_close(analytic.per_example, brute)

    # No KL is registered between OneHotCategorical and a product of Bernoullis, so the
    # exact sum over the support is used.
    one_hot = F.enumerated_rate(
        OneHotCategorical(probs=probs), Independent(Bernoulli(probs=torch.full((4,), 0.3)), 1)
    )
    assert one_hot.estimator == "enumerate"
    support = torch.eye(4, dtype=torch.float64)
    log_m = Independent(Bernoulli(probs=torch.full((4,), 0.3, dtype=torch.float64)), 1).log_prob(
        support
    )
    assert_close(one_hot.per_example, (probs * (probs.log() - log_m)).sum(-1))


def test_enumerate_posterior_shapes() -> None:
    probs = torch.softmax(torch.randn(5, 4), -1)
    z, p = F.enumerate_posterior(Categorical(probs=probs))
    assert z.shape == (4, 5) and p.shape == (4, 5)
    assert_close(p.sum(0), torch.ones(5))
    z1, _ = F.enumerate_posterior(OneHotCategorical(probs=probs))
    assert z1.shape == (4, 5, 4)


def test_sample_mean_ignores_zero_probability_points() -> None:
    values = torch.tensor([[1.0, float("inf")], [3.0, 2.0]])
    probs = torch.tensor([[0.5, 0.0], [0.5, 1.0]])
    assert_close(F.sample_mean(values, probs), torch.tensor([2.0, 2.0]))


def test_batch_mean_weights_are_normalised() -> None:
    values = torch.tensor([1.0, 2.0, 6.0])
    assert_close(F.batch_mean(values), torch.tensor(3.0))
    assert_close(F.batch_mean(values, torch.tensor([1.0, 1.0, 2.0])), torch.tensor(15.0 / 4))
    assert_close(
        F.batch_mean(values, torch.tensor([2.0, 2.0, 4.0])),
        F.batch_mean(values, torch.tensor([1.0, 1.0, 2.0])),
    )


@pytest.mark.parametrize("event_dims", [0, 1, 2])
@pytest.mark.parametrize("samples", [False, True])
def test_bernoulli_fast_path_equals_log_prob_with_gradients(event_dims, samples) -> None:
    # distortion() uses the cross-entropy directly for Bernoulli decoders; it must equal
    # -log_prob in value and gradient, for logits and probs, with and without samples.
    x = torch.randint(0, 2, (3, 4, 5)).double()
    shape = (2, 3, 4, 5) if samples else (3, 4, 5)
    for param in ("logits", "probs"):
        raw = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        value = torch.sigmoid(raw) if param == "probs" else raw
        dist = Bernoulli(**{param: value})
        dist = Independent(dist, event_dims) if event_dims else dist
        ours = F.distortion(x, dist)
        n_lead = 2 if samples else 1
        reference = -dist.log_prob(x)
        reference = reference.flatten(n_lead).sum(-1) if reference.ndim > n_lead else reference
        assert_close(ours, reference)
        (g_ours,) = torch.autograd.grad(ours.sum(), raw, retain_graph=True)
        (g_ref,) = torch.autograd.grad(reference.sum(), raw)
        assert_close(g_ours, g_ref)


def test_bernoulli_fast_path_keeps_support_validation() -> None:
    dist = Independent(Bernoulli(logits=torch.zeros(2, 3), validate_args=True), 1)
    with pytest.raises(ValueError, match="support"):
        F.distortion(torch.full((2, 3), 0.5), dist)
    soft = Independent(Bernoulli(logits=torch.zeros(2, 3), validate_args=False), 1)
    assert_close(F.distortion(torch.full((2, 3), 0.5), soft), torch.full((2,), 3 * math.log(2)))


def test_standard_normal_closed_form_equals_torch_kl_with_gradients() -> None:
    loc = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    log_scale = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    q = Independent(Normal(loc, log_scale.exp()), 1)
    unit = Independent(
        Normal(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)), 1
    )
    ours = F.rate(q, None)
    reference = torch.distributions.kl_divergence(q, unit)
    assert ours.estimator == "analytic"
    assert_close(ours.per_example, reference)
    grads = torch.autograd.grad(ours.per_example.sum(), (loc, log_scale), retain_graph=True)
    ref_grads = torch.autograd.grad(reference.sum(), (loc, log_scale))
    for g, r in zip(grads, ref_grads, strict=True):
        assert_close(g, r)
    z = q.sample((4,))
    mc = F.rate(q, None, z=z, estimator="mc")
    assert_close(mc.per_example, (q.log_prob(z) - unit.log_prob(z)).mean(0))


def test_standard_normal_default_for_other_posteriors_builds_the_marginal() -> None:
    q = Independent(StudentT(4.0, torch.zeros(2, 3), torch.ones(2, 3)), 1)
    z = q.sample()
    result = F.rate(q, None, z=z)
    unit = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
    assert result.estimator == "mc"
    assert_close(result.per_example, q.log_prob(z) - unit.log_prob(z))


def test_batch_mean_reduces_the_first_dim_of_per_dimension_values() -> None:
    values = torch.rand(5, 3, dtype=torch.float64)
    weight = torch.tensor([1.0, 0.0, 2.0, 3.0, 0.5], dtype=torch.float64)
    columns = torch.stack([F.batch_mean(values[:, j], weight) for j in range(3)])
    torch.testing.assert_close(F.batch_mean(values, weight), columns)
    torch.testing.assert_close(F.batch_mean(values), values.sum(0) / 5)
    # without an initialised process group the global mean is the local one
    torch.testing.assert_close(F.global_batch_mean(values, weight), columns)


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
