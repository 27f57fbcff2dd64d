"""Timing shared by the side-by-side benchmarks: variants alternate, so each sees the same machine load."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def alternating_medians_ms(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median milliseconds of each zero-argument function over `repeats` rounds, after one warm-up call
    each; within a round the variants run one after the other in the dict's order."""
    times = {name: [] for name in variants}
    for run in variants.values():
        run()
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}
