from __future__ import annotations

import math
import warnings

import pytest
import torch
from _builders import F64, FUZZ
from _catalogue import B, D, Entry, _p, _q, _x, expect_named_error
from hypothesis import given
from hypothesis import strategies as st
from torch.distributions import Normal, kl_divergence
from torch.testing import assert_close

import rdloss
from rdloss import RateDistortionLoss, diagnostics, helpers
from rdloss.diagnostics import (
    ActiveUnits,
    MutualInformationBounds,
    RateDistortion,
    RatePerDimension,
)
from rdloss.loss import RDOutput

SPLITS = [[40], [1, 39], [13, 13, 14], [7, 20, 3, 10]]


def _data(seed: int = 0, n: int = 40, d: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "rate": torch.rand(n, generator=g, dtype=torch.float64) * 10,
        "distortion": torch.rand(n, generator=g, dtype=torch.float64) * 100 + 50,
        "mean": torch.randn(n, d, generator=g, dtype=torch.float64)
        * torch.tensor([1.0, 0.5, 0.05, 0.01, 0.0], dtype=torch.float64),
        "per_dim": torch.rand(n, d, generator=g, dtype=torch.float64),
    }


def _stream(metric, splits, *tensors):
    metric.reset()
    start = 0
    for size in splits:
        metric.update(*(t[start : start + size] for t in tensors))
        start += size
    return metric.compute()


@pytest.mark.parametrize("splits", SPLITS)
def test_rate_distortion_streaming_equals_full_pass(splits):
    data = _data()
    metric = RateDistortion(data_dims=784).set_dtype(torch.float64)
    out = _stream(metric, splits, data["rate"], data["distortion"])
    r, d = data["rate"].mean(), data["distortion"].mean()
    assert_close(out.rate, r)
    assert_close(out.distortion, d)
    assert_close(out.elbo, -(r + d))
    assert_close(out.rate_bits, r / math.log(2))
    assert_close(out.distortion_bits, d / math.log(2))
    assert_close(out.bits_per_dim, (r + d) / (784 * math.log(2)))


@pytest.mark.parametrize("splits", SPLITS)
def test_bounds_streaming_equals_full_pass(splits):
    data = _data()
    metric = MutualInformationBounds(data_entropy=100.0).set_dtype(torch.float64)
    out = _stream(metric, splits, data["rate"], data["distortion"])
    r, d = data["rate"].mean(), data["distortion"].mean()
    assert_close(out.lower, 100.0 - d)
    assert_close(out.upper, r)
    assert_close(out.entropy_upper, r + d)


@pytest.mark.parametrize("splits", SPLITS)
def test_active_units_streaming_equals_full_pass(splits):
    mean = _data()["mean"]
    metric = ActiveUnits(threshold=0.01).set_dtype(torch.float64)
    out = _stream(metric, splits, mean)
    ref = mean.var(0)
    assert_close(out.variances, ref)
    assert out.num_active.item() == int((ref > 0.01).sum())
    assert out.active.tolist() == (ref > 0.01).tolist()


@pytest.mark.parametrize("splits", SPLITS)
def test_rate_per_dimension_streaming_equals_full_pass(splits):
    per_dim = _data()["per_dim"]
    metric = RatePerDimension().set_dtype(torch.float64)
    assert_close(_stream(metric, splits, per_dim), per_dim.mean(0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_active_units_large_offset_is_stable(dtype):
    g = torch.Generator().manual_seed(1)
    # mean 1e4, variance 1e-2: E[x^2] - E[x]^2 cancels every digit of float32
    x64 = 1e4 + 0.1 * torch.randn(5000, 3, generator=g, dtype=torch.float64)
    x = x64.to(dtype)
    metric = ActiveUnits(threshold=0.005)
    if dtype == torch.float64:
        metric.set_dtype(torch.float64)
    for chunk in x.split(37):
        metric.update(chunk)
    out = metric.compute()
    ref = torch.var(x, dim=0)
    assert_close(out.variances, ref, rtol=1e-3, atol=0)
    assert_close(out.variances, x.double().var(0).to(dtype), rtol=1e-4, atol=0)
    assert out.num_active.item() == 3
    naive = (x * x).mean(0) - x.mean(0) ** 2
    if dtype == torch.float32:  # the test can fail: the naive formula is far off here
        assert not torch.allclose(naive * 5000 / 4999, ref, rtol=1e-1)


def test_reset_and_reuse():
    data = _data()
    metric = RateDistortion()
    metric.update(data["rate"][:10] + 1000, data["distortion"][:10])
    metric.reset()
    metric.update(data["rate"], data["distortion"])
    assert_close(metric.compute().rate, data["rate"].mean().float())
    au = ActiveUnits()
    au.update(torch.randn(8, 3))
    au.reset()
    au.update(torch.randn(8, 6))  # the lazily sized state is sized again
    assert au.compute().variances.shape == (6,)


def test_state_dict_round_trip():
    data = _data()
    metrics = {
        "rd": (lambda: RateDistortion(), (data["rate"], data["distortion"])),
        "mib": (lambda: MutualInformationBounds(3.0), (data["rate"], data["distortion"])),
        "au": (lambda: ActiveUnits(latent_dim=5), (data["mean"],)),
        "rpd": (lambda: RatePerDimension(latent_dim=5), (data["per_dim"],)),
    }
    for make, inputs in metrics.values():
        first = make()
        first.update(*(t[:25] for t in inputs))
        restored = make()
        restored.load_state_dict(first.state_dict())
        for m in (first, restored):
            m.update(*(t[25:] for t in inputs))
        torch.testing.assert_close(tuple(first.compute()), tuple(restored.compute()))


def test_entropy_upper_keeps_the_best_epoch():
    metric = MutualInformationBounds()
    for epoch_value, expected in [(5.0, 5.0), (3.0, 3.0), (4.0, 3.0)]:
        metric.update(torch.tensor([1.0]), torch.tensor([epoch_value - 1.0]))
        assert metric.compute().entropy_upper.item() == expected
        metric.reset()
    assert metric.best_entropy_upper.item() == 3.0
    restored = MutualInformationBounds()
    restored.load_state_dict(metric.state_dict())
    assert restored.best_entropy_upper.item() == 3.0


def test_forward_returns_batch_value_and_accumulates():
    metric = RateDistortion(output="rate")
    assert_close(metric(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])), torch.tensor(2.0))
    assert_close(metric(torch.tensor([8.0]), torch.tensor([0.0])), torch.tensor(8.0))
    assert_close(metric.compute(), torch.tensor(4.0))
    au = ActiveUnits(output="num_active")
    au(torch.tensor([[0.0], [1.0]]))
    au(torch.tensor([[2.0]]))
    assert_close(au.compute(), torch.tensor(1))


def test_accepts_rdoutput():
    torch.manual_seed(0)
    loss_fn = RateDistortionLoss()
    x = torch.randint(0, 2, (16, 10)).float()
    q = helpers.normal(torch.randn(16, 4), logvar=torch.randn(16, 4) * 0.1)
    out = loss_fn(x, posterior=q, likelihood=helpers.bernoulli(logits=torch.randn(16, 10)))
    rd, rpd, mib = RateDistortion(), RatePerDimension(), MutualInformationBounds()
    rd.update(out)
    rpd.update(out)
    mib.update(out)
    assert_close(rd.compute().rate, out.rate)
    assert_close(rd.compute().elbo, out.elbo)
    assert_close(rpd.compute().sum(), out.rate)
    assert_close(mib.compute().upper, out.rate)
    au = ActiveUnits()
    au.update(q)
    assert_close(au.compute().variances, q.mean.var(0))


def test_output_selection_and_validation():
    assert RateDistortion(output="elbo").output == "elbo"
    with pytest.raises(ValueError, match="output must be"):
        RateDistortion(output="loss")
    with pytest.raises(ValueError, match="data_dims"):
        RateDistortion(data_dims=0)
    with pytest.raises(ValueError, match="output='bits_per_dim' needs data_dims"):
        RateDistortion(output="bits_per_dim")
    with pytest.raises(ValueError, match="output='lower' needs data_entropy"):
        MutualInformationBounds(output="lower")
    with pytest.raises(ValueError, match="threshold"):
        ActiveUnits(threshold=-1.0)
    metric = RateDistortion()
    with pytest.raises(ValueError, match="same shape"):
        metric.update(torch.zeros(3), torch.zeros(4))
    with pytest.raises(TypeError, match=r"rate must be a torch\.Tensor"):
        metric.update([1.0], torch.zeros(1))
    with pytest.raises(ValueError, match="distortion is required"):
        metric.update(torch.zeros(3))
    au = ActiveUnits()
    with (
        pytest.warns(UserWarning, match="before the ``update``"),
        pytest.raises(RuntimeError, match="before any update"),
    ):
        au.compute()
    au.update(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="3"):
        au.update(torch.zeros(2, 4))
    assert "threshold=0.01" in repr(au)


@pytest.mark.parametrize("cache", [True, False])
def test_mi_bounds_keep_the_best_epoch_without_torchmetrics_cache(cache: bool) -> None:
    # The best -ELBO must not depend on torchmetrics' compute cache, and a per-batch
    # forward value is not an epoch's.
    metric = MutualInformationBounds(compute_with_cache=cache)
    metric.update(torch.tensor([1.0, 2.0]), torch.tensor([5.0, 6.0]))
    metric.compute()  # epoch 1: -ELBO 7
    metric.reset()
    metric(torch.tensor([0.1]), torch.tensor([0.1]))  # a batch value of 0.2, not an epoch
    metric.update(torch.tensor([9.0]), torch.tensor([9.0]))
    assert metric.compute().entropy_upper.item() == 7.0
    metric.reset()
    metric.update(torch.tensor([9.0]), torch.tensor([9.0]))
    assert metric.compute().entropy_upper.item() == 7.0


def test_data_entropy_above_the_negative_elbo_is_reported() -> None:
    # -ELBO = R + D upper-bounds the data entropy: H above it makes lower > upper.
    metric = MutualInformationBounds(data_entropy=7.5)
    metric.update(torch.tensor([1.0, 3.0]), torch.tensor([4.0, 6.0]))  # R + D = 7
    with pytest.warns(UserWarning, match=r"data_entropy .*7\.5.* above R \+ D .*7"):
        b = metric.compute()
    assert_close(b.lower, torch.tensor(2.5))  # the numbers stay what they are, reported
    quiet = MutualInformationBounds(data_entropy=6.5)
    quiet.update(torch.tensor([1.0, 3.0]), torch.tensor([4.0, 6.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet.compute()
        off = MutualInformationBounds(data_entropy=7.5, validate_args=False)
        off.update(torch.tensor([1.0, 3.0]), torch.tensor([4.0, 6.0]))
        off.compute()  # checks off: no host read, no warning


def _merged_equals_one_stream(make, first, second) -> None:
    a, b, both = make(), make(), make()
    a.update(first)
    b.update(second)
    both.update(first)
    both.update(second)
    a.merge_state(b)
    assert_close(_as_tuple(a.compute()), _as_tuple(both.compute()))
    c = make()  # from a state dict, and into a metric that has seen nothing
    c.merge_state(both.state_dict())
    assert_close(_as_tuple(c.compute()), _as_tuple(both.compute()))


def _as_tuple(value):
    if isinstance(value, dict):
        return tuple(value.values())
    return tuple(v for v in value if v is not None) if isinstance(value, tuple) else (value,)


@pytest.mark.parametrize("latent_dim", [None, 5])
def test_merge_state_equals_one_metric_over_both_streams(latent_dim) -> None:
    data = _data()
    mean = data["mean"].float() + 1e3  # merged shifted sums: no precision lost to the offset
    _merged_equals_one_stream(lambda: ActiveUnits(latent_dim=latent_dim), mean[:30], mean[30:])
    per_dim = data["per_dim"].float()
    _merged_equals_one_stream(
        lambda: RatePerDimension(latent_dim=latent_dim), per_dim[:30], per_dim[30:]
    )
    empty = ActiveUnits(latent_dim=latent_dim)  # merging an empty metric changes nothing
    full = ActiveUnits(latent_dim=latent_dim)
    full.update(mean)
    before = full.compute().variances
    full.merge_state(empty)
    assert_close(full.compute().variances, before)


def test_merge_state_of_different_sizes_is_a_clear_error() -> None:
    a, b = RatePerDimension(), RatePerDimension()
    a.update(torch.rand(3, 4))
    b.update(torch.rand(3, 5))
    with pytest.raises(ValueError, match=r"merge_state: .*5 units.*4"):
        a.merge_state(b)
    c, d = ActiveUnits(), ActiveUnits()
    c.update(torch.rand(3, 4))
    d.update(torch.rand(3, 5))
    with pytest.raises(ValueError, match=r"merge_state: .*5 units.*4"):
        c.merge_state(d)


def test_rate_per_dimension_refuses_negative_weights() -> None:
    # RateDistortion refused them; RatePerDimension took them silently.
    with pytest.raises(ValueError, match="weight must be non-negative"):
        RatePerDimension().update(torch.ones(2, 2), weight=torch.tensor([-1.0, 2.0]))


@pytest.mark.parametrize(
    "update",
    [
        lambda: ActiveUnits().update(torch.zeros(3, 0)),
        lambda: RatePerDimension().update(torch.zeros(3, 0)),
        lambda: ActiveUnits(groups=["a", "b"]).update(
            {"a": torch.zeros(3, 0), "b": torch.ones(3, 2)}
        ),
    ],
)
def test_latents_without_units_are_a_clear_error(update) -> None:
    with pytest.raises(ValueError, match="no latent units"):
        update()


# --- streamed metrics fuzzed against torch.distributions ----------------------------------
# The reference rate is ``torch.distributions.kl_divergence``, never another rdloss call.


def _output(rate_dims: torch.Tensor, distortion: torch.Tensor, weight: torch.Tensor) -> RDOutput:
    rate = rate_dims.sum(1)
    mean = (weight * rate).sum() / weight.sum()
    return RDOutput(
        mean, mean, mean, -mean, rate, distortion, rate_dims, "analytic", {}, weight=weight
    )


@FUZZ
@given(st.integers(2, 9), st.integers(1, 4), st.integers(0, 2**31 - 1), st.integers(1, 3))
def test_streamed_metrics_equal_torch_distributions(n, d, seed, chunks) -> None:
    g = torch.Generator().manual_seed(seed)
    mu_q = torch.randn(n, d, generator=g, dtype=F64)
    sd_q = torch.rand(n, d, generator=g, dtype=F64) + 0.1
    mu_p, sd_p = torch.randn(d, generator=g, dtype=F64), torch.rand(d, generator=g, dtype=F64) + 0.5
    per_dim = kl_divergence(Normal(mu_q, sd_q), Normal(mu_p, sd_p))  # the reference rate
    distortion = torch.rand(n, generator=g, dtype=F64) * 30
    weight = torch.rand(n, generator=g, dtype=F64) + 0.01
    metrics = [
        RateDistortion().set_dtype(F64),
        RatePerDimension().set_dtype(F64),
        MutualInformationBounds().set_dtype(F64),
    ]
    active = ActiveUnits(threshold=0.0).set_dtype(F64)
    for part in torch.arange(n).tensor_split(chunks):
        if len(part) == 0:
            continue
        out = _output(per_dim[part], distortion[part], weight[part])
        for metric in metrics:
            metric.update(out)
        active.update(Normal(mu_q[part], sd_q[part]))
    w = weight / weight.sum()
    rate = (w * per_dim.sum(1)).sum()
    assert_close(metrics[0].compute().rate, rate)
    assert_close(metrics[0].compute().distortion, (w * distortion).sum())
    assert_close(metrics[1].compute(), (w[:, None] * per_dim).sum(0))
    assert_close(metrics[2].compute().upper, rate)
    if n >= 2:
        assert_close(active.compute().variances, mu_q.var(0))


# --- bad inputs: metrics ------------------------------------------------------------------
# The catalogue's part for this module (tests/_catalogue.py); docs/errors.md lists its keys.


def _grouped_output() -> rdloss.RDOutput:
    """A two-group RDOutput (groups 'top' and 'bottom'), built by hand."""
    r = torch.ones(B)
    return rdloss.RDOutput(
        r.mean(),
        r.mean(),
        r.mean(),
        -2 * r.mean(),
        r,
        r,
        None,
        "analytic",
        {},
        rate_per_group={"top": r / 2, "bottom": r / 2},
    )


def _out() -> rdloss.RDOutput:
    return rdloss.RateDistortionLoss()(_x(), posterior=_q(), likelihood=_p())


def _updates(metric: diagnostics.ActiveUnits, *batches: torch.Tensor) -> None:
    for batch in batches:
        metric.update(batch)


BAD_INPUTS: dict[str, Entry] = {
    "metric: grouped metric fed other groups": (
        lambda: diagnostics.RateDistortion(groups=["a", "b"]).update(_grouped_output()),
        ValueError,
        r"rate_per_group has groups \['top', 'bottom'\], but this metric was built with "
        r"groups=\['a', 'b'\]",
    ),
    "metric: grouped metric fed tensors": (
        lambda: diagnostics.RateDistortion(groups=["a"]).update(torch.ones(B), torch.ones(B)),
        ValueError,
        r"this metric was built with groups=\['a'\]: update it with the loss's RDOutput",
    ),
    "metric: groups given as one string": (
        lambda: diagnostics.RatePerDimension(groups="top"),
        TypeError,
        r"groups must be a sequence of group names",
    ),
    "metric: negative example weight": (
        lambda: diagnostics.RateDistortion().update(
            torch.ones(B), torch.ones(B), weight=-torch.ones(B)
        ),
        ValueError,
        r"weight must be non-negative",
    ),
    "metric: active units of a scalar latent": (
        lambda: diagnostics.ActiveUnits().update(Normal(torch.zeros(B), 1.0)),
        ValueError,
        r"posterior_mean must have latent units \(an event_shape such as \(D,\)\)",
    ),
    "metric: ungrouped active units fed a mapping": (
        lambda: diagnostics.ActiveUnits().update({"a": torch.zeros(B, D)}),
        ValueError,
        r"posterior_mean is a mapping of groups \['a'\]: build the metric with groups=\['a'\]",
    ),
    "metric: unknown output field": (
        lambda: diagnostics.RateDistortion(output="nll"),
        ValueError,
        r"output must be None or one of \('rate', .*\), got 'nll'",
    ),
    "metric: bits_per_dim output without data_dims": (
        lambda: diagnostics.RateDistortion(output="bits_per_dim"),
        ValueError,
        r"output='bits_per_dim' needs data_dims",
    ),
    "metric: validate_args given as text": (
        lambda: diagnostics.MutualInformationBounds(validate_args="yes"),
        TypeError,
        r"validate_args must be a bool, got str",
    ),
    "metric: zero latent_dim": (
        lambda: diagnostics.RatePerDimension(latent_dim=0),
        ValueError,
        r"latent_dim must be >= 1, got 0",
    ),
    "metric: update with a NaN rate": (
        lambda: diagnostics.RateDistortion().update(torch.tensor([float("nan")]), torch.ones(1)),
        ValueError,
        r"non-finite values \(NaN or inf\) in rate",
    ),
    "metric: update with rate and distortion of different sizes": (
        lambda: diagnostics.MutualInformationBounds().update(torch.ones(3), torch.ones(4)),
        ValueError,
        r"rate and distortion must be per-example tensors of the same shape \(B,\), got "
        r"\(3,\) and \(4,\)",
    ),
    "metric: update with an RDOutput and a distortion": (
        lambda: diagnostics.RateDistortion().update(_out(), torch.ones(B)),
        ValueError,
        r"pass either an RDOutput or rate and distortion tensors",
    ),
    "metric: active units of a 1-D tensor": (
        lambda: diagnostics.ActiveUnits().update(torch.ones(D)),
        ValueError,
        r"posterior_mean must have at least 2 dimension\(s\) .*got shape \(3,\)",
    ),
    "metric: active units with another latent size": (
        lambda: _updates(diagnostics.ActiveUnits(), torch.ones(2, 3), torch.ones(2, 4)),
        ValueError,
        r"posterior_mean has 4 units but earlier batches had 3",
    ),
    "metric: rate per dimension with inf": (
        lambda: diagnostics.RatePerDimension().update(torch.tensor([[float("inf"), 0.0]])),
        ValueError,
        r"non-finite values \(NaN or inf\) in rate_per_dimension",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_named_error(case: str) -> None:
    expect_named_error(BAD_INPUTS[case])


def test_bits_per_dim_is_vdvaes_elbo_per_dimension_over_ln2() -> None:
    # openai/vdvae, vae.py, VAE.forward (commit ea35b490313bc33e7f8ac63dd8132f3cc1a729b4):
    #   distortion_per_pixel = out_net.nll(px_z, x)          # already per dimension
    #   rate_per_pixel = sum over layers of kl.sum(dim=(1, 2, 3)), then /= prod(x.shape[1:])
    #   elbo = (distortion_per_pixel + rate_per_pixel).mean()   # nats per dimension
    # so bits per dimension = elbo / ln 2.
    g = torch.Generator().manual_seed(3)
    n, shape = 12, (3, 8, 8)
    ndims = math.prod(shape)
    kl_layers = [torch.rand(n, 4, 4, 4, generator=g, dtype=F64) for _ in range(3)]
    distortion_per_pixel = torch.rand(n, generator=g, dtype=F64) * 3
    rate_per_pixel = torch.zeros(n, dtype=F64)
    for kl in kl_layers:
        rate_per_pixel += kl.sum(dim=(1, 2, 3))
    rate_per_pixel /= ndims
    elbo = (distortion_per_pixel + rate_per_pixel).mean()
    # rdloss' per-example sums in nats: R = sum of the layers' KL, D = the NLL summed
    rate = sum(kl.flatten(1).sum(1) for kl in kl_layers)
    distortion = distortion_per_pixel * ndims
    result = _stream(RateDistortion(data_dims=ndims).set_dtype(F64), [5, 7], rate, distortion)
    assert_close(result.bits_per_dim, elbo / math.log(2))
    assert_close(result.rate / ndims, rate_per_pixel.mean())
    assert_close(result.distortion / ndims, distortion_per_pixel.mean())
