from __future__ import annotations

import math

import pytest
import torch
from _catalogue import B, D, Entry, P, _p, _q, _x, expect_named_error
from torch.distributions import Normal
from torch.testing import assert_close

from rdloss import RateDistortionLoss, diagnostics, helpers
from rdloss.diagnostics import MutualInformation, importance_weighted_bound
from rdloss.diagnostics import functional as DF

F64 = torch.float64


def test_rate_distortion_means_and_units():
    rate = torch.tensor([1.0, 2.0, 6.0], dtype=F64)
    dist = torch.tensor([10.0, 20.0, 30.0], dtype=F64)
    out = DF.rate_distortion(rate, dist, data_dims=10)
    assert_close(out.rate, torch.tensor(3.0, dtype=F64))
    assert_close(out.distortion, torch.tensor(20.0, dtype=F64))
    assert_close(out.elbo, torch.tensor(-23.0, dtype=F64))
    assert_close(out.rate_bits.item(), 3.0 / math.log(2))
    assert_close(out.distortion_bits.item(), 20.0 / math.log(2))
    assert_close(out.bits_per_dim.item(), 23.0 / (10 * math.log(2)))
    assert DF.rate_distortion(rate, dist).bits_per_dim is None
    with pytest.raises(ValueError, match="same shape"):
        DF.rate_distortion(rate, dist[:2])


def test_bounds_with_and_without_entropy():
    rate, dist = torch.tensor([1.0, 3.0]), torch.tensor([4.0, 6.0])
    b = DF.mutual_information_bounds(rate, dist, data_entropy=6.5)
    assert_close(b.lower, torch.tensor(1.5))
    assert_close(b.upper, torch.tensor(2.0))
    assert_close(b.entropy_upper, torch.tensor(7.0))
    assert DF.mutual_information_bounds(rate, dist).lower is None
    with pytest.raises(ValueError, match="data_entropy must be >= 0"):
        DF.mutual_information_bounds(rate, dist, data_entropy=-1.0)
    # H above -ELBO = R + D (an upper bound on H): lower > upper, said out loud.
    with pytest.warns(UserWarning, match=r"lower bound H - D = 2\.5 exceeds the upper bound R = 2"):
        DF.mutual_information_bounds(rate, dist, data_entropy=7.5)


def test_active_units_against_torch_var():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(100, 4, generator=g) * torch.tensor([1.0, 0.2, 0.05, 0.0])
    out = DF.active_units(mean, threshold=0.01)
    assert_close(out.variances, torch.var(mean, dim=0))
    assert out.num_active.item() == 2
    assert out.active.tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="N >= 2"):
        DF.active_units(mean[:1])


def test_rate_per_dimension_sums_to_the_rate():
    torch.manual_seed(0)
    q = helpers.normal(torch.randn(8, 5), logvar=torch.randn(8, 5))
    x = torch.randn(8, 3)
    out = RateDistortionLoss()(
        x, posterior=q, likelihood=helpers.normal(torch.zeros(8, 3), scale=1.0)
    )
    per_dim = DF.rate_per_dimension(out.rate_per_dimension)
    assert per_dim.shape == (5,)
    assert_close(per_dim.sum(), out.rate)
    ref = 0.5 * (q.mean**2 + q.variance - q.variance.log() - 1).mean(0)
    assert_close(per_dim, ref)


def test_discrete_mutual_information_identities():
    enc = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]], dtype=F64)
    m = torch.tensor([0.2, 0.3, 0.5], dtype=F64)
    out = DF.discrete_mutual_information(enc, m)
    q = torch.tensor([0.25, 0.5, 0.25], dtype=F64)
    assert_close(out.aggregate, q)
    mi = 0.5 * 2 * (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.5))
    assert_close(out.mutual_information.item(), mi)
    assert_close(out.rate, out.mutual_information + out.marginal_gap)
    default = DF.discrete_mutual_information(enc)
    assert_close(default.marginal_gap.item(), 0.0)
    with pytest.raises(ValueError, match="marginal_probs must have shape"):
        DF.discrete_mutual_information(enc, m[:2])


# IWAE on a linear-Gaussian model: z ~ N(0, 1), x | z ~ N(a z, s^2)  =>  x ~ N(0, a^2 + s^2).
A, S = 2.0, 0.5


def _model(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = math.sqrt(A**2 + S**2) * torch.randn(n, 1, generator=g, dtype=F64)
    log_px = Normal(0.0, math.sqrt(A**2 + S**2)).log_prob(x).squeeze(1)
    post_var = S**2 / (A**2 + S**2)
    post_mean = A * x / (A**2 + S**2)
    return x, log_px, post_mean, post_var


def _decoder(z):
    return helpers.normal(A * z, scale=S)


def _elbo(x, mu, sigma):
    # E_q log N(x; a z, s^2) - KL(q || N(0, 1)), closed form
    expected_sq = (x - A * mu) ** 2 + A**2 * sigma**2
    rec = -0.5 * expected_sq / S**2 - math.log(S) - 0.5 * math.log(2 * math.pi)
    kl = 0.5 * (mu**2 + sigma**2 - 1) - torch.log(torch.as_tensor(sigma, dtype=F64))
    return (rec - kl).squeeze(1)


def test_iwae_is_exact_with_the_true_posterior():
    torch.manual_seed(0)
    x, log_px, mu, var = _model(n=20)
    q = helpers.normal(mu, scale=math.sqrt(var))
    assert_close(importance_weighted_bound(x, q, _decoder, k=7, chunk_size=3), log_px)


def test_iwae_bounds_the_elbo_increases_with_k_and_converges():
    x, log_px, mu, var = _model(n=300)
    mu_q, sigma_q = mu + 0.3, 0.6 * math.sqrt(var)  # too narrow: slow convergence in k
    q = helpers.normal(mu_q, scale=sigma_q)
    elbo = _elbo(x, mu_q, sigma_q).mean().item()
    truth = log_px.mean().item()
    gap = truth - elbo
    assert gap > 0.5
    torch.manual_seed(1)
    means = {
        k: importance_weighted_bound(x, q, _decoder, k=k, chunk_size=1000).mean().item()
        for k in (1, 10, 100, 3000)
    }
    assert abs(means[1] - elbo) < 0.1 * gap  # k = 1 is a one-sample ELBO
    assert elbo < means[10] < means[100] < means[3000] < truth
    assert truth - means[3000] < 0.1 * gap


def test_iwae_approaches_the_true_log_likelihood():
    x, log_px, mu, var = _model()
    q = helpers.normal(mu + 0.3, scale=1.5 * math.sqrt(var))  # over-dispersed proposal
    torch.manual_seed(2)
    iw = importance_weighted_bound(x, q, _decoder, k=2000, chunk_size=512)
    assert abs(iw.mean().item() - log_px.mean().item()) < 0.01
    assert_close(iw, log_px, atol=0.1, rtol=0)


def test_iwae_matches_manual_single_chunk_and_validates():
    x, _, mu, var = _model(n=5)
    q = helpers.normal(mu, scale=2 * math.sqrt(var))
    torch.manual_seed(3)
    got = importance_weighted_bound(x, q, _decoder, k=4, chunk_size=4)
    torch.manual_seed(3)
    z = q.sample((4,))
    log_w = (
        Normal(A * z, S).log_prob(x).sum(-1) + Normal(0.0, 1.0).log_prob(z).sum(-1) - q.log_prob(z)
    )
    assert_close(got, log_w.logsumexp(0) - math.log(4))
    with pytest.raises(ValueError, match="k must be >= 1"):
        importance_weighted_bound(x, q, _decoder, k=0)
    with pytest.raises(ValueError, match="batch size"):
        importance_weighted_bound(x[:3], q, _decoder)
    with pytest.raises(TypeError, match="decoder must be callable"):
        importance_weighted_bound(x, q, None)


def test_iwae_takes_a_flow_posterior_without_a_mean() -> None:
    zuko = pytest.importorskip("zuko")
    torch.manual_seed(0)
    x = torch.randn(3, 2)
    q = zuko.flows.MAF(2, 2)(x)  # a NormalizingFlow: sample and log_prob, no mean
    torch.manual_seed(4)
    got = importance_weighted_bound(x, q, lambda z: helpers.normal(z, scale=1.0), k=6)
    torch.manual_seed(4)
    z = q.sample((6,))
    log_w = Normal(z, 1.0).log_prob(x).sum(-1) + Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert_close(got, (log_w - q.log_prob(z)).logsumexp(0) - math.log(6))


class _NoSample(Normal):
    def sample(self, sample_shape=torch.Size()):  # noqa: B008 (torch's signature)
        raise NotImplementedError


class _NoLogProb(Normal):
    def log_prob(self, value):
        raise NotImplementedError


@pytest.mark.parametrize(
    ("posterior", "match"),
    [
        (_NoSample(torch.zeros(3, 1), 1.0), r"_NoSample.*sample\(\).*pass a posterior"),
        (_NoLogProb(torch.zeros(3, 1), 1.0), r"_NoLogProb.*log_prob\(\).*pass a posterior"),
    ],
)
def test_iwae_names_the_missing_method(posterior, match) -> None:
    with pytest.raises(TypeError, match=match):
        importance_weighted_bound(torch.zeros(3, 1), posterior, _decoder, k=2)


def test_integer_and_bool_inputs_count_as_their_float_values() -> None:
    # The metrics took them; the functions raised torch's "could not infer output dtype".
    ints = torch.tensor([[1, 0], [3, 0]])
    assert_close(DF.active_units(ints).variances, torch.tensor([2.0, 0.0]))
    assert_close(DF.active_units(ints.bool()).variances, torch.tensor([0.0, 0.0]))
    assert_close(DF.rate_per_dimension(ints), torch.tensor([2.0, 0.0]))
    b = DF.mutual_information_bounds(torch.tensor([1, 2]), torch.tensor([3, 4]), 1.0)
    assert_close(b.upper, torch.tensor(1.5))
    assert_close(
        DF.rate_distortion(torch.tensor([1, 2]), torch.tensor([3, 4])).elbo, torch.tensor(-5.0)
    )


def test_posteriors_without_dimensions_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"loc must have shape \(N, D\) with D >= 1"):
        DF.aggregate_posterior(torch.zeros(4, 0), scale=torch.ones(4, 0))
    with pytest.raises(ValueError, match=r"D >= 1"):
        MutualInformation().update(torch.zeros(3, 0), torch.ones(3, 0))


# --- bad inputs: functional diagnostics and IWAE ------------------------------------------
# The catalogue's part for this module (tests/_catalogue.py); docs/errors.md lists its keys.


BAD_INPUTS: dict[str, Entry] = {
    "diagnostics: rate and distortion of different shapes": (
        lambda: diagnostics.functional.rate_distortion(torch.ones(3), torch.ones(4)),
        ValueError,
        r"rate and distortion must have the same shape, got \(3,\) and \(4,\)",
    ),
    "diagnostics: empty rate": (
        lambda: diagnostics.functional.rate_distortion(torch.ones(0), torch.ones(0)),
        ValueError,
        r"rate has no examples \(shape \(0,\)\)",
    ),
    "diagnostics: zero data_dims": (
        lambda: diagnostics.functional.rate_distortion(torch.ones(3), torch.ones(3), data_dims=0),
        ValueError,
        r"data_dims must be >= 1, got 0",
    ),
    "diagnostics: negative data entropy": (
        lambda: diagnostics.functional.mutual_information_bounds(
            torch.tensor(2.0), torch.tensor(5.0), -1.0
        ),
        ValueError,
        r"data_entropy must be >= 0, got -1.0",
    ),
    "diagnostics: active units of one example": (
        lambda: diagnostics.functional.active_units(torch.zeros(1, D)),
        ValueError,
        r"posterior_mean must have shape \(N, D\) with N >= 2, got \(1, 3\)",
    ),
    "diagnostics: negative activity threshold": (
        lambda: diagnostics.functional.active_units(torch.randn(B, D), threshold=-0.1),
        ValueError,
        r"threshold must be >= 0, got -0.1",
    ),
    "diagnostics: 3-D rate per dimension": (
        lambda: diagnostics.functional.rate_per_dimension(torch.zeros(2, 3, 4)),
        ValueError,
        r"rate_per_dimension must have shape \(B, D\), got \(2, 3, 4\)",
    ),
    "diagnostics: posterior probabilities that do not sum to one": (
        lambda: diagnostics.functional.discrete_mutual_information(torch.ones(2, 2)),
        ValueError,
        r"posterior_probs must be non-negative and sum to 1 over dim 1, got min 1 and sums "
        r"\[2.0, 2.0\]",
    ),
    "diagnostics: negative data weights": (
        lambda: diagnostics.functional.discrete_mutual_information(
            torch.eye(2), data_weights=torch.tensor([1.0, -1.0])
        ),
        ValueError,
        r"data_weights must be non-negative with a positive sum, got min -1 and sum 0",
    ),
    "diagnostics: marginal probabilities of another size": (
        lambda: diagnostics.functional.discrete_mutual_information(
            torch.eye(2), torch.full((3,), 1 / 3)
        ),
        ValueError,
        r"marginal_probs must have shape \(K,\) = \(2,\), got \(3,\)",
    ),
    "iwae: zero importance samples": (
        lambda: diagnostics.importance_weighted_bound(_x(), _q(), lambda z: _p(len(z)), k=0),
        ValueError,
        r"k must be >= 1, got 0",
    ),
    "iwae: decoder returning logits": (
        lambda: diagnostics.importance_weighted_bound(
            _x(),
            _q(),
            lambda z: torch.zeros(len(z), P),  # type: ignore[arg-type, return-value]
            k=2,
        ),
        TypeError,
        r"decoder must return a torch.distributions.Distribution, got Tensor",
    ),
    "iwae: posterior batch differs from x": (
        lambda: diagnostics.importance_weighted_bound(_x(), _q(batch=3), lambda z: _p(len(z))),
        ValueError,
        r"posterior batch size 3 does not match x's batch size 4",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_named_error(case: str) -> None:
    expect_named_error(BAD_INPUTS[case])
