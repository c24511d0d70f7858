"""rdloss.helpers build the distributions existing code means."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as tnf
from _catalogue import B, D, Entry, P, expect_named_error
from torch.testing import assert_close

from rdloss import RateDistortionLoss, helpers, marginals


def test_normal_from_logvar_and_scale_agree() -> None:
    mu = torch.randn(4, 3, dtype=torch.float64)
    logvar = torch.randn(4, 3, dtype=torch.float64)
    a = helpers.normal(mu, logvar=logvar)
    b = helpers.normal(mu, scale=torch.exp(0.5 * logvar))
    z = torch.randn(4, 3, dtype=torch.float64)
    assert a.batch_shape == (4,) and a.event_shape == (3,)
    assert_close(a.log_prob(z), b.log_prob(z))
    by_hand = -0.5 * (z - mu) ** 2 / logvar.exp() - 0.5 * logvar - 0.5 * math.log(2 * math.pi)
    assert_close(a.log_prob(z), by_hand.sum(-1))


def test_normal_fixed_and_learned_scale_for_images() -> None:
    mean = torch.randn(2, 3, 4, 4)
    fixed = helpers.normal(mean, scale=0.1)
    assert fixed.batch_shape == (2,) and fixed.event_shape == (3, 4, 4)
    per_channel = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)
    learned = helpers.normal(mean, scale=per_channel)
    assert learned.event_shape == (3, 4, 4)
    assert_close(learned.base_dist.scale[:, 1], torch.full((2, 4, 4), 0.2))


def test_bernoulli_matches_bce_with_logits() -> None:
    logits = torch.randn(5, 1, 6, 6, dtype=torch.float64)
    x = torch.randint(0, 2, (5, 1, 6, 6)).double()
    dist = helpers.bernoulli(logits=logits)
    expected = tnf.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
    assert_close(-dist.log_prob(x), expected)
    probs = helpers.bernoulli(probs=torch.sigmoid(logits))
    assert_close(probs.log_prob(x), dist.log_prob(x))


def test_bernoulli_soft_targets_with_validation_off() -> None:
    logits = torch.randn(3, 8, dtype=torch.float64)
    x = torch.rand(3, 8, dtype=torch.float64)
    dist = helpers.bernoulli(logits=logits, validate_args=False)
    expected = tnf.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    assert_close(-dist.log_prob(x), expected)
    with pytest.raises(ValueError):
        helpers.bernoulli(logits=logits, validate_args=True).log_prob(x)


def test_categorical_pixels_category_axis() -> None:
    logits = torch.randn(2, 256, 3, 4, 4, dtype=torch.float64)
    x = torch.randint(0, 256, (2, 3, 4, 4))
    dist = helpers.categorical(logits, category_dim=1)
    assert dist.batch_shape == (2,) and dist.event_shape == (3, 4, 4)
    expected = tnf.cross_entropy(logits, x, reduction="none").sum((1, 2, 3))
    assert_close(-dist.log_prob(x), expected)


def test_half_precision_is_computed_in_float32() -> None:
    mu = torch.zeros(2, 3, dtype=torch.float16)
    logvar = torch.full((2, 3), 40.0, dtype=torch.float16)  # exp(20) overflows float16
    dist = helpers.normal(mu, logvar=logvar)
    assert dist.base_dist.scale.dtype == torch.float32
    assert torch.isfinite(dist.base_dist.scale).all()


def test_event_dims_override() -> None:
    dist = helpers.normal(torch.zeros(4, 5, 6), scale=1.0, event_dims=1)
    assert dist.batch_shape == (4, 5) and dist.event_shape == (6,)
    scalar = helpers.normal(torch.zeros(4), scale=1.0)
    assert scalar.batch_shape == (4,) and scalar.event_shape == ()


@pytest.mark.parametrize("logvar", [-95.0, 89.0])
def test_logvar_whose_variance_leaves_float32_is_an_error(logvar: float) -> None:
    # Just outside [log(tiny), log(max)] of float32: the rate's gradient (DiagonalGaussian
    # marginal, below) or the rate itself (above) would be infinite, silently.
    # Checked when the loss uses the posterior (fused with its own checks), or at once when
    # asked for with validate_args=True.
    q = helpers.normal(torch.zeros(2, 3), logvar=torch.full((2, 3), logvar))
    likelihood = helpers.bernoulli(logits=torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"logvar must lie in \[-87\.3, 88\.7\]"):
        RateDistortionLoss()(torch.zeros(2, 3), posterior=q, likelihood=likelihood)
    with pytest.raises(ValueError, match=r"logvar must lie in \[-87\.3, 88\.7\]"):
        helpers.normal(torch.zeros(2, 3), logvar=torch.full((2, 3), logvar), validate_args=True)
    # float64 holds these variances; the check is off with validate_args=False.
    q64 = helpers.normal(torch.zeros(2, 3).double(), logvar=torch.full((2, 3), logvar).double())
    RateDistortionLoss()(torch.zeros(2, 3).double(), posterior=q64, likelihood=likelihood)
    off = helpers.normal(torch.zeros(2, 3), logvar=torch.full((2, 3), logvar), validate_args=False)
    RateDistortionLoss(validate_args=False)(torch.zeros(2, 3), posterior=off, likelihood=likelihood)


@pytest.mark.parametrize("bad", [None, "a", "b", "c", "a and c"])
def test_range_checks_of_many_groups_decide_like_one_check_each(bad: str | None) -> None:
    # The loss compares the log-variance extremes of all groups of one dtype together; the
    # verdict and the error reported (the first failing group, in call order) must be those
    # of checking each group alone. Group "b" is float64: -95 is valid there, and it must
    # not be compared against float32's bounds (nor pass an invalid float32 group).
    def group(name: str, dtype: torch.dtype) -> torch.distributions.Distribution:
        logvar = torch.zeros(2, 3, dtype=dtype)
        if bad is not None and name in bad:
            logvar[1, 2] = -95.0 if name != "c" else 89.0
        return helpers.normal(torch.zeros(2, 3, dtype=dtype), logvar=logvar)

    posterior = {"a": group("a", torch.float32), "b": group("b", torch.float64)}
    posterior["c"] = group("c", torch.float32)
    call = lambda: RateDistortionLoss()(posterior=posterior)  # noqa: E731
    if bad in (None, "b"):
        assert torch.isfinite(call().loss)
        return
    first = bad[0]  # the first failing group in call order, named in the message
    largest = "0.0" if first == "a" else "89.0"
    smallest = "-95.0" if first == "a" else "0.0"
    message = rf"^posterior\['{first}'\]: logvar .* got values in \[{smallest}, {largest}\]"
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("bad", [None, "probs", "log_scale"])
def test_probs_and_log_scale_ranges_of_one_call_are_decided_apart(bad: str | None) -> None:
    # Range checks with other bounds (probs in [0, 1], log_scale in float32's range) are
    # compared separately even where several of a kind are merged.
    probs = torch.rand(4, 5, generator=torch.Generator().manual_seed(0))
    log_scale = torch.zeros(4, 3)
    if bad == "probs":
        probs[0, 0] = 1.5
    if bad == "log_scale":
        log_scale[0, 0] = 50.0
    posterior = {k: helpers.normal(torch.zeros(4, 3), log_scale=log_scale) for k in "ab"}
    likelihood = helpers.bernoulli(probs=probs)
    x = torch.randint(0, 2, (4, 5)).float()
    call = lambda: RateDistortionLoss()(x, posterior=posterior, likelihood=likelihood)  # noqa: E731
    if bad is None:
        assert torch.isfinite(call().loss)
    else:
        with pytest.raises(ValueError, match=rf"^(posterior\['a'\]: )?{bad} must lie in"):
            call()


def test_a_failing_distribution_check_names_the_argument_it_came_from() -> None:
    # Which of a call's posteriors and priors holds the bad log-variance: the message
    # starts with it (a grouped call names the group).
    bad = helpers.normal(torch.zeros(2, 3), logvar=torch.full((2, 3), -95.0))
    good = helpers.normal(torch.zeros(2, 3), logvar=torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"^posterior: logvar must lie"):
        RateDistortionLoss()(posterior=bad)
    with pytest.raises(ValueError, match=r"^prior: logvar must lie"):
        RateDistortionLoss()(posterior=good, prior=bad)
    with pytest.raises(ValueError, match=r"^prior\['top'\]: logvar must lie"):
        RateDistortionLoss()(posterior={"top": good, "z": good}, prior={"top": bad})


@pytest.mark.parametrize("log_scale", [-47.5, 44.5])
def test_log_scale_whose_variance_leaves_float32_is_an_error_naming_it(log_scale: float) -> None:
    # The same range as logvar's, halved: exp(2 * log_scale) must be a finite normal float32.
    def normal(value: float, **options: bool) -> torch.distributions.Distribution:
        return helpers.normal(torch.zeros(2, 3), log_scale=torch.full((2, 3), value), **options)

    message = r"log_scale must lie in \[-43\.7, 44\.4\] for torch\.float32"
    with pytest.raises(ValueError, match=message):
        RateDistortionLoss()(posterior=normal(log_scale))
    with pytest.raises(ValueError, match=message):
        normal(log_scale, validate_args=True)
    # Just inside the bounds (halved exactly): accepted, as 2 * log_scale is as logvar.
    normal(-43.6 if log_scale < 0 else 44.3, validate_args=True)


@pytest.mark.parametrize("logvar", [-87.0, 80.0])
def test_logvar_at_the_float32_edges_gives_finite_rate_and_gradient(logvar: float) -> None:
    raw = torch.full((2, 4), logvar, requires_grad=True)
    loss_fn = RateDistortionLoss(marginals.DiagonalGaussian(4))
    x = torch.zeros(2, 3)
    q = helpers.normal(torch.zeros(2, 4), logvar=raw)
    out = loss_fn(x, posterior=q, likelihood=helpers.bernoulli(logits=torch.zeros(2, 3)))
    out.loss.backward()
    assert torch.isfinite(out.rate) and torch.isfinite(raw.grad).all()
    # d KL / d logvar = (exp(logvar) - 1) / 2 against N(0, 1), per dim, over a batch of 2
    want = torch.full((2, 4), (math.exp(logvar) - 1) / 4)
    torch.testing.assert_close(raw.grad, want, rtol=1e-5, atol=1e-6)


def test_laplace_is_the_l1_density_written_by_hand() -> None:
    torch.manual_seed(0)
    mu, x = torch.randn(4, 2, 5, dtype=torch.float64), torch.randn(4, 2, 5, dtype=torch.float64)
    b = torch.rand(2, 1, dtype=torch.float64) + 0.1  # per-channel scale, broadcast
    dist = helpers.laplace(mu, scale=b)
    assert dist.batch_shape == (4,) and dist.event_shape == (2, 5)
    by_hand = ((x - mu).abs() / b + torch.log(2 * b)).sum((1, 2))
    assert_close(-dist.log_prob(x), by_hand)
    assert_close(helpers.laplace(mu, log_scale=b.log()).log_prob(x), dist.log_prob(x))
    fixed = helpers.laplace(mu, scale=0.5)
    l1 = tnf.l1_loss(mu, x, reduction="none").sum((1, 2))
    assert_close(-fixed.log_prob(x), l1 / 0.5 + 10 * math.log(2 * 0.5))


def test_laplace_maps_the_latent_diffusion_reconstruction_loss() -> None:
    # CompVis/stable-diffusion LPIPSWithDiscriminator (without LPIPS): a learned scalar
    # logvar, nll = |x - x_hat| / exp(logvar) + logvar, summed per image.
    torch.manual_seed(1)
    x, x_hat = torch.rand(3, 3, 4, 4), torch.rand(3, 3, 4, 4)
    logvar = torch.tensor(0.3)
    nll = ((x - x_hat).abs() / logvar.exp() + logvar).sum((1, 2, 3))
    posterior = helpers.normal(torch.zeros(3, 2), logvar=torch.zeros(3, 2))
    out = RateDistortionLoss()(
        x, posterior=posterior, likelihood=helpers.laplace(x_hat, log_scale=logvar)
    )
    assert_close(out.distortion_per_example, nll + 48 * math.log(2))


def test_laplace_needs_exactly_one_scale() -> None:
    with pytest.raises(ValueError, match="exactly one of scale= or log_scale="):
        helpers.laplace(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="scale must be > 0"):
        helpers.laplace(torch.zeros(2, 3), scale=0.0)


# --- bad inputs: helpers ------------------------------------------------------------------
# The catalogue's part for this module (tests/_catalogue.py); docs/errors.md lists its keys.


BAD_INPUTS: dict[str, Entry] = {
    "helper: logvar shape differs from loc": (
        lambda: helpers.normal(torch.zeros(B, D), logvar=torch.zeros(B, D + 1)),
        ValueError,
        r"logvar must have loc's shape \(4, 3\), got \(4, 4\)",
    ),
    "helper: both scale and logvar": (
        lambda: helpers.normal(torch.zeros(B, D), scale=1.0, logvar=torch.zeros(B, D)),
        ValueError,
        r"give exactly one of scale=, logvar= or log_scale=",
    ),
    "helper: laplace without a scale": (
        lambda: helpers.laplace(torch.zeros(B, D)),
        ValueError,
        r"give exactly one of scale= or log_scale=",
    ),
    "helper: scale that enlarges loc": (
        lambda: helpers.normal(torch.zeros(B, D), scale=torch.ones(2, B, D)),
        ValueError,
        r"scale of shape \(2, 4, 3\) must broadcast to loc's shape \(4, 3\)",
    ),
    "helper: non-positive fixed scale": (
        lambda: helpers.normal(torch.zeros(B, D), scale=0.0),
        ValueError,
        r"scale must be > 0 and finite, got 0.0",
    ),
    "helper: both logits and probs": (
        lambda: helpers.bernoulli(logits=torch.zeros(B, P), probs=torch.zeros(B, P)),
        ValueError,
        r"give exactly one of logits= or probs=",
    ),
    "helper: event_dims beyond the tensor": (
        lambda: helpers.bernoulli(logits=torch.zeros(B, P), event_dims=2),
        ValueError,
        r"event_dims must be in \[0, 1\] for logits of shape \(4, 6\).*got 2",
    ),
    "helper: category axis on the batch": (
        lambda: helpers.categorical(torch.zeros(B, 256), category_dim=0),
        ValueError,
        r"category_dim must not be the batch dimension 0",
    ),
    "helper: integer loc": (
        lambda: helpers.normal(torch.zeros(B, D, dtype=torch.long), scale=0.5),
        TypeError,
        r"loc must be a floating-point tensor, got dtype torch.int64",
    ),
    "helper: infinite fixed scale": (
        lambda: helpers.normal(torch.zeros(B, D), scale=float("inf")),
        ValueError,
        r"scale must be > 0 and finite, got inf",
    ),
    "helper: scale given as text": (
        lambda: helpers.normal(torch.zeros(B, D), scale="1"),  # type: ignore[arg-type]
        TypeError,
        r"scale must be a float or a Tensor, got str",
    ),
    "helper: integer Bernoulli logits": (
        lambda: helpers.bernoulli(logits=torch.zeros(B, P, dtype=torch.long)),
        TypeError,
        r"logits must be a floating-point tensor, got dtype torch.int64",
    ),
    "helper: neither logits nor probs": (
        lambda: helpers.bernoulli(),
        ValueError,
        r"give exactly one of logits= or probs=",
    ),
    "helper: category_dim given as a float": (
        lambda: helpers.categorical(torch.zeros(B, 5), category_dim=1.0),  # type: ignore[arg-type]
        TypeError,
        r"category_dim must be an int, got float",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_named_error(case: str) -> None:
    expect_named_error(BAD_INPUTS[case])
