"""Schedules against independent step-by-step computations (math module, Fu et al.'s code)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from _catalogue import Entry, expect_named_error
from torch._dynamo.testing import CompileCounterWithBackend

from rdloss import schedules
from rdloss.objectives import Beta
from rdloss.schedules import Constant, Cosine, Cyclical, Linear, Schedule, Sigmoid


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
        (lambda: Linear(0.0, 1.0, steps=2.5), TypeError, r"steps must be an int \(or a float"),
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


# --- bad inputs: schedules ----------------------------------------------------------------
# The catalogue's part for this module (tests/_catalogue.py); docs/errors.md lists its keys.


BAD_INPUTS: dict[str, Entry] = {
    "schedule: zero steps": (
        lambda: schedules.Linear(0.0, 1.0, steps=0),
        ValueError,
        r"steps must be >= 1, got 0",
    ),
    "schedule: fractional steps": (
        lambda: schedules.Linear(0.0, 1.0, steps=2.5),  # type: ignore[arg-type]
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
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_named_error(case: str) -> None:
    expect_named_error(BAD_INPUTS[case])
