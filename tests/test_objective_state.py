"""Objective state that keeps its promises: dtype, finite-only updates, hyperparameter attributes.

Reproducers of issue 13's findings: half-precision casts froze or overflowed the feedback
state, one NaN batch poisoned it for good, and hyperparameters set by attribute were neither
checked nor compile-friendly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from _builders import F64, FUZZ
from _catalogue import Entry, expect_named_error
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor
from torch._dynamo.testing import CompileCounterWithBackend
from torch.distributions import Bernoulli, Independent, Normal

from rdloss import RateDistortionLoss, helpers, objectives, schedules
from rdloss.objectives import (
    GECO,
    Beta,
    Capacity,
    Objective,
    RateController,
    TargetDistortion,
    TargetRate,
)
from rdloss.schedules import Linear

HALF = [torch.bfloat16, torch.float16]
NAN = float("nan")


def _drive(objective: Objective, terms: list[tuple[float, float]]) -> list[dict[str, Tensor]]:
    """Train-mode calls on one-example terms; the state after each call."""
    states = []
    for rate, distortion in terms:
        r = torch.tensor([rate], requires_grad=True)
        objective(r, torch.tensor([distortion]))
        states.append({k: v.clone() for k, v in objective.state_dict().items()})
    return states


# --- state keeps float32 whatever the module's dtype ---------------------------------------

FEEDBACK: list[Callable[[], Objective]] = [
    lambda: GECO(10.0, lr=1e-3),
    lambda: RateController(2.0, kp=0.01, ki=1e-4, error="absolute"),
    lambda: TargetRate(2.0, adaptive=True, lr=1e-3),
]


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("build", FEEDBACK, ids=lambda b: type(b()).__name__)
def test_half_cast_keeps_feedback_state_float32(
    build: Callable[[], Objective], dtype: torch.dtype
) -> None:
    # 200 steps of a constant error: in bfloat16 a multiplier of 1.0 cannot move by
    # exp(2e-3) and an integrator stalls; the cast module must follow float32 exactly.
    terms = [(4.0, 12.0)] * 200
    reference = _drive(build(), terms)
    cast = build().to(dtype)
    for name, buffer in cast.named_buffers():
        assert buffer.dtype in (torch.float32, torch.float64, torch.int64, torch.bool), name
    got = _drive(cast, terms)
    torch.testing.assert_close(got, reference, rtol=0, atol=0)
    moved = [v for k, v in got[-1].items() if k in ("multiplier", "integral", "adaptive_weight")]
    assert moved and all(v.item() not in (0.0, 1.0, 2.0) for v in moved)


def test_float16_multiplier_does_not_overflow() -> None:
    # max_multiplier=1e6 > 65504: a float16 buffer would hold inf and never recover.
    geco = GECO(50.0, lr=1.0, alpha=0.5).half()
    _drive(geco, [(1.0, 100.0)] * 30)
    assert geco.multiplier.dtype == torch.float32
    assert geco.multiplier.item() == pytest.approx(1e6)
    _drive(geco, [(1.0, 0.0)] * 5)  # and it comes back down
    assert math.isfinite(geco.multiplier.item()) and geco.multiplier.item() < 1e6


def test_hyperparameters_stay_float64_and_state_may_widen() -> None:
    objective = GECO(10.0, lr=1e-3).half()
    assert objective.lr.dtype == torch.float64 and objective.step.dtype == torch.int64
    wide = RateController(2.0).double()  # widening is the user's choice and is kept
    assert wide.beta.dtype == torch.float64 and wide.integral.dtype == torch.float64


def test_loss_module_cast_keeps_the_objective_state() -> None:
    loss_fn = RateDistortionLoss(objective=GECO(10.0)).to(torch.bfloat16)
    assert loss_fn.objective.multiplier.dtype == torch.float32
    assert loss_fn.objective.constraint_ma.dtype == torch.float32


# --- one non-finite batch does not poison the state ----------------------------------------


@pytest.mark.parametrize("bad", [NAN, math.inf, -math.inf])
@pytest.mark.parametrize("build", FEEDBACK, ids=lambda b: type(b()).__name__)
def test_a_non_finite_batch_is_skipped(build: Callable[[], Objective], bad: float) -> None:
    good = [(4.0, 12.0), (3.0, 11.0), (5.0, 9.0), (2.5, 13.0)]
    clean = _drive(build(), good)
    objective = build()
    # rate and distortion both non-finite (what GECO and the rate objectives each read)
    poisoned = _drive(objective, [*good[:2], (bad, bad), *good[2:]])
    assert objective.skipped.item() == 1
    del poisoned[2]
    for got, want in zip(poisoned, clean, strict=True):
        for key in want:
            if key in ("step", "skipped"):
                continue
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)
    assert all(math.isfinite(v.float().item()) for v in objective.buffers())


def test_geco_average_starts_at_the_first_finite_batch() -> None:
    geco = GECO(10.0, lr=0.1)
    _drive(geco, [(NAN, NAN), (1.0, 12.0)])
    assert geco.constraint_ma.item() == pytest.approx(2.0)  # not 0.01 * 2 blended with 0
    torch.testing.assert_close(geco.multiplier, torch.tensor(math.exp(0.2)))


@pytest.mark.parametrize("build", FEEDBACK, ids=lambda b: type(b()).__name__)
def test_training_recovers_after_a_nan_batch_without_validation(
    build: Callable[[], Objective],
) -> None:
    # validate_args=False (and torch.compile) skip the loss's NaN check: the state must
    # still survive, so the next finite batch gives a finite loss.
    loss_fn = RateDistortionLoss(objective=build(), validate_args=False)
    mu = torch.zeros(4, 2, requires_grad=True)
    x = torch.ones(4, 3)
    logits = torch.zeros(4, 3, requires_grad=True)
    for poison in (False, True, False, False):
        shift = NAN if poison else 0.0  # NaN in both the rate and the distortion
        out = loss_fn(
            x,
            posterior=Independent(Normal(mu + shift, 1.0, validate_args=False), 1),
            likelihood=Independent(Bernoulli(logits=logits + shift, validate_args=False), 1),
        )
        out.loss.backward()
        assert math.isnan(out.loss.item()) == poison
    assert loss_fn.objective.skipped.item() == 1


@pytest.mark.slow
@pytest.mark.parametrize("build", FEEDBACK, ids=lambda b: type(b()).__name__)
def test_compiled_skip_is_graph_free(build: Callable[[], Objective]) -> None:
    torch._dynamo.reset()
    eager, compiled_objective = build(), build()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(compiled_objective, backend=counter, fullgraph=True)
    for rate in (4.0, NAN, 3.0, math.inf, 5.0):
        r, d = torch.tensor([rate, 2.0], requires_grad=True), torch.tensor([12.0, rate])
        compiled(r, d)
        eager(r.detach().requires_grad_(), d)
    assert counter.frame_count == 1
    torch.testing.assert_close(compiled_objective.state_dict(), eager.state_dict())
    assert compiled_objective.skipped.item() == 2


# --- hyperparameters set by attribute -------------------------------------------------------

ASSIGNABLE: list[tuple[Callable[[float], Objective], str, list[float]]] = [
    (lambda v: Beta(v), "beta", [0.0, 0.25, 3.0]),
    (lambda v: TargetRate(v), "sigma", [0.0, 1.0, 7.5]),
    (lambda v: TargetRate(2.0, weight=v), "weight", [0.5, 2.0, 10.0]),
    (lambda v: TargetDistortion(v), "delta", [1.0, 8.0, 0.0]),
    (lambda v: Capacity(3.0, gamma=v), "gamma", [1.0, 100.0, 0.1]),
    (lambda v: Capacity(v), "capacity", [0.0, 4.0, 25.0]),
    (lambda v: GECO(v), "target_distortion", [5.0, 12.0, 0.0]),
    (lambda v: GECO(10.0, lr=v), "lr", [0.1, 1e-3, 0.5]),
    (lambda v: RateController(v), "target_rate", [1.0, 3.0, 0.5]),
    (lambda v: RateController(2.0, kp=v), "kp", [0.0, 0.5, 2.0]),
    (lambda v: RateController(2.0, ki=v), "ki", [0.0, 0.1, 1e-3]),
    (lambda v: TargetRate(2.0, adaptive=True, lr=v), "lr", [0.5, 0.01, 1.0]),
]
POSITIVE = {"weight", "gamma", "lr"}


Case = tuple[Callable[[float], Objective], str, list[float]]


def _ids(case: Case) -> str:
    return f"{type(case[0](1.0)).__name__}.{case[1]}"


@pytest.mark.parametrize("case", ASSIGNABLE, ids=_ids)
def test_assignment_validates_like_the_constructor(case: Case) -> None:
    make, name, values = case
    objective = make(values[-1])
    before = getattr(objective, name).clone()
    with pytest.raises(ValueError, match=f"{name} must be >=? 0, got -3.0"):
        setattr(objective, name, -3.0)
    with pytest.raises(ValueError, match=f"{name} must be finite, got nan"):
        setattr(objective, name, NAN)
    with pytest.raises(TypeError, match=f"{name} must be a real number or an rdloss.schedules"):
        setattr(objective, name, "0.5")
    if name in POSITIVE:
        with pytest.raises(ValueError, match=f"{name} must be > 0, got 0.0"):
            setattr(objective, name, 0.0)
    torch.testing.assert_close(getattr(objective, name), before)  # failed sets change nothing


@pytest.mark.parametrize("case", ASSIGNABLE, ids=_ids)
def test_assignment_equals_construction(case: Case) -> None:
    make, name, values = case
    r = torch.tensor([1.0, 3.0, 8.0], dtype=torch.float64, requires_grad=True)
    d = torch.tensor([10.0, 20.0, 6.0], dtype=torch.float64)
    assigned = make(values[-1])
    for value in values:  # a training step after each assignment, against a fresh build
        setattr(assigned, name, value)
        fresh = make(value)
        fresh.load_state_dict({**assigned.state_dict(), name: fresh.state_dict()[name]})
        torch.testing.assert_close(assigned(r, d), fresh(r, d), rtol=0, atol=0)
        torch.testing.assert_close(assigned.state_dict(), fresh.state_dict(), rtol=0, atol=0)
        assert getattr(assigned, name).item() == value
        assert getattr(assigned, name).dtype == torch.float64


def test_beta_formula_after_assignment_in_float64() -> None:
    objective = Beta(1.0)
    objective.beta = 1 / 0.0018  # not representable in float32: float64 buffers keep it exact
    r = torch.tensor([2.0, 4.0], dtype=torch.float64)
    d = torch.tensor([10.0, 20.0], dtype=torch.float64)
    assert objective(r, d).loss.item() == 15.0 + (1 / 0.0018) * 3.0


def test_hyper_output_is_a_copy() -> None:
    objective = Beta(0.5)
    out = objective(torch.tensor([2.0]), torch.tensor([1.0]))
    objective.beta = 0.75
    assert out.hyper["beta"].item() == 0.5


def test_schedule_and_number_swap_by_assignment() -> None:
    objective = Beta(0.5)
    objective.beta = Linear(0.0, 1.0, steps=4)
    assert isinstance(objective.beta, Linear) and "beta" not in objective.state_dict()
    assert "(beta): Linear" in repr(objective)
    objective.beta = 0.3
    assert objective.state_dict()["beta"].item() == pytest.approx(0.3)
    assert repr(objective) == "Beta(beta=0.3)"
    with pytest.raises(ValueError, match="beta must be >= 0 at every step"):
        objective.beta = Linear(-1.0, 1.0, steps=4)


def test_assigned_value_survives_state_dict_and_deepcopy() -> None:
    objective = TargetRate(2.0)
    objective.sigma = 4.5
    clone = copy.deepcopy(objective)
    assert clone.sigma.item() == 4.5
    fresh = TargetRate(2.0)
    fresh.load_state_dict(objective.state_dict())
    assert fresh.sigma.item() == 4.5


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: GECO(1.0), "alpha"),
        (lambda: GECO(1.0), "max_multiplier"),
        (lambda: RateController(1.0), "beta_max"),
        (lambda: RateController(1.0), "error"),
        (lambda: TargetRate(1.0), "reduction"),
        (lambda: TargetRate(1.0, adaptive=True), "adaptive"),
    ],
)
def test_interdependent_settings_are_fixed(build: Callable[[], Objective], name: str) -> None:
    objective = build()
    with pytest.raises(AttributeError, match=f"{name} is fixed at construction"):
        setattr(objective, name, getattr(objective, name))


@pytest.mark.slow
@pytest.mark.parametrize("case", ASSIGNABLE, ids=_ids)
def test_changing_a_hyperparameter_does_not_recompile(case: Case) -> None:
    make, name, values = case
    torch._dynamo.reset()
    torch.manual_seed(0)
    mu = torch.randn(8, 4, requires_grad=True)
    logits = torch.randn(8, 12, requires_grad=True)
    x = torch.randint(0, 2, (8, 12)).float()
    eager_fn = RateDistortionLoss(objective=make(values[-1]))
    compiled_fn = RateDistortionLoss(objective=make(values[-1]))

    def step(loss_fn: RateDistortionLoss) -> tuple[Tensor, dict[str, Tensor]]:
        q = helpers.normal(mu, logvar=torch.zeros(8, 4))
        out = loss_fn(x, posterior=q, likelihood=helpers.bernoulli(logits=logits))
        return out.loss, out.hyper

    with torch.no_grad():  # warm torch.distributions' KL dispatch cache outside the trace
        step(eager_fn.eval())
    eager_fn.train()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    compiled(compiled_fn)
    step(eager_fn)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for value in values:
            setattr(compiled_fn.objective, name, value)
            setattr(eager_fn.objective, name, value)
            torch.testing.assert_close(compiled(compiled_fn), step(eager_fn))
    assert counter.frame_count == 1


# --- plain state: what writes a buffer is what the next call reads (issue 20) ---------------


def test_a_buffer_written_in_place_is_what_the_next_loss_uses() -> None:
    # EMA and checkpoint utilities write buffers through .data or named_buffers().
    r, d = torch.tensor([2.0, 4.0]), torch.tensor([10.0, 20.0])
    objective = Beta(0.5)
    objective(r, d)
    dict(objective.named_buffers())["beta"].data.fill_(0.25)
    assert objective(r, d).loss.item() == 15.0 + 0.25 * 3.0
    objective.get_buffer("beta").data.copy_(torch.tensor(2.0))
    torch._dynamo.reset()
    compiled = torch.compile(objective, backend="aot_eager", fullgraph=True)
    assert compiled(r, d).loss.item() == objective(r, d).loss.item() == 15.0 + 2.0 * 3.0
    torch._dynamo.reset()


def test_hyper_values_never_alias_the_buffer() -> None:
    objective = Beta(0.5)
    r, d = torch.tensor([2.0]), torch.tensor([10.0])
    v = objective(r, d).hyper["beta"]
    v *= 4
    assert objective.beta.item() == 0.5
    assert objective(r, d).loss.item() == 11.0


def test_assigning_the_adaptive_weight_restarts_the_adaptation_from_it() -> None:
    objective = TargetRate(2.0, adaptive=True, lr=0.5)
    objective.weight = 10.0
    assert objective.adaptive_weight.item() == 10.0
    r, d = torch.tensor([2.0], requires_grad=True), torch.tensor([1.0])
    out = objective(r, d)  # R = sigma: the weight is used and stays
    assert out.hyper["rate_weight"].item() == 10.0
    with pytest.raises(ValueError, match=r"weight must lie in \[0.001, max_weight\]"):
        objective.weight = 1e6
    with pytest.raises(TypeError, match="weight must be a number with adaptive=True"):
        objective.weight = Linear(1.0, 2.0, steps=3)
    assert objective.adaptive_weight.item() == 10.0 and objective.weight.item() == 10.0


def test_geco_average_is_seeded_by_its_first_update_at_any_step() -> None:
    geco = GECO(10.0, lr=0.1)
    geco.step.fill_(100)  # a carried-over or loaded step
    _drive(geco, [(1.0, 15.0)])
    assert geco.constraint_ma.item() == 5.0  # not 0.01 * 5 blended with 0
    fresh = GECO(10.0, lr=0.1)
    fresh.load_state_dict(geco.state_dict())  # the flag survives state_dict
    _drive(fresh, [(1.0, 13.0)])
    assert fresh.constraint_ma.item() == pytest.approx(0.99 * 5.0 + 0.01 * 3.0)


@pytest.mark.parametrize(
    ("build", "key", "value"),
    [
        (lambda: GECO(1.0), "multiplier", -1.0),
        (lambda: GECO(1.0), "constraint_ma", NAN),
        (lambda: Beta(1.0), "step", -3),
        (lambda: GECO(1.0), "skipped", -1),
        (lambda: RateController(1.0), "beta", 11.0),
        (lambda: TargetRate(1.0, adaptive=True), "adaptive_weight", 0.0),
        (lambda: Beta(1.0), "beta", -0.5),
        (lambda: TargetRate(1.0), "weight", NAN),
    ],
)
def test_loaded_state_out_of_range_is_refused(
    build: Callable[[], Objective], key: str, value: float
) -> None:
    objective = build()
    state = objective.state_dict()
    state[key] = torch.full_like(state[key], value)
    before = {k: v.clone() for k, v in objective.state_dict().items()}
    with pytest.raises(ValueError, match=rf"{key}.*{value}"):
        objective.load_state_dict(state)
    torch.testing.assert_close(objective.state_dict(), before)


def _nvae_like() -> Objective:
    return objectives.Beta(
        schedules.Clamp(schedules.Shifted(Linear(0.0, 1.0, steps=30), steps=2.0), min=1e-4)
    )


@pytest.mark.parametrize(
    ("saved", "other"),
    [
        (_nvae_like, lambda: objectives.Beta(schedules.Clamp(Linear(0.0, 1.0, steps=30), min=0.1))),
        (_nvae_like, lambda: objectives.Beta(Linear(0.0, 1.0, steps=30))),
        (
            lambda: objectives.Capacity(Linear(0.0, 5.0, steps=10), gamma=10.0),
            lambda: objectives.Capacity(Linear(0.0, 5.0, steps=9), gamma=10.0),
        ),
    ],
)
def test_a_refused_schedule_checkpoint_changes_no_state(
    saved: Callable[[], Objective], other: Callable[[], Objective]
) -> None:
    # A schedule inside refuses the checkpoint: the step must not have been copied first.
    source = saved()
    source.step.fill_(7)
    target = other()
    with pytest.raises(ValueError, match=r"checkpoint|saved with"):
        target.load_state_dict(source.state_dict())
    assert int(target.step) == 0


def test_a_schedule_checkpoint_of_other_steps_is_refused() -> None:
    state = Beta(Linear(0.0, 1.0, steps=100)).state_dict()
    with pytest.raises(ValueError, match=r"Linear was saved with steps=100 but .* steps=200"):
        Beta(Linear(0.0, 1.0, steps=200)).load_state_dict(state)
    with pytest.raises(ValueError, match="reduction='batch' but this one has reduction='example'"):
        TargetRate(1.0, reduction="example").load_state_dict(TargetRate(1.0).state_dict())


def test_built_under_inference_mode_then_trained() -> None:
    with torch.inference_mode():
        objectives = [GECO(10.0, lr=0.1), RateController(2.0), TargetRate(1.0, adaptive=True)]
    for objective in objectives:
        _drive(objective, [(4.0, 12.0)] * 2)
        assert objective.step.item() == 2
        objective.load_state_dict(objective.state_dict())


def test_load_state_dict_assign_keeps_hyperparameters_checked_and_used() -> None:
    objective = Beta(0.5)
    objective.load_state_dict(Beta(0.25).state_dict(), assign=True)
    assert objective.beta.shape == () and objective.beta.item() == 0.25
    assert objective(torch.tensor([2.0]), torch.tensor([1.0])).loss.item() == 1.5


# --- fuzzed state against independent references ------------------------------------------
# The references are written here from the formulas (plain Python floats for the
# controllers), never by calling rdloss twice.

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


# --- bad inputs: objectives and controllers -----------------------------------------------
# The catalogue's part for this module (tests/_catalogue.py); docs/errors.md lists its keys.


BAD_INPUTS: dict[str, Entry] = {
    "objective: weight schedule that stays at 0": (
        lambda: objectives.TargetRate(5.0, weight=schedules.Constant(0.0)),
        ValueError,
        r"weight must be > 0 at some step, got a Constant schedule that stays at 0",
    ),
    "objective: beta schedule that goes negative": (
        lambda: objectives.Beta(schedules.Linear(-1.0, 1.0, steps=10)),
        ValueError,
        r"beta must be >= 0 at every step, got a Linear schedule whose values reach -1.0",
    ),
    "objective: capacity schedule below zero": (
        lambda: objectives.Capacity(schedules.Cosine(-5.0, 25.0, steps=100)),
        ValueError,
        r"capacity must be >= 0 at every step, got a Cosine schedule whose values reach -5.0",
    ),
    "objective: zero capacity gamma": (
        lambda: objectives.Capacity(5.0, gamma=0.0),
        ValueError,
        r"gamma must be > 0, got 0.0",
    ),
    "objective: infinite target distortion": (
        lambda: objectives.TargetDistortion(float("inf")),
        ValueError,
        r"delta must be finite, got inf",
    ),
    "objective: unknown reduction": (
        lambda: objectives.TargetRate(1.0, reduction="mean"),  # type: ignore[arg-type]
        ValueError,
        r"reduction must be 'batch' or 'example', got 'mean'",
    ),
    "objective: unknown free-bits grouping": (
        lambda: objectives.FreeBits(per="dim"),  # type: ignore[arg-type]
        ValueError,
        r"per must be 'dimension', 'group', 'step' or 'total', got 'dim'",
    ),
    "objective: distortion batch differs from rate": (
        lambda: objectives.Beta(1.0)(torch.ones(3), torch.ones(5)),
        ValueError,
        r"distortion must have rate's shape \(B,\) = \(3,\), got \(5,\)",
    ),
    "objective: rate with a trailing unit dimension": (
        lambda: objectives.TargetRate(1.0)(torch.ones(3, 1), torch.ones(3)),
        ValueError,
        r"rate must have shape \(B,\), got \(3, 1\)",
    ),
    "objective: rate given as a float": (
        lambda: objectives.Beta(1.0)(1.0, torch.ones(3)),
        TypeError,
        r"rate must be a torch.Tensor of shape \(B,\), got float",
    ),
    "objective: weight of another batch size": (
        lambda: objectives.TargetDistortion(1.0)(
            torch.ones(3), torch.ones(3), weight=torch.ones(4)
        ),
        ValueError,
        r"weight must have rate's shape \(B,\) = \(3,\), got \(4,\)",
    ),
    "objective: free bits per dimension without per-dimension rates": (
        lambda: objectives.FreeBits(0.1)(torch.ones(3), torch.ones(3)),
        ValueError,
        r"FreeBits\(per='dimension'\) needs rate_per_dimension, which is None",
    ),
    "objective: per-dimension rates of another batch": (
        lambda: objectives.FreeBits(0.1)(
            torch.ones(3), torch.ones(3), rate_per_dimension=torch.ones(4, 2)
        ),
        ValueError,
        r"rate_per_dimension must have shape \(B, D\) with B = 3, got \(4, 2\)",
    ),
    "controller: GECO alpha of one": (
        lambda: objectives.GECO(1.0, alpha=1.0),
        ValueError,
        r"alpha must be in \[0, 1\), got 1.0",
    ),
    "controller: GECO multiplier outside its clamp": (
        lambda: objectives.GECO(1.0, multiplier=10.0, max_multiplier=5.0),
        ValueError,
        r"multiplier must lie in \[min_multiplier, max_multiplier\] = \[1e-06, 5.0\], got 10.0",
    ),
    "controller: GECO min multiplier above max": (
        lambda: objectives.GECO(1.0, min_multiplier=2.0, max_multiplier=1.0),
        ValueError,
        r"min_multiplier must be < max_multiplier, got 2.0 and 1.0",
    ),
    "controller: GECO lr schedule below zero": (
        lambda: objectives.GECO(1.0, lr=schedules.Linear(-0.1, 0.1, steps=10)),
        ValueError,
        r"lr must be >= 0 at every step, got a Linear schedule whose values reach -0.1",
    ),
    "controller: GECO distortion of another batch": (
        lambda: objectives.GECO(1.0)(torch.ones(3), torch.ones(5)),
        ValueError,
        r"distortion must have rate's shape \(B,\) = \(3,\), got \(5,\)",
    ),
    "controller: rate controller with equal beta bounds": (
        lambda: objectives.RateController(5.0, beta_min=1.0, beta_max=1.0),
        ValueError,
        r"beta_min must be < beta_max, got 1.0 and 1.0",
    ),
    "controller: negative proportional gain": (
        lambda: objectives.RateController(5.0, kp=-0.1),
        ValueError,
        r"kp must be >= 0, got -0.1",
    ),
    "controller: rate controller fed a 2-D rate": (
        lambda: objectives.RateController(5.0)(torch.ones(3, 2), torch.ones(3)),
        ValueError,
        r"rate must have shape \(B,\), got \(3, 2\)",
    ),
    "objective: negative beta assigned by attribute": (
        lambda: setattr(objectives.Beta(1.0), "beta", -3.0),
        ValueError,
        r"beta must be >= 0, got -3.0",
    ),
    "objective: text sigma assigned by attribute": (
        lambda: setattr(objectives.TargetRate(1.0), "sigma", "2"),
        TypeError,
        r"sigma must be a real number or an rdloss.schedules.Schedule, got str",
    ),
    "objective: reduction reassigned after construction": (
        lambda: setattr(objectives.TargetRate(1.0), "reduction", "example"),
        AttributeError,
        r"TargetRate.reduction is fixed at construction",
    ),
    "objective: adaptive target rate with a scheduled weight": (
        lambda: objectives.TargetRate(
            1.0, weight=schedules.Linear(1.0, 2.0, steps=5), adaptive=True
        ),
        TypeError,
        r"weight must be a number with adaptive=True \(the initial weight\), got a Linear",
    ),
    "objective: adaptive target rate weight above its clamp": (
        lambda: objectives.TargetRate(1.0, weight=20.0, adaptive=True, max_weight=10.0),
        ValueError,
        r"weight must lie in \[0.001, max_weight\] = \[0.001, 10.0\] with adaptive=True, got 20.0",
    ),
    "controller: unknown rate controller error mode": (
        lambda: objectives.RateController(1.0, error="percent"),
        ValueError,
        r"error must be 'relative' or 'absolute', got 'percent'",
    ),
    "controller: GECO alpha reassigned": (
        lambda: setattr(objectives.GECO(1.0), "alpha", 0.5),
        AttributeError,
        r"GECO.alpha is fixed at construction",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_named_error(case: str) -> None:
    expect_named_error(BAD_INPUTS[case])
