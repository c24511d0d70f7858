"""Hostile pass over objective state and metrics: fuzzed values against independent references.

The references are written here from the formulas (plain Python floats for the controllers,
``torch.distributions.kl_divergence`` for the rates), never by calling rdloss twice.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Normal, kl_divergence
from torch.testing import assert_close

from rdloss.diagnostics import (
    ActiveUnits,
    MutualInformationBounds,
    RateDistortion,
    RatePerDimension,
)
from rdloss.loss import RDOutput
from rdloss.objectives import GECO, Beta, Capacity, RateController, TargetDistortion, TargetRate

F64 = torch.float64
FUZZ = settings(max_examples=40, deadline=None)
finite = st.floats(-50, 50, allow_nan=False, width=64)
terms = st.lists(st.tuples(st.floats(0, 20), st.floats(0, 40)), min_size=1, max_size=12)
maybe_bad = st.one_of(st.floats(0, 20), st.sampled_from([math.nan, math.inf, -math.inf]))


def _step(objective, rate: float, distortion: float) -> None:
    objective(
        torch.tensor([rate], dtype=F64, requires_grad=True), torch.tensor([distortion], dtype=F64)
    )


@FUZZ
@given(
    terms,
    st.floats(0.5, 20),
    st.floats(0.0, 0.98),
    st.floats(1e-4, 0.2),
    st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_geco_matches_its_update_rule(steps, kappa, alpha, lr, poison) -> None:
    geco = GECO(kappa, alpha=alpha, lr=lr, max_multiplier=1e3).double()
    lam, ma, started = 1.0, 0.0, False
    for (r, d), bad in zip(steps, poison, strict=False):
        d = math.nan if bad else d
        _step(geco, r, d)
        if math.isfinite(d):
            c = d - kappa
            ma = c if not started else alpha * ma + (1 - alpha) * c
            started = True
            lam = min(max(lam * math.exp(lr * ma), 1e-6), 1e3)
    assert geco.multiplier.item() == pytest.approx(lam, rel=1e-9)
    assert geco.constraint_ma.item() == pytest.approx(ma, rel=1e-9, abs=1e-12)
    assert geco.skipped.item() == sum(poison[: len(steps)])


@FUZZ
@given(
    st.lists(maybe_bad, min_size=1, max_size=12),
    st.floats(0.1, 10),
    st.floats(0, 2),
    st.floats(0, 0.5),
    st.sampled_from(["relative", "absolute"]),
)
def test_rate_controller_matches_its_update_rule(rates, target, kp, ki, error) -> None:
    controller = RateController(target, kp=kp, ki=ki, beta_max=5.0, error=error).double()
    integral, beta = 0.0, 0.0
    for r in rates:
        _step(controller, r, 1.0)
        if not math.isfinite(r):
            continue
        e = (target - r) / (max(target, 1e-3) if error == "relative" else 1.0)
        p = kp / (1 + math.exp(e)) if e < 700 else 0.0
        integral = min(max(integral - ki * e, -p), -p + 5.0)
        beta = min(max(p + integral, 0.0), 5.0)
    assert controller.beta.item() == pytest.approx(beta, rel=1e-9, abs=1e-12)
    assert controller.integral.item() == pytest.approx(integral, rel=1e-9, abs=1e-12)


@FUZZ
@given(st.lists(maybe_bad, min_size=1, max_size=12), st.floats(0.1, 10), st.floats(0.01, 0.5))
def test_adaptive_target_rate_matches_dual_ascent(rates, sigma, lr) -> None:
    objective = TargetRate(sigma, adaptive=True, lr=lr, max_weight=50.0).double()
    w = 1.0
    for r in rates:
        _step(objective, r, 1.0)
        if math.isfinite(r):
            w = min(max(w * math.exp(lr * (r - sigma)), 1e-3), 50.0)
    assert objective.adaptive_weight.item() == pytest.approx(w, rel=1e-5)  # float32 state


@FUZZ
@given(
    st.sampled_from(["beta", "sigma", "delta", "capacity", "gamma", "weight"]),
    st.one_of(finite, st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0])),
)
def test_assignment_accepts_exactly_the_constructor_range(name, value) -> None:
    builds = {
        "beta": lambda v: Beta(v),
        "sigma": lambda v: TargetRate(v),
        "delta": lambda v: TargetDistortion(v),
        "capacity": lambda v: Capacity(v),
        "gamma": lambda v: Capacity(1.0, gamma=v),
        "weight": lambda v: TargetRate(1.0, weight=v),
    }
    objective = builds[name](1.0)
    try:
        builds[name](value)
    except ValueError as constructor_error:
        with pytest.raises(ValueError, match=str(constructor_error).split(",")[0]):
            setattr(objective, name, value)
        assert getattr(objective, name).item() == 1.0
    else:
        setattr(objective, name, value)
        assert getattr(objective, name).item() == value


@FUZZ
@given(
    st.lists(
        st.sampled_from([torch.bfloat16, torch.float16, torch.float32, torch.float64]), max_size=4
    )
)
def test_any_cast_sequence_keeps_state_at_least_float32(dtypes) -> None:
    objective = GECO(5.0)
    for dtype in dtypes:
        objective = objective.to(dtype)
    for name, value in objective.state_dict().items():
        if value.is_floating_point():
            assert torch.finfo(value.dtype).bits >= 32, name
    assert objective.target_distortion.dtype == F64


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
