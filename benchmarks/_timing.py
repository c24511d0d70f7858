"""Interleaved timing of two callables: robust ratios on a noisy machine."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
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
