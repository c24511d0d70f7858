from __future__ import annotations

import math

import pytest
import torch
from _catalogue import B, D, Entry, _p, expect_named_error
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal
from torch.testing import assert_close

from rdloss import RateDistortionLoss, diagnostics, helpers
from rdloss.diagnostics import MutualInformation, MutualInformationBounds
from rdloss.diagnostics.functional import (
    aggregate_posterior,
    discrete_mutual_information,
    minibatch_aggregate_posterior,
    pairwise_gaussian_log_prob,
)
from rdloss.marginals import StandardNormal

F64 = torch.float64


def _posteriors(n=60, d=3, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(n, d, generator=g, dtype=dtype)
    scale = 0.2 + torch.rand(n, d, generator=g, dtype=dtype)
    z = loc + scale * torch.randn(n, d, generator=g, dtype=dtype)
    return loc, scale, z


def _std_normal(d, dtype=F64):
    return Independent(Normal(torch.zeros(d, dtype=dtype), torch.ones(d, dtype=dtype)), 1)


def _reference(loc, scale, z, marginal):
    """Brute force with torch.distributions mixtures: (M, N, D) in memory."""
    n, d = loc.shape
    joint = MixtureSameFamily(
        Categorical(logits=torch.zeros(n, dtype=loc.dtype)), Independent(Normal(loc, scale), 1)
    )
    per_dim = MixtureSameFamily(
        Categorical(logits=torch.zeros(d, n, dtype=loc.dtype)), Normal(loc.T, scale.T)
    )
    log_q, log_qj = joint.log_prob(z), per_dim.log_prob(z)
    log_e = Independent(Normal(loc, scale), 1).log_prob(z)
    log_m = marginal.log_prob(z)
    log_mj = marginal.base_dist.log_prob(z)
    return {
        "mutual_information": (log_e - log_q).mean(),
        "marginal_gap": (log_q - log_m).mean(),
        "rate": (log_e - log_m).mean(),
        "total_correlation": (log_q - log_qj.sum(-1)).mean(),
        "dimensionwise_kl": (log_qj - log_mj).sum(-1).mean(),
    }


def test_pairwise_log_prob_matches_torch_distributions():
    loc, scale, z = _posteriors(n=7, d=4)
    ref = Normal(loc, scale).log_prob(z[:, None, :]).sum(-1)
    assert_close(pairwise_gaussian_log_prob(z, loc, scale), ref)
    assert_close(pairwise_gaussian_log_prob(z, loc, scale, centre=False), ref)


def test_pairwise_log_prob_float32_large_offset_needs_centring():
    loc, scale, z = _posteriors(n=50, d=8)
    loc, z = loc + 1e3, z + 1e3
    ref = Normal(loc, scale).log_prob(z[:, None, :]).sum(-1)
    got = pairwise_gaussian_log_prob(z.float(), loc.float(), scale.float())
    assert_close(got.double(), ref, rtol=1e-4, atol=1e-2)
    uncentred = pairwise_gaussian_log_prob(z.float(), loc.float(), scale.float(), centre=False)
    assert (uncentred.double() - ref).abs().max() > 1.0  # the pitfall centring avoids


def test_aggregate_matches_brute_force_reference():
    loc, scale, z = _posteriors()
    marginal = _std_normal(3)
    out = aggregate_posterior(loc, scale=scale, z=z, marginal=marginal, tc_samples=60)
    for name, value in _reference(loc, scale, z, marginal).items():
        assert_close(getattr(out, name), value, msg=name)
    assert out.num_points == 60 and out.num_samples == 60 and out.tc_samples == 60
    assert out.saturation == math.log(60)
    assert_close(out.rate, out.mutual_information + out.marginal_gap)
    # With every point in the subsample, TC + dimension-wise KL is exactly the gap.
    assert_close(out.total_correlation + out.dimensionwise_kl, out.marginal_gap)


def test_chunking_and_logvar_do_not_change_the_result():
    loc, scale, z = _posteriors()
    a = aggregate_posterior(loc, scale=scale, z=z, marginal=StandardNormal(3).double())
    b = aggregate_posterior(
        loc, logvar=2 * scale.log(), z=z, marginal=StandardNormal(3).double(), chunk_size=7
    )
    assert_close(tuple(a), tuple(b))


def test_float32_large_offset_agrees_with_float64():
    loc, scale, z = _posteriors(n=400, d=6)
    loc, z = loc + 1e3, z + 1e3
    exact = aggregate_posterior(loc, scale=scale, z=z, tc_samples=0)
    f32 = aggregate_posterior(loc.float(), scale=scale.float(), z=z.float(), tc_samples=0)
    assert_close(f32.mutual_information.double(), exact.mutual_information, atol=1e-3, rtol=0)


def test_saturation_and_collapse():
    n = 50
    separated = torch.zeros(n, 2, dtype=F64)
    separated[:, 0] = torch.arange(n, dtype=F64) * 100
    out = aggregate_posterior(separated, scale=torch.full_like(separated, 0.01), tc_samples=0)
    assert_close(out.mutual_information, torch.tensor(math.log(n), dtype=F64))
    assert out.mutual_information <= out.saturation + 1e-12
    collapsed = aggregate_posterior(
        torch.zeros(n, 2, dtype=F64), scale=torch.ones(n, 2, dtype=F64), marginal=_std_normal(2)
    )
    assert_close(collapsed.mutual_information, torch.tensor(0.0, dtype=F64))
    assert_close(collapsed.marginal_gap, torch.tensor(0.0, dtype=F64))
    assert_close(collapsed.total_correlation, torch.tensor(0.0, dtype=F64))
    assert collapsed.total_correlation is not None and collapsed.dimensionwise_kl is not None


def test_linear_gaussian_mutual_information_matches_closed_form():
    # z ~ N(0, I_2), x | z ~ N(z, I): exact posterior N(x/2, 1/2), I(x; z) = log 2.
    g = torch.Generator().manual_seed(3)
    n, d = 3000, 2
    x = math.sqrt(2.0) * torch.randn(n, d, generator=g, dtype=F64)
    loc, scale = x / 2, torch.full((n, d), math.sqrt(0.5), dtype=F64)
    out = aggregate_posterior(
        loc, scale=scale, marginal=_std_normal(d), tc_samples=500, generator=g
    )
    truth = 0.5 * d * math.log(2.0)
    # Stated error: Monte Carlo (4 standard errors) plus the O(1/N) finite-mixture bias.
    tol = 4 * out.mutual_information_stderr.item() + 0.01
    assert abs(out.mutual_information.item() - truth) < tol
    assert out.mutual_information_stderr.item() < 0.03
    # q(z) is the prior here, so the gap, TC and dimension-wise KL are (close to) zero.
    assert abs(out.marginal_gap.item()) < tol
    assert abs(out.total_correlation.item()) < 0.05
    assert abs(out.dimensionwise_kl.item()) < 0.05
    analytic_rate = 0.5 * d * (0.5 - 1 - math.log(0.5)) + 0.5 * (loc**2).sum(-1).mean()
    assert abs(out.rate.item() - analytic_rate.item()) < tol


def _discrete_model():
    p_x = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    enc = torch.tensor(
        [[0.7, 0.1, 0.1, 0.1], [0.1, 0.6, 0.2, 0.1], [0.05, 0.05, 0.3, 0.6]], dtype=F64
    )
    dec = torch.tensor(
        [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.1, 0.2, 0.7]], dtype=F64
    )
    marginal = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=F64)
    return p_x, enc, dec, marginal


def _brute_force(p_x, enc, dec, marginal):
    joint = p_x[:, None] * enc  # p(x, z)
    q = joint.sum(0)
    mi = sum(
        joint[i, k] * math.log(joint[i, k] / (p_x[i] * q[k])) for i in range(3) for k in range(4)
    )
    rate = sum(joint[i, k] * math.log(enc[i, k] / marginal[k]) for i in range(3) for k in range(4))
    dist = sum(-joint[i, k] * math.log(dec[k, i]) for i in range(3) for k in range(4))
    entropy = -sum(p * math.log(p) for p in p_x.tolist())
    return float(mi), float(rate), float(dist), entropy


@pytest.mark.parametrize("tight", [False, True])
def test_discrete_model_sandwich_and_surgery_are_exact(tight):
    p_x, enc, dec, marginal = _discrete_model()
    if tight:  # optimal decoder p_e(x|z) and marginal q(z): both bounds are equalities
        joint = p_x[:, None] * enc
        marginal = joint.sum(0)
        dec = (joint / marginal).T
    mi, rate, dist, entropy = _brute_force(p_x, enc, dec, marginal)
    out = discrete_mutual_information(enc, marginal, data_weights=p_x * 7)
    assert_close(out.mutual_information.item(), mi, rtol=0, atol=1e-12)
    assert_close(out.rate.item(), rate, rtol=0, atol=1e-12)
    assert_close(out.rate, out.mutual_information + out.marginal_gap, rtol=0, atol=1e-12)

    # The same numbers through the loss (enumerated latent, data weights) and the metric.
    loss_fn = RateDistortionLoss(Categorical(probs=marginal))
    x = torch.arange(3)
    res = loss_fn(
        x,
        posterior=Categorical(probs=enc),
        decoder=lambda z: Categorical(probs=dec[z]),
        samples="enumerate",
        weight=p_x,
    )
    assert_close(res.rate.item(), rate, rtol=0, atol=1e-12)
    assert_close(res.distortion.item(), dist, rtol=0, atol=1e-12)
    bounds = MutualInformationBounds(data_entropy=entropy).set_dtype(F64)
    reps = torch.tensor([5, 3, 2])  # p_x as counts of a 10-example dataset
    bounds.update(
        res.rate_per_example.repeat_interleave(reps),
        res.distortion_per_example.repeat_interleave(reps),
    )
    b = bounds.compute()
    assert b.lower.item() <= mi + 1e-12 <= b.upper.item() + 2e-12
    assert_close(b.lower.item(), entropy - dist, rtol=0, atol=1e-12)
    assert_close(b.upper.item(), rate, rtol=0, atol=1e-12)
    if tight:
        assert_close(b.lower.item(), mi, rtol=0, atol=1e-12)
        assert_close(b.upper.item(), mi, rtol=0, atol=1e-12)
    else:
        assert b.lower.item() < mi - 0.01 and mi < b.upper.item() - 0.01


def test_minibatch_estimator_saturates_at_log_batch():
    loc, scale, z = _posteriors(n=32)
    out = minibatch_aggregate_posterior(loc, scale=scale, z=z, marginal=_std_normal(3))
    full = aggregate_posterior(loc, scale=scale, z=z, marginal=_std_normal(3), tc_samples=32)
    assert_close(tuple(out), tuple(full))
    assert out.saturation == math.log(32)


def test_metric_streaming_equals_single_pass_and_reset():
    loc, scale, _ = _posteriors(n=90)
    metric = MutualInformation(_std_normal(3), tc_samples=50, seed=5)
    for parts in ([90], [10, 80], [30, 30, 30]):
        metric.reset()
        for lo, sc in zip(loc.split(parts), scale.split(parts), strict=True):
            metric.update(helpers.normal(lo, scale=sc))
        g = torch.Generator().manual_seed(5)
        ref = aggregate_posterior(
            loc, scale=scale, marginal=_std_normal(3), tc_samples=50, generator=g
        )
        assert_close(tuple(metric.compute()), tuple(ref))


def test_metric_state_dict_round_trip_and_tensor_update():
    loc, scale, _ = _posteriors(n=40)
    first = MutualInformation(output="mutual_information", tc_samples=0)
    first.update(loc[:25], logvar=2 * scale[:25].log())
    restored = MutualInformation(output="mutual_information", tc_samples=0)
    restored.load_state_dict(first.state_dict())
    for m in (first, restored):
        m.update(loc[25:], scale[25:])
    assert_close(first.compute(), restored.compute())
    assert restored.compute().ndim == 0


def test_forward_gives_the_minibatch_estimate():
    loc, scale, _ = _posteriors(n=16)
    metric = MutualInformation(tc_samples=0)
    batch_value = metric(loc, scale)
    assert batch_value.saturation == math.log(16)
    metric(loc, scale)
    assert metric.compute().num_points == 32


def test_validation_errors():
    loc, scale, _ = _posteriors(n=4)
    with pytest.raises(ValueError, match="exactly one of scale= or logvar="):
        aggregate_posterior(loc)
    with pytest.raises(ValueError, match="scale must have loc's shape"):
        aggregate_posterior(loc, scale=scale[:2])
    with pytest.raises(ValueError, match="tc_samples"):
        aggregate_posterior(loc, scale=scale, tc_samples=-1)
    with pytest.raises(ValueError, match="marginal must describe"):
        aggregate_posterior(loc, scale=scale, marginal=_std_normal(5))
    metric = MutualInformation()
    with pytest.raises(TypeError, match="diagonal-Gaussian"):
        metric.update(Categorical(probs=torch.ones(4, 3) / 3))
    with pytest.raises(ValueError, match="exactly one of scale= or logvar="):
        metric.update(loc)
    with pytest.raises(TypeError, match="marginal must be"):
        MutualInformation(marginal="normal")
    with pytest.raises(ValueError, match="output='marginal_gap' needs a marginal"):
        MutualInformation(output="marginal_gap")


# --- bad inputs: mutual information -------------------------------------------------------
# The catalogue's part for this module (tests/_catalogue.py); docs/errors.md lists its keys.


def _mi_two_sizes() -> None:
    metric = diagnostics.MutualInformation()
    metric.update(torch.zeros(B, 3), logvar=torch.zeros(B, 3))
    metric.update(torch.zeros(B, 2), logvar=torch.zeros(B, 2))


BAD_INPUTS: dict[str, Entry] = {
    "mutual information: latent size changes between updates": (
        _mi_two_sizes,
        ValueError,
        r"posterior has 2 latent dimensions but earlier batches had 3",
    ),
    "mutual information: negative posterior scale": (
        lambda: diagnostics.functional.aggregate_posterior(
            torch.randn(5, 2), scale=-torch.ones(5, 2)
        ),
        ValueError,
        r"scale must be positive and finite, got values in \[-1, -1\]",
    ),
    "mutual information: NaN posterior mean": (
        lambda: diagnostics.functional.aggregate_posterior(
            torch.full((5, 2), float("nan")), scale=torch.ones(5, 2)
        ),
        ValueError,
        r"non-finite values \(NaN or inf\) in loc",
    ),
    "mutual information: both scale and logvar": (
        lambda: diagnostics.functional.aggregate_posterior(
            torch.zeros(5, 2), scale=torch.ones(5, 2), logvar=torch.zeros(5, 2)
        ),
        ValueError,
        r"give exactly one of scale= or logvar=",
    ),
    "mutual information: z of another shape": (
        lambda: diagnostics.functional.minibatch_aggregate_posterior(
            torch.zeros(5, 2), scale=torch.ones(5, 2), z=torch.zeros(5, 3)
        ),
        ValueError,
        r"z must have loc's shape \(5, 2\), got \(5, 3\)",
    ),
    "mutual information: metric with a string marginal": (
        lambda: diagnostics.MutualInformation("normal"),  # type: ignore[arg-type]
        TypeError,
        r"marginal must be a marginal module, a Distribution or None, got str",
    ),
    "mutual information: metric with zero chunk_size": (
        lambda: diagnostics.MutualInformation(chunk_size=0),
        ValueError,
        r"chunk_size must be >= 1, got 0",
    ),
    "mutual information: metric with a text seed": (
        lambda: diagnostics.MutualInformation(seed="0"),  # type: ignore[arg-type]
        ValueError,
        r"seed must be an int in \[0, 2\*\*64\), got '0'",
    ),
    "mutual information: metric update with a Bernoulli posterior": (
        lambda: diagnostics.MutualInformation().update(_p()),
        TypeError,
        r"MutualInformation needs diagonal-Gaussian posteriors "
        r".*got Independent over (Checked)?Bernoulli",
    ),
    "mutual information: metric update with a zero scale": (
        lambda: diagnostics.MutualInformation().update(torch.zeros(B, D), torch.zeros(B, D)),
        ValueError,
        r"scale must be positive and finite, got values in \[0, 0\]",
    ),
    "mutual information: pairwise log-density of mismatched sizes": (
        lambda: diagnostics.functional.pairwise_gaussian_log_prob(
            torch.zeros(3, 2), torch.zeros(4, 3), torch.ones(4, 3)
        ),
        ValueError,
        r"expected z \(M, D\), loc \(N, D\), scale \(N, D\) with the same D, got \(3, 2\), "
        r"\(4, 3\), \(4, 3\)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_named_error(case: str) -> None:
    expect_named_error(BAD_INPUTS[case])
