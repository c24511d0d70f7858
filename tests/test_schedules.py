"""Schedules against independent step-by-step computations.

The references are the math module, Fu et al.'s cyclical annealing, and the formulas of the
published code that composed schedules reproduce: NVAE's KL coefficient and Pyro's deep
Markov model annealing, written here from the source at the commits cited.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from _catalogue import Entry, expect_named_error
from torch._dynamo.testing import CompileCounterWithBackend

from rdloss import RateDistortionLoss, helpers, schedules
from rdloss.objectives import GECO, Beta
from rdloss.schedules import (
    Clamp,
    Constant,
    Cosine,
    Cyclical,
    Linear,
    Schedule,
    Shifted,
    Sigmoid,
)


def _values(schedule: Schedule, steps: range, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.stack([schedule(torch.tensor(t, dtype=dtype)) for t in steps])


def _expected(fn, steps: range) -> torch.Tensor:
    return torch.tensor([fn(t) for t in steps], dtype=torch.float64)


def frange_cycle_linear(n_iter, start=0.0, stop=1.0, n_cycle=4, ratio=0.5):
    """Fu et al. (2019)'s reference implementation of cyclical annealing, transcribed."""
    values = [stop] * n_iter
    period = n_iter / n_cycle
    step = (stop - start) / (period * ratio)
    for c in range(n_cycle):
        v, i = start, 0
        while v <= stop and int(i + c * period) < n_iter:
            values[int(i + c * period)] = v
            v += step
            i += 1
    return torch.tensor(values, dtype=torch.float64)


def test_constant() -> None:
    torch.testing.assert_close(
        _values(Constant(0.25), range(5)), torch.full((5,), 0.25, dtype=torch.float64)
    )


@pytest.mark.parametrize(
    ("start", "end", "steps"), [(0.0, 1.0, 10), (2.0, -1.5, 7), (0.0, 25.0, 1)]
)
def test_linear(start: float, end: float, steps: int) -> None:
    ts = range(steps + 5)
    expected = _expected(lambda t: start + (end - start) * min(t / steps, 1.0), ts)
    torch.testing.assert_close(_values(Linear(start, end, steps=steps), ts), expected)
    assert Linear(start, end, steps=steps)(torch.tensor(steps + 100)).item() == end


@pytest.mark.parametrize(
    ("n_iter", "start", "stop", "cycles", "ratio"),
    [
        (80, 0.0, 1.0, 4, 0.5),
        (60, 0.0, 1.0, 3, 0.75),
        (40, 0.2, 1.0, 2, 1.0),
        (30, 0.0, 2.0, 1, 0.2),
    ],
)
def test_cyclical_matches_fu_reference(
    n_iter: int, start: float, stop: float, cycles: int, ratio: float
) -> None:
    schedule = Cyclical(start, stop, steps=n_iter, cycles=cycles, ratio=ratio)
    expected = frange_cycle_linear(n_iter, start, stop, cycles, ratio)
    torch.testing.assert_close(_values(schedule, range(n_iter)), expected, rtol=0, atol=1e-12)
    # After the last cycle the value holds at the end.
    assert schedule(torch.tensor(n_iter + 3)).item() == stop


def test_cyclical_defaults_are_the_papers() -> None:
    schedule = Cyclical(steps=100)
    assert (schedule.cycles, schedule.ratio, schedule.start, schedule.end) == (4, 0.5, 0.0, 1.0)


@pytest.mark.parametrize(("steepness", "steps"), [(10.0, 100), (12.5, 5000)])
def test_sigmoid(steepness: float, steps: int) -> None:
    schedule = Sigmoid(0.5, 2.0, steps=steps, steepness=steepness)
    ts = range(0, 2 * steps, max(1, steps // 20))
    expected = _expected(lambda t: 0.5 + 1.5 / (1.0 + math.exp(-steepness * (t / steps - 0.5))), ts)
    torch.testing.assert_close(_values(schedule, ts), expected)


def test_sigmoid_is_bowmans_logistic() -> None:
    # Bowman et al.: 1 / (1 + exp(-k (t - t0))) with k = 0.0025, t0 = 2500.
    schedule = Sigmoid(0.0, 1.0, steps=5000, steepness=0.0025 * 5000)
    ts = range(0, 8000, 250)
    expected = _expected(lambda t: 1.0 / (1.0 + math.exp(-0.0025 * (t - 2500))), ts)
    torch.testing.assert_close(_values(schedule, ts), expected)


def test_cosine() -> None:
    ts = range(15)
    expected = _expected(lambda t: 1.0 + 3.0 * 0.5 * (1 - math.cos(math.pi * min(t / 10, 1))), ts)
    torch.testing.assert_close(_values(Cosine(1.0, 4.0, steps=10), ts), expected)


def test_dtype_follows_floating_step_else_default() -> None:
    schedule = Linear(0.0, 1.0, steps=3)
    assert schedule(torch.tensor(1, dtype=torch.float64)).dtype == torch.float64
    assert schedule(torch.tensor(1)).dtype == torch.get_default_dtype()
    assert schedule(torch.tensor(1)).shape == ()


@pytest.mark.parametrize(
    "schedule",
    [
        Constant(1.0),
        Linear(0.0, 1.0, steps=3),
        Cyclical(steps=8),
        Sigmoid(0.0, 1.0, steps=3),
        Cosine(0.0, 1.0, steps=3),
    ],
)
def test_schedules_hold_no_state(schedule: Schedule) -> None:
    # Only their settings, to refuse a checkpoint of a different schedule.
    assert list(schedule.state_dict()) == ["_extra_state"]
    assert list(schedule.buffers()) == []
    assert list(schedule.parameters()) == []


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: Linear(0.0, 1.0, steps=0), ValueError, "steps must be >= 1, got 0"),
        (lambda: Sigmoid(0.0, 1.0, steps=2.5), TypeError, r"steps must be an int \(or a float"),
        (lambda: Linear(0.0, 1.0, steps=True), TypeError, "steps must be an int, got bool"),
        (lambda: Linear("0", 1.0, steps=3), TypeError, "start must be a real number, got str"),
        (lambda: Cosine(0.0, math.nan, steps=3), ValueError, "end must be finite"),
        (lambda: Cyclical(steps=8, ratio=0.0), ValueError, r"ratio must be in \(0, 1\]"),
        (lambda: Cyclical(steps=8, ratio=1.5), ValueError, r"ratio must be in \(0, 1\]"),
        (lambda: Cyclical(steps=8, cycles=0), ValueError, "cycles must be >= 1"),
        (lambda: Sigmoid(0.0, 1.0, steps=3, steepness=0.0), ValueError, "steepness must be > 0"),
        (lambda: Constant(math.inf), ValueError, "value must be finite"),
    ],
)
def test_validation(build, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        build()


def test_repr_shows_arguments() -> None:
    assert repr(Cyclical(steps=8)) == ("Cyclical(start=0.0, end=1.0, steps=8, cycles=4, ratio=0.5)")


def test_compiles_once_for_all_steps() -> None:
    schedule = Cyclical(steps=12, cycles=3, ratio=0.5)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(schedule, backend=counter, fullgraph=True)
    for t in range(20):
        step = torch.tensor(float(t))
        torch.testing.assert_close(compiled(step), schedule(step))
    assert counter.frame_count == 1


def test_steps_given_as_an_integer_valued_float() -> None:
    # AntixK's PyTorch-VAE configs write counts as 1e5; YAML reads them as floats.
    schedule = Linear(0.0, 1.0, steps=1e5)
    assert schedule.steps == 100_000 and isinstance(schedule.steps, int)
    torch.testing.assert_close(schedule(torch.tensor(25_000)), torch.tensor(0.25))
    assert Cyclical(steps=8e1).steps == 80


def test_steps_past_float32_precision_are_exact() -> None:
    # 2**25 - 1 is the last step of the second cycle (value 1); float32 rounds it to 2**25,
    # the start of the third cycle (value 0).
    schedule = Cyclical(steps=2**26, cycles=4)
    assert schedule(torch.tensor(2**25 - 1)).item() == 1.0
    objective = Beta(schedule)
    objective.step.fill_(2**25 - 1)
    assert objective(torch.tensor([1.0]), torch.tensor([0.0])).hyper["beta"].item() == 1.0


def test_objectives_import_downwards_only() -> None:
    import ast

    import rdloss.objectives

    for path in Path(rdloss.objectives.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module != "rdloss.functional", path.name
                if path.name == "_hyperparameters.py":  # below _base: imports go one way
                    assert not node.module.startswith("rdloss.objectives"), node.module


# --- composed schedules: published schedules reproduced -----------------------------------
# NVAE (Vahdat & Kautz, 2020), NVlabs/NVAE at 9fc1a288fb831c87d93a4e2663bc30ccf9225b29.
# utils.py, kl_coeff(step, total_step, constant_step, min_kl_coeff): the coefficient is
#     max(min((step - constant_step) / total_step, 1), min_kl_coeff).
# train.py calls it once per iteration with the global step (0 at the first iteration),
# total_step = kl_anneal_portion * num_total_iter, constant_step = kl_const_portion *
# num_total_iter and min_kl_coeff = kl_const_coeff, where num_total_iter =
# len(train_queue) * epochs; the defaults are 0.3, 0.0001 and 0.0001.

NVAE_ANNEAL_PORTION, NVAE_CONST_PORTION, NVAE_CONST_COEFF = 0.3, 0.0001, 0.0001


def nvae_kl_coeff(step: int, total_step: float, constant_step: float, min_coeff: float) -> float:
    return max(min((step - constant_step) / total_step, 1.0), min_coeff)


def nvae_run(num_total_iter: int) -> list[float]:
    """NVAE's coefficient at every iteration of a run, plus a few after it."""
    total = NVAE_ANNEAL_PORTION * num_total_iter
    constant = NVAE_CONST_PORTION * num_total_iter
    return [
        nvae_kl_coeff(step, total, constant, NVAE_CONST_COEFF) for step in range(num_total_iter + 5)
    ]


def nvae_schedule(n: int) -> Schedule:
    """The one line of docs/objectives.md."""
    return Clamp(Shifted(Linear(0.0, 1.0, steps=0.3 * n), steps=0.0001 * n), min=1e-4)


# Pyro's deep Markov model example, pyro-ppl/pyro at ff6ae1c9572591791aae8842bcd702fcf0b46fd6,
# examples/dmm.py, process_minibatch(epoch, which_mini_batch, ...): while annealing_epochs
# > 0 and epoch < annealing_epochs the KL scale is
#     m + (1 - m) * (which_mini_batch + epoch * N_mini_batches + 1)
#                   / (annealing_epochs * N_mini_batches)
# with m = minimum_annealing_factor, and 1.0 afterwards. Defaults: annealing_epochs=1000,
# minimum_annealing_factor=0.2, mini-batches of 20 (N_mini_batches rounds up: 229 JSB
# Chorales training sequences give 12).


ULP = 2.0**-53  # one unit in the last place of a float64 in [0.5, 1)


def pyro_annealing_factor(
    epoch: int, which_mini_batch: int, n_mini_batches: int, annealing_epochs: int, m: float
) -> float:
    if annealing_epochs > 0 and epoch < annealing_epochs:
        done = which_mini_batch + epoch * n_mini_batches + 1
        return m + (1.0 - m) * (float(done) / float(annealing_epochs * n_mini_batches))
    return 1.0


def pyro_schedule(annealing_epochs: int, n_mini_batches: int, m: float = 0.2) -> Schedule:
    """The one line of docs/objectives.md: one step ahead of `Linear`'s t / T."""
    return Shifted(Linear(m, 1.0, steps=annealing_epochs * n_mini_batches), steps=-1)


def _train_beta(objective: Beta, steps: int) -> torch.Tensor:
    """``beta`` of each training call, the step counted by the objective."""
    rate = torch.ones(2, dtype=torch.float64, requires_grad=True)
    return torch.stack([objective(rate, torch.zeros(2)).hyper["beta"] for _ in range(steps)])


def test_nvae_kl_coeff_every_step_of_a_short_run() -> None:
    # 25 batches x 40 epochs; the objective counts the steps and evaluates in float64.
    want = torch.tensor(nvae_run(1000), dtype=torch.float64)
    got = _train_beta(Beta(nvae_schedule(1000)), len(want))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("batches", "epochs"),
    [
        (150, 400),  # NVAE's README, MNIST: 60 000 images over 2 GPUs in batches of 200
        (195, 400),  # CIFAR-10: 8 GPUs, batches of 32, drop_last
        (1271, 90),  # CelebA 64: 162 770 images, 8 GPUs, batches of 16
        (7, 10),
        (1234, 1),  # 0.3 n = 370.2 steps: a fractional ramp length
        (7, 1),  # 2.1 steps
    ],
)
def test_nvae_kl_coeff_whole_published_runs(batches: int, epochs: int) -> None:
    # Every step at once: the pieces are elementwise, so a (T,) step tensor gives the
    # values of T separate calls (checked on a sample).
    n = batches * epochs
    schedule = nvae_schedule(n)
    want = torch.tensor(nvae_run(n), dtype=torch.float64)
    got = schedule(torch.arange(len(want), dtype=torch.float64))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for t in (0, 1, round(0.0001 * n), round(0.3 * n), n - 1):
        assert schedule(torch.tensor(t, dtype=torch.float64)).item() == want[t].item()
    assert (want == NVAE_CONST_COEFF).sum() >= 1 and want[-1] == 1.0  # floor, then 1


@pytest.mark.parametrize("steps", [0.0, -2.5, float("inf"), float("nan")])
def test_a_ramp_length_must_be_positive_and_finite(steps: float) -> None:
    with pytest.raises((ValueError, TypeError), match="steps must"):
        Linear(0.0, 1.0, steps=steps)


def test_pyro_dmm_annealing_every_mini_batch_of_a_short_run() -> None:
    n_mini_batches, annealing_epochs, epochs = 12, 3, 5
    want = torch.tensor(
        [
            pyro_annealing_factor(epoch, batch, n_mini_batches, annealing_epochs, 0.2)
            for epoch in range(epochs)
            for batch in range(n_mini_batches)
        ],
        dtype=torch.float64,
    )
    got = _train_beta(Beta(pyro_schedule(annealing_epochs, n_mini_batches)), len(want))
    # Linear interpolates with torch.lerp (a fused multiply-add, and end - (end - start)(1 - w)
    # for w >= 1/2) where Pyro computes start + (end - start) w: the roundings differ by at
    # most one unit in the last place (2**-53 below 1), and both give exactly 1 at the end.
    torch.testing.assert_close(got, want, rtol=0, atol=ULP)
    assert got[(annealing_epochs - 1) * n_mini_batches + n_mini_batches - 1].item() == 1.0
    # Linear itself runs one step behind: its value at the first mini-batch is m.
    assert Linear(0.2, 1.0, steps=36)(torch.tensor(0.0, dtype=torch.float64)).item() == 0.2


def test_pyro_dmm_annealing_with_its_defaults() -> None:
    # 1000 annealing epochs of 12 mini-batches, and two epochs after them.
    n_mini_batches, annealing_epochs = 12, 1000
    epochs, batches = torch.meshgrid(
        torch.arange(annealing_epochs + 2), torch.arange(n_mini_batches), indexing="ij"
    )
    want = torch.tensor(
        [
            pyro_annealing_factor(int(e), int(b), n_mini_batches, annealing_epochs, 0.2)
            for e, b in zip(epochs.flatten(), batches.flatten(), strict=True)
        ],
        dtype=torch.float64,
    )
    step = (epochs * n_mini_batches + batches).flatten().to(torch.float64)
    got = pyro_schedule(annealing_epochs, n_mini_batches)(step)
    torch.testing.assert_close(got, want, rtol=0, atol=ULP)  # see the test above
    assert torch.equal(got[want == 1.0], want[want == 1.0])


def test_composed_schedules_record_only_settings() -> None:
    schedule = nvae_schedule(1000)
    assert list(schedule.state_dict()) == [
        "_extra_state",
        "schedule._extra_state",
        "schedule.schedule._extra_state",
    ]
    assert list(schedule.buffers()) == [] and list(schedule.parameters()) == []
    assert repr(schedule) == (
        "Clamp(\n  min=0.0001\n  (schedule): Shifted(\n    steps=0.1\n"
        "    (schedule): Linear(start=0.0, end=1.0, steps=300)\n  )\n)"
    )


def test_composed_schedule_resumes_in_an_objective() -> None:
    source = Beta(nvae_schedule(1000))
    _train_beta(source, 7)
    state = source.state_dict()
    assert set(state) == {
        "step",
        "_extra_state",
        "beta._extra_state",
        "beta.schedule._extra_state",
        "beta.schedule.schedule._extra_state",
    }
    resumed = Beta(nvae_schedule(1000))
    resumed.load_state_dict(state)
    torch.testing.assert_close(_train_beta(resumed, 5), _train_beta(source, 5), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("other", "match"),
    [
        (
            Clamp(Shifted(Linear(0.0, 1.0, steps=300), steps=0.1), min=1e-3),
            r"Clamp was saved with min=0\.0001 but this one has min=0\.001",
        ),
        (
            Clamp(Shifted(Linear(0.0, 1.0, steps=300), steps=0.1), min=1e-4, max=1.0),
            r"Clamp was saved with max=None but this one has max=1\.0",
        ),
        (
            Clamp(Shifted(Linear(0.0, 1.0, steps=300), steps=-1), min=1e-4),
            r"Shifted was saved with steps=0\.1 but this one has steps=-1\.0",
        ),
        (
            Clamp(Shifted(Cosine(0.0, 1.0, steps=300), steps=0.1), min=1e-4),
            r"the checkpoint holds a Linear schedule where this one has a Cosine",
        ),
        (
            Clamp(Linear(0.0, 1.0, steps=300), min=1e-4),
            r"the checkpoint holds a Shifted schedule where this one has a Linear",
        ),
    ],
)
def test_composed_schedule_refuses_a_different_checkpoint(other: Schedule, match: str) -> None:
    state = Beta(nvae_schedule(1000)).state_dict()
    with pytest.raises(ValueError, match=match):
        Beta(other).load_state_dict(state)


def test_composed_steps_past_float32_precision_are_exact() -> None:
    # The last step of Cyclical's second cycle is 2**25 - 1 (value 1); one step ahead of
    # 2**25 - 2 it must be reached exactly: in float32, 2**25 - 1 rounds to 2**25 (value 0).
    schedule = Clamp(Shifted(Cyclical(steps=2**26, cycles=4), steps=-1), max=1.0)
    assert schedule(torch.tensor(2**25 - 2)).item() == 1.0
    assert schedule(torch.tensor(2**25 - 2, dtype=torch.float64)).item() == 1.0
    objective = Beta(schedule)
    objective.step.fill_(2**25 - 2)
    assert objective(torch.tensor([1.0]), torch.tensor([0.0])).hyper["beta"].item() == 1.0
    # A fractional delay far into a run: t - s in float64, as NVAE computes it.
    n = 123_456_790  # a delay of 12345.679 steps
    step = 2**25 + 3
    want = nvae_kl_coeff(step, 0.3 * n, 0.0001 * n, 1e-4)
    assert nvae_schedule(n)(torch.tensor(step)).dtype == torch.get_default_dtype()
    assert nvae_schedule(n)(torch.tensor(step, dtype=torch.float64)).item() == want
    assert nvae_schedule(n)(torch.tensor(2.0**25, dtype=torch.float32)).dtype == torch.float32


@pytest.mark.parametrize("name", ["nvae", "pyro"])
def test_objective_with_a_composed_schedule_compiles_once(name: str) -> None:
    schedule = nvae_schedule(100) if name == "nvae" else pyro_schedule(3, 10)
    want = _train_beta(Beta(schedule), 40)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(Beta(schedule), backend=counter, fullgraph=True)
    rate = torch.ones(2, dtype=torch.float64, requires_grad=True)
    got = torch.stack([compiled(rate, torch.zeros(2)).hyper["beta"] for _ in range(40)])
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert counter.frame_count == 1


def test_beta_with_nvae_schedule_in_a_loss() -> None:
    n = 100
    loss_fn = RateDistortionLoss(objective=Beta(nvae_schedule(n)))
    loc = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    x = torch.ones(4, 5, dtype=torch.float64)
    likelihood = helpers.bernoulli(logits=torch.zeros(4, 5, dtype=torch.float64))
    for step, coeff in enumerate(nvae_run(n)[:40]):
        out = loss_fn(x, posterior=helpers.normal(loc, scale=0.5), likelihood=likelihood)
        assert out.hyper["beta"].item() == coeff, step
        torch.testing.assert_close(out.loss, out.distortion + coeff * out.rate, rtol=0, atol=0)
        out.loss.backward()
    assert loss_fn.objective.step.item() == 40


# --- composed schedules: arguments and ranges ---------------------------------------------


class _Unbounded(Schedule):
    """A user schedule without a known range."""

    def forward(self, step: torch.Tensor) -> torch.Tensor:
        return step.to(torch.float64) - 10.0


@pytest.mark.parametrize(
    ("schedule", "bounds"),
    [
        (Clamp(Linear(-1.0, 1.0, steps=10), min=0.0), (0.0, 1.0)),
        (Clamp(Linear(-1.0, 1.0, steps=10), max=0.5), (-1.0, 0.5)),
        (Clamp(Linear(0.0, 1.0, steps=10), min=2.0, max=3.0), (2.0, 2.0)),
        (Clamp(_Unbounded(), min=0.0), None),
        (Clamp(_Unbounded(), min=0.0, max=2.0), (0.0, 2.0)),
        (Shifted(Sigmoid(0.0, 1.0, steps=10), steps=5), Sigmoid(0.0, 1.0, steps=10).value_range()),
        (Shifted(Linear(2.0, 1.0, steps=10), steps=-3), (1.0, 2.0)),
        (Shifted(_Unbounded(), steps=2), None),
    ],
)
def test_composed_value_range(schedule: Schedule, bounds: tuple[float, float] | None) -> None:
    assert schedule.value_range() == bounds
    if bounds is not None:  # the values stay inside (Sigmoid's v(0) is computed in Python)
        values = _values(schedule, range(0, 40))
        assert bounds[0] - 1e-15 <= values.min().item() and values.max().item() <= bounds[1]


def test_shift_holds_the_first_value_while_delayed() -> None:
    # The inner schedule never sees a negative step: a delayed Sigmoid holds its v(0).
    inner = Sigmoid(0.0, 1.0, steps=10)
    shifted = Shifted(inner, steps=4.5)
    torch.testing.assert_close(_values(shifted, range(5)), _values(inner, range(1)).expand(5))
    torch.testing.assert_close(shifted(torch.tensor(7.0)), inner(torch.tensor(2.5)))


def test_objectives_check_the_range_of_composed_schedules() -> None:
    Beta(Clamp(Linear(-1.0, 1.0, steps=10), min=0.0))  # clamped to >= 0: accepted
    with pytest.raises(ValueError, match="beta must be >= 0 at every step, got a Shifted"):
        Beta(Shifted(Linear(-1.0, 1.0, steps=10), steps=5))
    with pytest.raises(ValueError, match=r"values reach -1\.0"):
        Beta(Clamp(Linear(-1.0, 1.0, steps=10), max=0.5))
    with pytest.raises(ValueError, match="lr must be > 0 at some step, got a Clamp schedule"):
        GECO(1.0, lr=Clamp(Linear(-1.0, 0.0, steps=10), min=0.0))


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: Clamp(Linear(0.0, 1.0, steps=3)), ValueError, "Clamp needs min or max"),
        (
            lambda: Clamp(Linear(0.0, 1.0, steps=3), min=1.0, max=0.5),
            ValueError,
            r"min must be <= max, got min=1\.0 and max=0\.5",
        ),
        (lambda: Clamp(Constant(1.0), min="0"), TypeError, "min must be a real number, got str"),
        (lambda: Clamp(Constant(1.0), max=math.inf), ValueError, "max must be finite, got inf"),
        (
            lambda: Clamp(0.5, min=0.0),
            TypeError,
            r"schedule must be an rdloss.schedules.Schedule .*got float",
        ),
        (
            lambda: Shifted(lambda t: t, steps=1),
            TypeError,
            r"schedule must be an rdloss.schedules.Schedule .*got function",
        ),
        (lambda: Shifted(Constant(1.0), steps=True), TypeError, "steps must be a real number"),
        (lambda: Shifted(Constant(1.0), steps=math.nan), ValueError, "steps must be finite"),
        (lambda: Shifted(Constant(1.0), 2), TypeError, "positional argument"),
    ],
)
def test_composed_validation(build, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        build()


# --- bad inputs: schedules ----------------------------------------------------------------
# The catalogue's part for this module (tests/_catalogue.py); docs/errors.md lists its keys.


BAD_INPUTS: dict[str, Entry] = {
    "schedule: zero steps": (
        lambda: schedules.Linear(0.0, 1.0, steps=0),
        ValueError,
        r"steps must be >= 1, got 0",
    ),
    "schedule: fractional steps": (
        lambda: schedules.Cyclical(steps=2.5),  # type: ignore[arg-type]
        TypeError,
        r"steps must be an int \(or a float with an integer value, e\.g\. 1e5\), got 2\.5",
    ),
    "schedule: NaN start": (
        lambda: schedules.Cosine(float("nan"), 1.0, steps=10),
        ValueError,
        r"start must be finite, got nan",
    ),
    "schedule: value given as text": (
        lambda: schedules.Constant("0.5"),  # type: ignore[arg-type]
        TypeError,
        r"value must be a real number, got str",
    ),
    "schedule: ramp ratio above one": (
        lambda: schedules.Cyclical(steps=10, ratio=1.5),
        ValueError,
        r"ratio must be in \(0, 1\], got 1.5",
    ),
    "schedule: more cycles than steps": (
        lambda: schedules.Cyclical(steps=3, cycles=10),
        ValueError,
        r"cycles must be <= steps .*got cycles=10 and steps=3",
    ),
    "schedule: zero steepness": (
        lambda: schedules.Sigmoid(0.0, 1.0, steps=10, steepness=0.0),
        ValueError,
        r"steepness must be > 0, got 0.0",
    ),
    "schedule: called with a Python int step": (
        lambda: schedules.Linear(0.0, 1.0, steps=10)(5),
        TypeError,
        r"step must be a torch.Tensor .*got int",
    ),
    "schedule: Clamp without bounds": (
        lambda: schedules.Clamp(schedules.Linear(0.0, 1.0, steps=10)),
        ValueError,
        r"Clamp needs min or max \(or both\), got neither",
    ),
    "schedule: Clamp min above max": (
        lambda: schedules.Clamp(schedules.Linear(0.0, 1.0, steps=10), min=0.5, max=0.1),
        ValueError,
        r"min must be <= max, got min=0.5 and max=0.1",
    ),
    "schedule: Shifted of a number": (
        lambda: schedules.Shifted(0.5, steps=3),  # type: ignore[arg-type]
        TypeError,
        r"schedule must be an rdloss.schedules.Schedule .*got float",
    ),
    "schedule: checkpoint of another schedule": (
        lambda: Beta(schedules.Linear(0.0, 1.0, steps=10)).load_state_dict(
            Beta(schedules.Cosine(0.0, 1.0, steps=10)).state_dict()
        ),
        ValueError,
        r"the checkpoint holds a Cosine schedule where this one has a Linear",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_named_error(case: str) -> None:
    expect_named_error(BAD_INPUTS[case])
