"""One contract for every streaming metric of `rdloss.diagnostics`.

Each metric: update/compute/reset, a ``state_dict`` round trip, dtype casts, a NaN batch
(refused with ``ValueError``, state unchanged), the same result for any batching, and no
host synchronisation in ``update`` with ``validate_args=False``. Two-process DDP equality
is `tests/test_diagnostics_distributed.py`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.testing import assert_close
from torchmetrics import Metric

from benchmarks._counting import count
from rdloss import diagnostics
from rdloss.marginals import StandardNormal

N, D, T = 23, 3, 4
F64 = torch.float64


def _data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "rate": torch.rand(N, generator=g) * 5,
        "distortion": torch.rand(N, generator=g) * 20 + 10,
        "loc": 3.0 + torch.randn(N, D, generator=g) * torch.tensor([1.0, 0.3, 0.001]),
        "scale": 0.2 + torch.rand(N, D, generator=g),
        "per_dim": torch.rand(N, D, generator=g),
        "weight": torch.rand(N, generator=g) + 0.5,
        # sequences of T steps, padded after a random length (0: an all-padding row)
        "step_rate": torch.rand(N, T, generator=g) * 3,
        "step_loc": 3.0 + torch.randn(N, T, D, generator=g),
        "step_per_dim": torch.rand(N, T, D, generator=g),
        "step_mask": torch.arange(T) < torch.randint(0, T + 1, (N, 1), generator=g),
    }


class Kw(dict):  # type: ignore[type-arg]
    """Keyword arguments of an update, as the last entry of an input tuple."""


def _update(metric: Metric, args: tuple) -> None:
    if args and isinstance(args[-1], Kw):
        metric.update(*args[:-1], **args[-1])
    else:
        metric.update(*args)


# name -> (build(**kwargs), inputs of an update from the data rows [lo:hi])
CASES: dict[str, tuple[Callable[..., Metric], Callable[[dict, slice], tuple]]] = {
    "RateDistortion": (
        lambda **kw: diagnostics.RateDistortion(data_dims=4, **kw),
        lambda d, s: (d["rate"][s], d["distortion"][s]),
    ),
    "MutualInformationBounds": (
        lambda **kw: diagnostics.MutualInformationBounds(data_entropy=5.0, **kw),
        lambda d, s: (d["rate"][s], d["distortion"][s]),
    ),
    "ActiveUnits": (diagnostics.ActiveUnits, lambda d, s: (d["loc"][s],)),
    "ActiveUnits(latent_dim)": (
        lambda **kw: diagnostics.ActiveUnits(latent_dim=D, **kw),
        lambda d, s: (d["loc"][s],),
    ),
    "RatePerDimension": (diagnostics.RatePerDimension, lambda d, s: (d["per_dim"][s],)),
    "RatePerDimension(steps)": (
        lambda **kw: diagnostics.RatePerDimension(steps=True, **kw),
        lambda d, s: (d["step_per_dim"][s], Kw(weight=d["weight"][s], mask=d["step_mask"][s])),
    ),
    "ActiveUnits(steps)": (
        lambda **kw: diagnostics.ActiveUnits(steps=True, **kw),
        lambda d, s: (d["step_loc"][s], Kw(mask=d["step_mask"][s])),
    ),
    "StepRate": (
        lambda **kw: diagnostics.StepRate(free_bits=1.5, **kw),
        lambda d, s: (d["step_rate"][s], Kw(weight=d["weight"][s], mask=d["step_mask"][s])),
    ),
    "MutualInformation": (
        lambda **kw: diagnostics.MutualInformation(StandardNormal(D), tc_samples=10, **kw),
        lambda d, s: (d["loc"][s], d["scale"][s]),
    ),
    # codes 0..4 of two codebooks, from the same rows
    "CodebookUsage": (
        lambda **kw: diagnostics.CodebookUsage(5, codebooks=2, **kw),
        lambda d, s: ((d["per_dim"][s, :2] * 5).long(),),
    ),
}


def test_every_metric_class_is_covered() -> None:
    classes = {
        name
        for name, obj in vars(diagnostics).items()
        if inspect.isclass(obj) and issubclass(obj, Metric)
    }
    assert classes == {name.split("(")[0] for name in CASES}


def _values(result: Any) -> list[torch.Tensor]:
    if isinstance(result, dict):
        return [v for r in result.values() for v in _values(r)]
    if isinstance(result, tuple):
        return [v for r in result if r is not None for v in _values(r)]
    if isinstance(result, torch.Tensor):
        return [result]
    return [torch.as_tensor(result)]


def _stream(metric: Metric, inputs: Callable, sizes: list[int]) -> list[torch.Tensor]:
    data, start = _data(), 0
    for size in sizes:
        _update(metric, inputs(data, slice(start, start + size)))
        start += size
    assert start == N
    return _values(metric.compute())


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> tuple[Callable[..., Metric], Callable]:
    return CASES[request.param]


def test_update_compute_reset(case) -> None:
    build, inputs = case
    metric = build()
    first = _stream(metric, inputs, [10, 13])
    metric.reset()
    assert_close(_stream(metric, inputs, [10, 13]), first)  # reset leaves nothing behind
    assert_close(_stream(build(), inputs, [N]), first)


def test_batching_does_not_change_the_result(case) -> None:
    build, inputs = case
    whole = _stream(build().set_dtype(F64), inputs, [N])
    for sizes in ([1] * N, [7, 7, 7, 2]):
        assert_close(_stream(build().set_dtype(F64), inputs, sizes), whole)


def test_state_dict_round_trip(case) -> None:
    build, inputs = case
    data = _data()
    first = build()
    _update(first, inputs(data, slice(0, 9)))
    restored = build()
    restored.load_state_dict(first.state_dict())
    for m in (first, restored):
        _update(m, inputs(data, slice(9, N)))
    assert_close(_values(restored.compute()), _values(first.compute()))


@pytest.mark.parametrize("cast", ["double", "half", "float"])
def test_module_casts_keep_the_states(case, cast: str) -> None:
    # torchmetrics' .double()/.half() do not cast states (set_dtype does): the result is
    # the float32 one, whatever the module cast.
    build, inputs = case
    expected = _stream(build(), inputs, [10, 13])
    metric = getattr(build(), cast)()
    assert_close(_stream(metric, inputs, [10, 13]), expected)


@pytest.mark.parametrize("dtype", [F64, torch.float16])
def test_set_dtype_accumulates_in_that_dtype(case, dtype: torch.dtype) -> None:
    build, inputs = case
    expected = _stream(build().set_dtype(F64), inputs, [10, 13])
    got = _stream(build().set_dtype(dtype), inputs, [10, 13])
    tol = {"rtol": 0, "atol": 0} if dtype == F64 else {"rtol": 2e-2, "atol": 5e-2}
    for g, e in zip(got, expected, strict=True):
        assert_close(g.to(e.dtype), e, check_dtype=False, **tol)


def test_nan_batch_is_refused_and_leaves_the_state(case) -> None:
    build, inputs = case
    if build().__class__ is diagnostics.CodebookUsage:
        pytest.skip(
            "integer codes cannot be NaN; bad codes: "
            "test_codebook.py::test_bad_indices_are_refused_and_leave_the_state"
        )
    data = _data()
    metric = build()
    _update(metric, inputs(data, slice(0, 10)))
    before = _snapshot(metric.state_dict())
    bad = {k: v.clone() for k, v in data.items()}
    for v in bad.values():
        v[12] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        _update(metric, inputs(bad, slice(10, 15)))
    after = _snapshot(metric.state_dict())
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert_close(after[key], value, msg=key)


def _snapshot(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of a state dict (list states, e.g. stored posteriors, copied entry by entry)."""
    return {
        k: [t.clone() for t in v] if isinstance(v, list) else v.clone() for k, v in state.items()
    }


def test_update_without_checks_never_syncs(case) -> None:
    build, inputs = case
    data = _data()
    metric = build(validate_args=False)
    _update(metric, inputs(data, slice(0, 10)))  # the first update may size a lazy state
    counts = count(lambda: _update(metric, inputs(data, slice(10, N))))
    assert counts.n_syncs == 0, counts.syncs


def test_compute_after_load_state_dict_is_of_the_loaded_state(case) -> None:
    # torchmetrics caches compute(); a value cached before load_state_dict would be the
    # replaced state's, a silent wrong number.
    build, inputs = case
    data = _data()
    source = build()
    _update(source, inputs(data, slice(0, N)))
    expected = _values(source.compute())
    metric = build()
    _update(metric, inputs(data, slice(0, 9)))
    metric.compute()  # cached
    metric.load_state_dict(source.state_dict())
    assert_close(_values(metric.compute()), expected)


def test_compute_after_merge_state_is_of_the_merged_state(case) -> None:
    build, inputs = case
    data = _data()
    expected = _stream(build(), inputs, [N])
    metric, other = build(), build()
    _update(metric, inputs(data, slice(0, 9)))
    _update(other, inputs(data, slice(9, N)))
    metric.compute()  # cached
    metric.merge_state(other)
    assert_close(_values(metric.compute()), expected)
