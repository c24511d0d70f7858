"""rdloss.functional against independent computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    Normal,
    OneHotCategorical,
    StudentT,
)
from torch.testing import assert_close

from rdloss import functional as F


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
