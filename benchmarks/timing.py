"""Interleaved timing: every variant runs once per round, rounds repeat, the median per variant is kept.

Interleaving spreads the noise of a shared machine (other jobs, frequency changes) over all variants
alike, so that their ratios stay meaningful even when absolute times drift.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each variant, measured round-robin after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for run in variants.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
