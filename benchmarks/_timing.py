"""Interleaved timing of two callables: robust ratios on a noisy machine."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


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
