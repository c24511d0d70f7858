"""Interleaved timing of callables (two, or several sides): robust ratios on a noisy machine."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple


class Timing(NamedTuple):
    """Seconds per call of both sides and their ratio, over repeated runs.

    Attributes:
        ours: median seconds per call of ``ours`` (median over runs of each run's median).
        baseline: the same for ``baseline``.
        ratio: median over runs of each run's median per-round ratio ``ours / baseline``.
        low: the smallest run ratio.
        high: the largest run ratio.
    """

    ours: float
    baseline: float
    ratio: float
    low: float
    high: float

    def range(self) -> str:
        """``low-high`` (the range) of the run ratios, or ``-`` for a single run."""
        return "-" if self.low == self.high else f"{self.low:.3f}-{self.high:.3f}"


def compare(
    ours: Callable[[], object],
    baseline: Callable[[], object],
    *,
    repeats: int = 30,
    number: int = 20,
    warmup: int = 5,
) -> tuple[float, float, float]:
    """Median seconds per call of ``ours`` and ``baseline``, and their ratio.

    The two are run in alternation, ``number`` calls per measurement, so machine load
    affects both alike; the ratio is the median of the per-round ratios.
    """
    for _ in range(warmup):
        ours()
        baseline()
    ours_times, base_times, ratios = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            ours()
        mid = time.perf_counter()
        for _ in range(number):
            baseline()
        end = time.perf_counter()
        ours_times.append((mid - start) / number)
        base_times.append((end - mid) / number)
        ratios.append((mid - start) / (end - mid))
    return statistics.median(ours_times), statistics.median(base_times), statistics.median(ratios)


def compare_runs(
    ours: Callable[[], object],
    baseline: Callable[[], object],
    *,
    runs: int = 5,
    repeats: int = 30,
    number: int = 20,
    warmup: int = 5,
) -> Timing:
    """`compare` repeated ``runs`` times: the median and the range of the run ratios."""
    results = [
        compare(ours, baseline, repeats=repeats, number=number, warmup=warmup) for _ in range(runs)
    ]
    ratios = [r[2] for r in results]
    return Timing(
        statistics.median(r[0] for r in results),
        statistics.median(r[1] for r in results),
        statistics.median(ratios),
        min(ratios),
        max(ratios),
    )


def alternate(
    sides: Mapping[str, Callable[[], object]],
    *,
    repeats: int = 30,
    number: int = 20,
    warmup: int = 5,
) -> dict[str, list[float]]:
    """Seconds per call of every side, per round, the sides run in alternation.

    One round runs each side ``number`` times, in the order of ``sides`` (A B C A B C ...),
    so machine load affects all alike; ``warmup`` untimed rounds come first.

    Args:
        sides: name -> callable.
        repeats: timed rounds.
        number: calls of each side per round.
        warmup: untimed calls of each side before the first round.

    Returns:
        name -> ``repeats`` seconds per call, one per round.
    """
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            start = time.perf_counter()
            for _ in range(number):
                fn()
            times[name].append((time.perf_counter() - start) / number)
    return times


def compare_sides(
    sides: Mapping[str, Callable[[], object]],
    pairs: Sequence[tuple[str, str]],
    *,
    runs: int = 5,
    repeats: int = 30,
    number: int = 20,
    warmup: int = 5,
) -> dict[tuple[str, str], Timing]:
    """`alternate` repeated ``runs`` times: a `Timing` for each ``(ours, baseline)`` pair.

    Each run's ratio is the median of the per-round ratios ``ours / baseline`` (both timed
    in the same round); the `Timing` holds the median over runs of the per-side medians and
    of the run ratios, and the range of the run ratios.
    """
    per_run = [alternate(sides, repeats=repeats, number=number, warmup=warmup) for _ in range(runs)]
    result = {}
    for ours, base in pairs:
        ratios = [
            statistics.median(a / b for a, b in zip(t[ours], t[base], strict=True)) for t in per_run
        ]
        result[ours, base] = Timing(
            statistics.median(statistics.median(t[ours]) for t in per_run),
            statistics.median(statistics.median(t[base]) for t in per_run),
            statistics.median(ratios),
            min(ratios),
            max(ratios),
        )
    return result
