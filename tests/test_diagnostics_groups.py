"""Metrics that keep the loss's promises: weights, latent groups, and the MI bounds' epochs.

Reproducers of issue 13 (metrics ignored ``weight=``; a mid-epoch ``compute`` folded a
one-batch value into the best ``-ELBO``; ``merge_state`` dropped the other metric's best;
unclear errors) and issue 12's per-group diagnostics, against full-pass computations.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import Tensor
from torch.distributions import Independent, Normal
from torch.testing import assert_close

from rdloss import RateDistortionLoss, helpers
from rdloss.diagnostics import (
    ActiveUnits,
    MutualInformation,
    MutualInformationBounds,
    RateDistortion,
    RatePerDimension,
)
from rdloss.loss import RDOutput

F64 = torch.float64
SPLITS = [[12], [1, 11], [5, 4, 3], [2, 2, 2, 6]]
SIZES = {"top": 3, "bottom": 4}


def _grouped(n: int = 12, seed: int = 0, weighted: bool = True) -> RDOutput:
    """A hand-built grouped RDOutput (two groups), as the loss's core will fill it."""
    g = torch.Generator().manual_seed(seed)
    dims = {k: torch.rand(n, d, generator=g, dtype=F64) for k, d in SIZES.items()}
    per_group = {k: v.sum(1) for k, v in dims.items()}
    rate = per_group["top"] + per_group["bottom"]
    distortion = 50 + 10 * torch.rand(n, generator=g, dtype=F64)
    weight = torch.rand(n, generator=g, dtype=F64) if weighted else None
    mean = (lambda v: v.mean()) if weight is None else (lambda v: (weight * v).sum() / weight.sum())
    return RDOutput(
        loss=mean(rate + distortion),
        rate=mean(rate),
        distortion=mean(distortion),
        elbo=-mean(rate + distortion),
        rate_per_example=rate,
        distortion_per_example=distortion,
        rate_per_dimension=torch.cat(list(dims.values()), dim=1),
        estimator="analytic",
        hyper={},
        rate_per_group=per_group,
        rate_per_step=None,
        rate_per_group_dimension=dims,
        weight=weight,
    )


def _slice(out: RDOutput, start: int, stop: int) -> RDOutput:
    def cut(v: object) -> object:
        if isinstance(v, Tensor) and v.ndim >= 1:
            return v[start:stop]
        if isinstance(v, dict):
            return {k: cut(x) for k, x in v.items()}
        return v

    return RDOutput(*(cut(v) for v in out))


def _stream(metric, out: RDOutput, splits: list[int]):
    start = 0
    for size in splits:
        metric.update(_slice(out, start, start + size))
        start += size
    return metric.compute()


# --- weights -------------------------------------------------------------------------------


def test_metrics_use_the_loss_weights() -> None:
    # The reproducer: out.rate 1.130 but RateDistortion reported the unweighted 1.298.
    torch.manual_seed(0)
    mu = torch.randn(4, 3)
    x = torch.randint(0, 2, (4, 5)).float()
    out = RateDistortionLoss()(
        x,
        posterior=helpers.normal(mu, logvar=torch.zeros(4, 3)),
        likelihood=helpers.bernoulli(logits=torch.randn(4, 5)),
        weight=torch.tensor([1.0, 1, 1, 0]),
    )
    rd = RateDistortion()
    rd.update(out)
    result = rd.compute()
    assert_close(result.rate, out.rate)
    assert_close(result.distortion, out.distortion)
    bounds = MutualInformationBounds()
    bounds.update(out)
    assert_close(bounds.compute().upper, out.rate)
    per_dim = RatePerDimension()
    per_dim.update(out)
    assert out.rate_per_dimension is not None
    assert_close(per_dim.compute().sum(), out.rate)


@pytest.mark.parametrize("splits", SPLITS)
def test_weighted_streaming_equals_the_full_pass(splits: list[int]) -> None:
    out = _grouped()
    w = out.weight
    assert w is not None
    rd = _stream(RateDistortion().set_dtype(F64), out, splits)
    assert_close(rd.rate, out.rate)
    assert_close(rd.distortion, out.distortion)
    full = (w[:, None] * out.rate_per_dimension).sum(0) / w.sum()
    assert_close(_stream(RatePerDimension().set_dtype(F64), out, splits), full)
    bounds = _stream(MutualInformationBounds().set_dtype(F64), out, splits)
    assert_close(bounds.upper, out.rate)


def test_tensor_updates_take_weight() -> None:
    rd = RateDistortion().set_dtype(F64)
    r, d = torch.tensor([1.0, 3.0], dtype=F64), torch.tensor([10.0, 20.0], dtype=F64)
    rd.update(r, d, weight=torch.tensor([3.0, 1.0], dtype=F64))
    assert_close(rd.compute().rate, torch.tensor(1.5, dtype=F64))
    with pytest.raises(ValueError, match="weight must be non-negative"):
        rd.update(r, d, weight=torch.tensor([-1.0, 1.0], dtype=F64))
    with pytest.raises(ValueError, match=r"weight must have rate's shape \(B,\) = \(2,\)"):
        rd.update(r, d, weight=torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="carries its weight"):
        rd.update(_grouped(), weight=torch.ones(12))


# --- groups --------------------------------------------------------------------------------


@pytest.mark.parametrize("splits", SPLITS)
def test_per_group_streaming_equals_the_full_pass(splits: list[int]) -> None:
    out = _grouped()
    w = out.weight
    assert w is not None and out.rate_per_group is not None
    result = _stream(RateDistortion(groups=list(SIZES)).set_dtype(F64), out, splits)
    assert result.rate_per_group is not None
    assert list(result.rate_per_group) == list(SIZES)
    for name, values in out.rate_per_group.items():
        assert_close(result.rate_per_group[name], (w * values).sum() / w.sum())
    assert_close(sum(result.rate_per_group.values()), result.rate)

    per_dim = _stream(RatePerDimension(groups=list(SIZES)).set_dtype(F64), out, splits)
    assert out.rate_per_group_dimension is not None
    for name, values in out.rate_per_group_dimension.items():
        assert values is not None
        assert_close(per_dim[name], (w[:, None] * values).sum(0) / w.sum())


def test_grouped_output_without_groups_counts_its_total() -> None:
    out = _grouped()
    rd = RateDistortion()
    rd.update(out)
    result = rd.compute()
    assert result.rate_per_group is None
    assert_close(result.rate, out.rate.float())


@pytest.mark.parametrize(
    ("build", "update", "match"),
    [
        (lambda: RateDistortion(groups=["bottom", "top"]), _grouped, r"has groups \['top', "),
        (lambda: RateDistortion(groups=["top"]), _grouped, r"built with groups=\['top'\]"),
        (
            lambda: RateDistortion(groups=["top", "bottom"]),
            lambda: _grouped()._replace(rate_per_group=None),
            "has no rate_per_group",
        ),
        (lambda: RatePerDimension(groups=["x", "y"]), _grouped, r"has groups \['top', 'bottom'\]"),
        (
            lambda: RatePerDimension(),
            lambda: _grouped().rate_per_group_dimension,
            r"build the metric with groups=\['top', 'bottom'\]",
        ),
        (
            lambda: RatePerDimension(groups=["top", "bottom"]),
            lambda: _grouped()._replace(
                rate_per_group_dimension={"top": torch.ones(12, 3), "bottom": None}
            ),
            r"group\(s\) \['bottom'\] does not factorise",
        ),
    ],
)
def test_group_mismatch_is_a_clear_error(build, update, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build().update(update())


def test_groups_argument_is_checked() -> None:
    with pytest.raises(TypeError, match="groups must be a sequence of group names"):
        RateDistortion(groups="top")
    with pytest.raises(ValueError, match="groups must be distinct non-empty strings"):
        RateDistortion(groups=["a", "a"])
    with pytest.raises(ValueError, match="output='rate_per_group' needs groups"):
        RateDistortion(output="rate_per_group")


def test_active_units_per_group_with_conv_means() -> None:
    g = torch.Generator().manual_seed(0)
    top = torch.randn(20, 2, 2, 2, generator=g, dtype=F64)  # conv latent (C, H, W)
    top[:, 0] *= 1e-3  # channel 0 (4 units) inactive
    bottom = torch.randn(20, 3, generator=g, dtype=F64)
    bottom[:, 2] = 0.5
    metric = ActiveUnits(groups=["top", "bottom"]).set_dtype(F64)
    for chunk in (slice(0, 7), slice(7, 20)):
        posterior = Independent(Normal(bottom[chunk], 1.0), 1)  # a distribution for one group
        metric.update({"top": top[chunk], "bottom": posterior})
    result = metric.compute()
    assert result.per_group is not None
    assert_close(result.per_group["top"].variances, top.flatten(1).var(0))
    assert_close(result.per_group["bottom"].variances, bottom.var(0))
    assert result.per_group["top"].num_active.item() == 4
    assert result.per_group["bottom"].num_active.item() == 2
    assert result.num_active.item() == 6
    # Group sizes are a state: a state_dict round trip keeps the split.
    fresh = ActiveUnits(groups=["top", "bottom"]).set_dtype(F64)
    buffer = io.BytesIO()
    torch.save(metric.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    again = fresh.compute()
    assert again.per_group is not None
    assert_close(again.per_group["top"].variances, result.per_group["top"].variances)
    fresh.reset()
    fresh.update({"top": top, "bottom": bottom})
    assert fresh.compute().per_group is not None
    with pytest.raises(ValueError, match=r"group sizes \[8, 2\] but earlier batches had \[8, 3\]"):
        fresh.update({"top": top, "bottom": bottom[:, :2]})


def test_active_units_takes_conv_means_without_groups() -> None:
    means = torch.randn(10, 2, 3, 3, dtype=F64)
    metric = ActiveUnits().set_dtype(F64)
    metric.update(means)
    assert_close(metric.compute().variances, means.flatten(1).var(0))


def test_active_units_scalar_latent_is_a_clear_error() -> None:
    posterior = Normal(torch.zeros(5), torch.ones(5))  # batch (5,), one scalar latent each
    with pytest.raises(ValueError, match=r"must have latent units \(an event_shape"):
        ActiveUnits().update(posterior)


def test_mutual_information_latent_size_change_fails_at_update() -> None:
    metric = MutualInformation()
    metric.update(torch.zeros(4, 3), logvar=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="has 2 latent dimensions but earlier batches had 3"):
        metric.update(torch.zeros(4, 2), logvar=torch.zeros(4, 2))


# --- MutualInformationBounds: an epoch ends at reset --------------------------------------


def _epoch(metric: MutualInformationBounds, *pairs: tuple[float, float]) -> None:
    for r, d in pairs:
        metric.update(torch.tensor([r]), torch.tensor([d]))


def test_mid_epoch_compute_then_forward_keeps_the_best() -> None:
    # The reproducer: a compute() mid-epoch, then forward(), folded the one-batch
    # value 0.2 into best_entropy_upper instead of the epoch's 5.1.
    metric = MutualInformationBounds()
    _epoch(metric, (1.0, 4.0), (1.2, 4.0))
    metric.compute()  # the epoch's -ELBO: 5.1
    metric.reset()
    _epoch(metric, (3.0, 4.0))
    metric.compute()  # a mid-epoch look (7.0), not an epoch's end
    metric(torch.tensor([0.1]), torch.tensor([0.1]))  # forward: batch value 0.2
    assert metric.best_entropy_upper.item() == pytest.approx(5.1)
    result = metric.compute()  # the epoch so far: (3 + 4 + 0.2) / 2 = 3.6
    assert result.entropy_upper.item() == pytest.approx(3.6)
    metric.reset()
    assert metric.best_entropy_upper.item() == pytest.approx(3.6)


def test_uncomputed_epoch_is_not_folded() -> None:
    metric = MutualInformationBounds()
    _epoch(metric, (1.0, 1.0))
    metric.compute()
    _epoch(metric, (5.0, 5.0))  # updates after the compute: the epoch is not final
    metric.reset()
    assert metric.best_entropy_upper.item() == float("inf")


def test_checkpoint_between_compute_and_reset_saves_the_epoch() -> None:
    metric = MutualInformationBounds()
    _epoch(metric, (1.0, 2.0))
    metric.compute()
    fresh = MutualInformationBounds()
    fresh.load_state_dict(metric.state_dict())
    assert fresh.best_entropy_upper.item() == pytest.approx(3.0)
    # a mid-epoch checkpoint (updates after compute) saves only the earlier best
    _epoch(metric, (9.0, 9.0))
    fresh = MutualInformationBounds()
    fresh.load_state_dict(metric.state_dict())
    assert fresh.best_entropy_upper.item() == float("inf")


def test_merge_state_keeps_the_other_best() -> None:
    a, b = MutualInformationBounds(), MutualInformationBounds()
    _epoch(b, (1.0, 1.0))
    b.compute()
    b.reset()  # b's best: 2.0
    _epoch(a, (4.0, 4.0))
    a.compute()
    a.reset()  # a's best: 8.0
    _epoch(a, (3.0, 3.0))
    _epoch(b, (5.0, 5.0))
    a.merge_state(b)
    assert a.best_entropy_upper.item() == pytest.approx(2.0)
    result = a.compute()
    assert result.upper.item() == pytest.approx(4.0)  # (3 + 5) / 2
    assert result.entropy_upper.item() == pytest.approx(2.0)
