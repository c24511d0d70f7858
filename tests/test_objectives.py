"""Objectives: formulas and gradients against hand computations, state rules, compile."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor, nn
from torch._dynamo.testing import CompileCounterWithBackend

from rdloss import RateDistortionLoss, helpers, marginals
from rdloss.objectives import (
    GECO,
    Beta,
    Capacity,
    FreeBits,
    Objective,
    ObjectiveOutput,
    RateController,
    TargetDistortion,
    TargetRate,
)
from rdloss.schedules import Cosine, Cyclical, Linear, Schedule

F64 = torch.float64
# Fixed per-example terms: mean R = 4, mean D = 12; with weights (1, 2, 1): R = 3.75, D = 14.
RATE = (1.0, 3.0, 8.0)
DISTORTION = (10.0, 20.0, 6.0)
WEIGHT = (1.0, 2.0, 1.0)
# Per-dimension rates summing to RATE; column means 5.3 / 3 and 6.7 / 3.
RATE_PER_DIM = ((0.2, 0.8), (0.1, 2.9), (5.0, 3.0))


def _t(values) -> Tensor:
    return torch.tensor(values, dtype=F64, requires_grad=True)


def _call(objective: Objective, weighted: bool = False, *, rate=RATE, distortion=DISTORTION):
    """Run the objective on fresh leaves; return (output, d loss/d rate, d loss/d distortion)."""
    r, d = _t(rate), _t(distortion)
    out = objective(r, d, weight=torch.tensor(WEIGHT, dtype=F64) if weighted else None)
    grad_r, grad_d = torch.autograd.grad(out.loss, (r, d), allow_unused=True)
    zeros = torch.zeros(3, dtype=F64)
    return out, zeros if grad_r is None else grad_r, zeros if grad_d is None else grad_d


def _close(actual: Tensor, expected) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=F64))


# --- stateless formulas -------------------------------------------------------------------


def test_beta() -> None:
    out, gr, gd = _call(Beta(0.5))
    _close(out.loss, 12.0 + 0.5 * 4.0)
    _close(gr, [0.5 / 3] * 3)
    _close(gd, [1 / 3] * 3)
    _close(out.hyper["beta"], 0.5)


def test_beta_weighted() -> None:
    out, gr, gd = _call(Beta(0.5), weighted=True)
    _close(out.loss, 14.0 + 0.5 * 3.75)
    _close(gr, [0.5 * w / 4 for w in WEIGHT])
    _close(gd, [w / 4 for w in WEIGHT])


def test_target_rate_batch_is_the_papers() -> None:
    out, gr, gd = _call(TargetRate(5.0, weight=2.0))
    _close(out.loss, 12.0 + 2.0 * abs(5.0 - 4.0))
    _close(gr, [-2.0 / 3] * 3)  # below the target: the penalty pulls the rate up
    _close(gd, [1 / 3] * 3)
    _close(out.hyper["target_rate"], 5.0)


def test_target_rate_per_example_is_a_different_objective() -> None:
    out, gr, _ = _call(TargetRate(5.0, weight=2.0, reduction="example"))
    _close(out.loss, 12.0 + 2.0 * (4.0 + 2.0 + 3.0) / 3)
    _close(gr, [-2.0 / 3, -2.0 / 3, 2.0 / 3])


def test_target_distortion() -> None:
    out, gr, gd = _call(TargetDistortion(13.0, weight=2.0))
    _close(out.loss, 4.0 + 2.0 * abs(13.0 - 12.0))
    _close(gr, [1 / 3] * 3)
    _close(gd, [-2.0 / 3] * 3)
    out, _, gd = _call(TargetDistortion(13.0, weight=2.0, reduction="example"))
    _close(out.loss, 4.0 + 2.0 * (3.0 + 7.0 + 7.0) / 3)
    _close(gd, [-2.0 / 3, 2.0 / 3, -2.0 / 3])
    out, _, _ = _call(TargetDistortion(13.0), weighted=True)
    _close(out.loss, 3.75 + 1.0)


def test_capacity() -> None:
    out, gr, gd = _call(Capacity(3.0, gamma=10.0))
    _close(out.loss, 12.0 + 10.0 * abs(4.0 - 3.0))
    _close(gr, [10.0 / 3] * 3)
    _close(gd, [1 / 3] * 3)
    assert Capacity(1.0).gamma == 1000.0  # Burgess et al.'s default


def _free_bits(objective: FreeBits, weighted: bool = False):
    rpd = _t(RATE_PER_DIM)
    r, d = _t(RATE), _t(DISTORTION)
    weight = torch.tensor(WEIGHT, dtype=F64) if weighted else None
    out = objective(r, d, rate_per_dimension=rpd, weight=weight)
    grads = torch.autograd.grad(out.loss, (r, rpd), allow_unused=True)
    return out, grads


def test_free_bits_per_dimension() -> None:
    # Column means 1.7667 and 2.2333; lam = 2 clamps the first one only.
    out, (grad_rate, grad_rpd) = _free_bits(FreeBits(2.0))
    _close(out.loss, 12.0 + 2.0 + 6.7 / 3)
    assert grad_rate is None  # the per-example total does not enter
    _close(grad_rpd, [[0.0, 1 / 3]] * 3)  # no gradient to the clamped dimension
    _close(out.hyper["free_bits"], 2.0)
    _close(out.hyper["clamped_rate"], 2.0 + 6.7 / 3)


def test_free_bits_per_dimension_weighted() -> None:
    # Weighted column means: (0.2 + 0.2 + 5) / 4 = 1.35 and (0.8 + 5.8 + 3) / 4 = 2.4.
    out, (_, grad_rpd) = _free_bits(FreeBits(1.5), weighted=True)
    _close(out.loss, 14.0 + 1.5 + 2.4)
    _close(grad_rpd, [[0.0, w / 4] for w in WEIGHT])


def test_free_bits_total() -> None:
    out, gr, _ = _call(FreeBits(5.0, per="total"))
    _close(out.loss, 12.0 + 5.0)
    _close(gr, [0.0] * 3)
    out, gr, _ = _call(FreeBits(3.0, per="total"))
    _close(out.loss, 12.0 + 4.0)
    _close(gr, [1 / 3] * 3)


def test_free_bits_needs_per_dimension_rate() -> None:
    with pytest.raises(ValueError, match=r"rate_per_dimension.*per='total'"):
        FreeBits(0.25)(_t(RATE), _t(DISTORTION))
    with pytest.raises(ValueError, match=r"shape \(B, D\) with B = 3, got \(2, 2\)"):
        FreeBits(0.25)(_t(RATE), _t(DISTORTION), rate_per_dimension=torch.ones(2, 2))


def test_free_bits_reported_rate_is_unclamped() -> None:
    loss_fn = RateDistortionLoss(objective=FreeBits(10.0))
    q = helpers.normal(torch.zeros(4, 3), logvar=torch.zeros(4, 3))  # rate 0 everywhere
    p = helpers.bernoulli(logits=torch.zeros(4, 5))
    out = loss_fn(torch.ones(4, 5), posterior=q, likelihood=p)
    metrics = out.metrics()
    assert metrics["rate"] == 0.0
    assert metrics["clamped_rate"] == pytest.approx(30.0)
    assert metrics["loss"] == pytest.approx(5 * math.log(2) + 30.0)


@pytest.mark.parametrize(
    "objective",
    [
        Beta(Cyclical(steps=4)),
        TargetRate(2.0),
        TargetDistortion(5.0),
        FreeBits(0.5, per="total"),
        Capacity(1.0, gamma=10.0),
        GECO(5.0),
        RateController(2.0),
    ],
    ids=lambda o: type(o).__name__,
)
def test_composes_with_a_mixture_marginal(objective: Objective) -> None:
    torch.manual_seed(0)
    loss_fn = RateDistortionLoss(marginals.GaussianMixture(3, n_components=5), objective)
    mu = torch.randn(6, 3, requires_grad=True)
    decoder = nn.Linear(3, 5)
    out = loss_fn(
        torch.ones(6, 5),
        posterior=helpers.normal(mu, logvar=torch.zeros(6, 3)),
        decoder=lambda z: helpers.bernoulli(logits=decoder(z)),
    )
    out.loss.backward()
    assert out.estimator == "mc" and mu.grad is not None
    assert torch.isfinite(mu.grad).all() and loss_fn.objective.step.item() == 1
    assert set(out.hyper) <= set(out.metrics())


def test_free_bits_per_dimension_with_a_mixture_marginal_says_what_to_do() -> None:
    loss_fn = RateDistortionLoss(marginals.GaussianMixture(3, n_components=5), FreeBits(0.5))
    q = helpers.normal(torch.zeros(6, 3), logvar=torch.zeros(6, 3))
    with pytest.raises(ValueError, match=r"use FreeBits\(per='total'\)"):
        loss_fn(
            torch.ones(6, 5),
            posterior=q,
            decoder=lambda z: helpers.bernoulli(logits=z.sum(-1, keepdim=True).expand(-1, 5)),
        )


# --- stateful objectives: hand-computed sequences -----------------------------------------


def test_geco_sequence() -> None:
    geco = GECO(11.0, alpha=0.5, lr=0.1).double()
    # Step 0: C = 12 - 11 = 1 initialises the moving average; loss = R + 1 * 1.
    out, gr, gd = _call(geco)
    _close(out.loss, 4.0 + 1.0)
    _close(gr, [1 / 3] * 3)
    _close(gd, [1 / 3] * 3)
    _close(out.hyper["multiplier"], 1.0)
    _close(geco.multiplier, math.exp(0.1))
    # Step 1: C = 9 - 11 = -2, C_ma = 0.5 * 1 + 0.5 * (-2) = -0.5. The value uses C_ma, the
    # gradient the current batch's constraint.
    out, gr, gd = _call(geco, distortion=(8.0, 9.0, 10.0))
    _close(out.loss, 4.0 + math.exp(0.1) * -0.5)
    _close(gd, [math.exp(0.1) / 3] * 3)
    _close(out.hyper["constraint_ma"], -0.5)
    _close(geco.multiplier, math.exp(0.1 - 0.05))
    assert geco.step.item() == 2
    # Evaluation: the batch's own constraint, nothing updates.
    geco.eval()
    out, _, _ = _call(geco, distortion=(8.0, 9.0, 10.0))
    _close(out.loss, 4.0 + math.exp(0.05) * -2.0)
    _close(geco.multiplier, math.exp(0.05))
    _close(geco.constraint_ma, -0.5)
    assert geco.step.item() == 2


def test_geco_multiplier_stays_in_its_bounds() -> None:
    geco = GECO(0.0, lr=1.0, max_multiplier=1.05).double()
    _call(geco)  # exp(12) is clamped
    _close(geco.multiplier, 1.05)
    geco = GECO(1000.0, lr=10.0, min_multiplier=1e-3).double()
    _call(geco)  # exp(-9880) underflows to 0 and is clamped: lambda stays positive
    _close(geco.multiplier, 1e-3)


def test_rate_controller_sequence_with_anti_windup() -> None:
    controller = RateController(
        5.0, kp=0.5, ki=0.1, beta_min=0.1, beta_max=1.0, error="absolute"
    ).double()

    def p(error: float) -> float:
        return 0.5 / (1.0 + math.exp(error))

    # Step 0: e = 5 - 4 = 1; I = -0.1; beta = P + I + beta_min.
    out, gr, gd = _call(controller)
    beta0 = p(1.0) - 0.1 + 0.1
    _close(out.hyper["beta"], beta0)
    _close(out.loss, 12.0 + beta0 * 4.0)
    _close(gr, [beta0 / 3] * 3)  # beta carries no gradient
    _close(gd, [1 / 3] * 3)
    # Step 1: R = 16, e = -11; I - Ki e = 1.0 would overshoot beta_max: the integrator stops
    # where beta reaches the bound, I = 0.9 - P.
    out, _, _ = _call(controller, rate=(4.0, 12.0, 32.0))
    _close(out.hyper["beta"], 1.0)
    _close(controller.integral, 0.9 - p(-11.0))
    # Step 2: the error changes sign and beta leaves the bound at once.
    out, _, _ = _call(controller)
    _close(out.hyper["beta"], p(1.0) + (0.9 - p(-11.0) - 0.1) + 0.1)
    # Evaluation: the stored beta, nothing updates.
    controller.eval()
    stored = controller.beta.clone()
    out, _, _ = _call(controller, rate=(40.0, 40.0, 40.0))
    _close(out.hyper["beta"], stored)
    _close(out.loss, 12.0 + stored * 40.0)
    assert controller.step.item() == 3


def test_rate_controller_holds_beta_in_bounds_at_the_lower_end() -> None:
    controller = RateController(100.0, kp=0.01, ki=1.0, beta_min=0.2, error="absolute").double()
    for _ in range(3):
        out, _, _ = _call(controller)
        _close(out.hyper["beta"], 0.2)
    _close(controller.integral, -0.01 / (1.0 + math.exp(96.0)))


# --- schedules inside objectives, and when state advances ---------------------------------


def test_beta_warm_up_schedule_advances_per_training_call() -> None:
    objective = Beta(Linear(0.0, 1.0, steps=4)).double()
    betas = [_call(objective)[0].hyper["beta"].item() for _ in range(6)]
    assert betas == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    _, gr, _ = _call(Beta(Linear(0.0, 1.0, steps=4)).double())
    _close(gr, [0.0] * 3)  # step 0 of the warm-up: no rate gradient


@pytest.mark.parametrize(
    "objective",
    [
        TargetRate(Linear(1.0, 9.0, steps=8), weight=Cosine(1.0, 3.0, steps=8)),
        TargetDistortion(Linear(1.0, 9.0, steps=8)),
        Capacity(Linear(0.0, 25.0, steps=8), gamma=Linear(10.0, 20.0, steps=8)),
        FreeBits(Linear(0.0, 3.0, steps=8), per="total"),
        GECO(Linear(20.0, 5.0, steps=8), lr=Linear(0.0, 0.1, steps=8)),
        RateController(Linear(2.0, 6.0, steps=8), kp=Linear(0.0, 0.1, steps=8), ki=0.01),
    ],
    ids=lambda o: type(o).__name__,
)
def test_every_hyperparameter_takes_a_schedule(objective: Objective) -> None:
    objective.double()
    outs = [_call(objective)[0] for _ in range(3)]
    assert objective.step.item() == 3
    # The scheduled entries of the hyper dict move with the step.
    assert any(
        not torch.equal(outs[0].hyper[k], outs[2].hyper[k])
        for k in outs[0].hyper
        if k not in ("multiplier", "constraint_ma")
    )


def test_scheduled_loss_matches_constant_at_that_step() -> None:
    scheduled = Capacity(Linear(0.0, 8.0, steps=4), gamma=Linear(10.0, 30.0, steps=4)).double()
    for _ in range(2):
        _call(scheduled)
    out, gr, _ = _call(scheduled)  # step 2: capacity 4, gamma 20
    expected, egr, _ = _call(Capacity(4.0, gamma=20.0))
    _close(out.loss, expected.loss)
    _close(gr, egr)


def test_custom_schedule_subclass() -> None:
    class Halving(Schedule):
        def forward(self, step: Tensor) -> Tensor:
            return 0.5 ** step.to(torch.float64)

    objective = Beta(Halving())
    assert [_call(objective)[0].hyper["beta"].item() for _ in range(3)] == [1.0, 0.5, 0.25]


@pytest.mark.parametrize("mode", ["eval", "no_grad", "inference_mode"])
def test_state_does_not_advance_outside_training(mode: str) -> None:
    objectives = [
        Beta(Cyclical(steps=8)),
        GECO(5.0, lr=0.1),
        RateController(2.0, kp=0.1, ki=0.1),
    ]
    for objective in objectives:
        objective.double()
        before = {k: v.clone() for k, v in objective.state_dict().items()}
        r, d = torch.tensor(RATE, dtype=F64), torch.tensor(DISTORTION, dtype=F64)
        if mode == "eval":
            objective.eval()
            objective(r, d)
        elif mode == "no_grad":
            with torch.no_grad():
                objective(r, d)
        else:
            with torch.inference_mode():
                objective(r, d)
        for key, value in objective.state_dict().items():
            torch.testing.assert_close(value, before[key], rtol=0, atol=0)
        objective.train()
        objective(r, d)  # and it does advance in training
        assert objective.step.item() == 1


def test_state_lives_in_persistent_buffers() -> None:
    # Numeric hyperparameters are buffers too; schedules are submodules that record only
    # their settings; every objective records its own settings in _extra_state.
    assert set(Beta(0.5).state_dict()) == {"step", "beta", "_extra_state"}
    assert set(GECO(1.0).state_dict()) == {
        "step",
        "multiplier",
        "constraint_ma",
        "seeded",
        "skipped",
        "target_distortion",
        "lr",
        "_extra_state",
    }
    assert set(RateController(1.0).state_dict()) == {
        "step",
        "beta",
        "integral",
        "skipped",
        "target_rate",
        "kp",
        "ki",
        "_extra_state",
    }
    assert set(Capacity(Linear(0.0, 1.0, steps=3)).state_dict()) == {
        "step",
        "gamma",
        "_extra_state",
        "capacity._extra_state",
    }
    loss_fn = RateDistortionLoss(objective=GECO(1.0))
    assert "objective.multiplier" in loss_fn.state_dict()


def test_hyper_reaches_the_loss_output_and_metrics() -> None:
    loss_fn = RateDistortionLoss(objective=RateController(3.0, kp=0.1, ki=0.1))
    q = helpers.normal(torch.ones(4, 3), logvar=torch.zeros(4, 3))
    p = helpers.bernoulli(logits=torch.zeros(4, 5))
    out = loss_fn(torch.ones(4, 5), posterior=q, likelihood=p)
    assert set(out.hyper) == {"beta", "target_rate"}
    metrics = out.metrics()
    assert metrics["beta"] == pytest.approx(out.hyper["beta"].item())
    assert metrics["rate"] == pytest.approx(1.5)  # the rate itself is not overridden


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: Beta(-1.0), ValueError, "beta must be >= 0, got -1.0"),
        (lambda: Beta("0.5"), TypeError, "beta must be a real number or an rdloss.schedules"),
        (lambda: Beta(lambda step: step), TypeError, "got function"),
        (lambda: TargetRate(1.0, weight=0.0), ValueError, "weight must be > 0"),
        (lambda: TargetRate(1.0, reduction="mean"), ValueError, "'batch' or 'example', got 'mean'"),
        (lambda: TargetDistortion(math.nan), ValueError, "delta must be finite"),
        (lambda: FreeBits(0.25, per="dim"), ValueError, "per must be 'dimension', 'group'"),  # type: ignore[arg-type]
        (lambda: Capacity(1.0, gamma=0.0), ValueError, "gamma must be > 0"),
        (lambda: GECO(1.0, alpha=1.0), ValueError, r"alpha must be in \[0, 1\), got 1.0"),
        (lambda: GECO(1.0, lr=0.0), ValueError, "lr must be > 0"),
        (lambda: GECO(1.0, multiplier=2e6), ValueError, "multiplier must lie in"),
        (lambda: GECO(1.0, min_multiplier=0.0), ValueError, "min_multiplier must be > 0"),
        (
            lambda: RateController(1.0, beta_min=1.0, beta_max=1.0),
            ValueError,
            "beta_min must be < beta_max",
        ),
        (lambda: RateController(1.0, ki=-1e-4), ValueError, "ki must be >= 0"),
    ],
)
def test_validation(build, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        build()


def test_repr() -> None:
    assert repr(Beta(0.5)) == "Beta(beta=0.5)"
    text = repr(Capacity(Linear(0.0, 25.0, steps=100_000)))
    assert "gamma=1000.0" in text and "(capacity): Linear(start=0.0, end=25.0" in text
    assert "reduction='batch'" in repr(TargetRate(1.0))


# --- torch.compile ------------------------------------------------------------------------

COMPILED = [
    Beta(0.5),
    Beta(Cyclical(steps=6)),
    TargetRate(3.0),
    TargetRate(3.0, reduction="example"),
    TargetDistortion(Linear(20.0, 10.0, steps=6), weight=2.0),
    FreeBits(0.25),
    FreeBits(Cosine(0.0, 2.0, steps=6), per="total"),
    Capacity(Linear(0.0, 25.0, steps=6), gamma=10.0),
    GECO(10.0, lr=1e-2),
    RateController(3.0, kp=0.1, ki=0.01),
]


@pytest.mark.parametrize("objective", COMPILED, ids=lambda o: repr(o).split("\n")[0])
def test_compiles_fullgraph_without_recompiling(objective: Objective) -> None:
    torch._dynamo.reset()  # count this objective's graphs only
    torch.manual_seed(0)
    mu = torch.randn(8, 4, requires_grad=True)
    logvar = (0.1 * torch.randn(8, 4)).requires_grad_()
    logits = torch.randn(8, 12, requires_grad=True)
    x = torch.randint(0, 2, (8, 12)).float()
    eager_fn = RateDistortionLoss(objective=copy.deepcopy(objective))
    compiled_fn = RateDistortionLoss(objective=copy.deepcopy(objective))

    def step(loss_fn: RateDistortionLoss):
        q = helpers.normal(mu, logvar=logvar)
        out = loss_fn(x, posterior=q, likelihood=helpers.bernoulli(logits=logits))
        return out.loss, out.hyper

    with torch.no_grad():  # warm torch.distributions' KL dispatch cache outside the trace
        eager_fn.eval()
        step(eager_fn)
        eager_fn.train()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    for _ in range(6):
        loss, hyper = compiled(compiled_fn)
        expected_loss, expected_hyper = step(eager_fn)
        torch.testing.assert_close(loss, expected_loss)
        torch.testing.assert_close(hyper, expected_hyper)
        loss.backward()
    assert counter.frame_count == 1
    torch.testing.assert_close(compiled_fn.state_dict(), eager_fn.state_dict())
    assert compiled_fn.objective.step.item() == 6


def test_constant_hyperparameters_follow_dtype_and_survive_inference_mode() -> None:
    # Hyperparameters follow the terms' dtype, and a first call under inference_mode must
    # not leave anything behind that a later training step's backward would trip over.
    objective = Beta(0.5)
    rate, distortion = torch.tensor([2.0, 4.0]), torch.tensor([10.0, 20.0])
    with torch.inference_mode():
        objective(rate, distortion)
    rate64 = rate.double().requires_grad_()
    out = objective(rate64, distortion.double())
    out.loss.backward()
    assert out.hyper["beta"].dtype == torch.float64
    assert rate64.grad is not None
    torch.testing.assert_close(rate64.grad, torch.full((2,), 0.25, dtype=torch.float64))
    rate32 = rate.clone().requires_grad_()
    objective(rate32, distortion).loss.backward()
    assert objective(rate, distortion).hyper["beta"].dtype == torch.float32
    torch.testing.assert_close(rate32.grad, torch.full((2,), 0.25))


def test_sync_dist_all_reduces_only_while_training(monkeypatch: pytest.MonkeyPatch) -> None:
    # Evaluation must stay local: one process evaluating alone would wait forever on a
    # collective the others never join.
    import rdloss.objectives._base as base

    calls: list[int] = []

    def recording(values: Tensor, weight: Tensor | None = None) -> Tensor:
        calls.append(values.shape[0])
        return base.batch_mean(values, weight)

    monkeypatch.setattr(base, "global_batch_mean", recording)
    loss_fn = RateDistortionLoss(objective=TargetRate(1.0), sync_dist=True)
    assert "sync_dist=True" in repr(loss_fn)
    x = torch.ones(2, 3)
    q = helpers.normal(torch.zeros(2, 2, requires_grad=True), logvar=torch.zeros(2, 2))
    p = helpers.bernoulli(logits=torch.zeros(2, 3))
    loss_fn(x, posterior=q, likelihood=p)
    assert calls == [2, 2]  # the mean rate and the mean distortion
    loss_fn.eval()
    loss_fn(x, posterior=q, likelihood=p)
    loss_fn.train()
    with torch.no_grad():
        loss_fn(x, posterior=q, likelihood=p)
    assert calls == [2, 2]


def test_an_objective_shared_by_two_losses_follows_each_losss_sync_dist(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Issue 13: the flag used to live on the objective, so the second loss reset the first's.
    import rdloss.objectives._base as base

    calls: list[int] = []

    def recording(values: Tensor, weight: Tensor | None = None) -> Tensor:
        calls.append(values.shape[0])
        return base.batch_mean(values, weight)

    monkeypatch.setattr(base, "global_batch_mean", recording)
    shared = TargetRate(1.0)
    synced = RateDistortionLoss(objective=shared, sync_dist=True)
    local = RateDistortionLoss(objective=shared)
    x = torch.ones(2, 3)
    q = helpers.normal(torch.zeros(2, 2, requires_grad=True), logvar=torch.zeros(2, 2))
    p = helpers.bernoulli(logits=torch.zeros(2, 3))
    synced(x, posterior=q, likelihood=p)
    assert calls == [2, 2]
    local(x, posterior=q, likelihood=p)
    assert calls == [2, 2]  # the local loss stays local
    synced(x, posterior=q, likelihood=p)
    assert calls == [2, 2, 2, 2]  # and the synced one stays synced
    assert shared.sync_dist is False and "sync_dist=True" in repr(synced)


def test_a_user_objective_gets_the_checks_and_the_step_from_forward() -> None:
    class SquaredTargetRate(Objective):
        def compute(
            self,
            rate: Tensor,
            distortion: Tensor,
            *,
            rate_per_dimension: Tensor | None = None,
            weight: Tensor | None = None,
        ) -> ObjectiveOutput:
            loss = self.mean(distortion, weight) + (2.0 - self.mean(rate, weight)).square()
            return ObjectiveOutput(loss, {})

    objective = SquaredTargetRate()
    out = objective(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 5.0]))
    torch.testing.assert_close(out.loss, torch.tensor(4.0 + 0.25))
    assert int(objective.step) == 1
    with pytest.raises(ValueError, match=r"distortion must have rate's shape"):
        objective(torch.ones(3), torch.ones(4))
    assert int(objective.step) == 1  # a rejected call does not count


def test_a_hyperparameter_read_once_per_change_is_never_stale() -> None:
    # The buffer is read on every call (no copy kept aside): every way it changes must
    # reach the next call, and a returned value must not change after.
    objective = Beta(0.5)
    rate, distortion = torch.tensor([2.0, 4.0]), torch.tensor([10.0, 20.0])
    first = objective(rate, distortion).hyper["beta"]
    assert objective(rate, distortion).hyper["beta"] is not first  # a fresh tensor per call
    objective.beta = 0.25
    assert float(objective(rate, distortion).hyper["beta"]) == 0.25
    assert float(first) == 0.5
    state = Beta(0.125).state_dict()
    objective.load_state_dict(state)
    assert float(objective(rate, distortion).hyper["beta"]) == 0.125
    with torch.no_grad():
        objective.get_buffer("beta").mul_(2.0)
    assert float(objective(rate, distortion).hyper["beta"]) == 0.25
    # assign=True sets each buffer through the attribute (it used to be rejected).
    objective.load_state_dict(Beta(0.0625).state_dict(), assign=True)
    assert float(objective(rate, distortion).hyper["beta"]) == 0.0625
    objective.beta = 0.25
    objective.double()  # the buffer is replaced (stays float64): the copy follows it
    out = objective(rate.double(), distortion.double())
    assert out.hyper["beta"].dtype == torch.float64
    assert float(out.hyper["beta"]) == 0.25
    torch.testing.assert_close(out.loss, torch.tensor(15.0 + 0.25 * 3.0, dtype=torch.float64))
