"""Wall-clock timing of the benchmarks: one call, or the median of many after a warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["median_seconds", "timed"]

T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """`fn()`'s result and the seconds it took (`time.perf_counter`)."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 5) -> float:
    """Median seconds of `fn()` over `repeats` calls, after `warmup` calls that are not timed."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn)[1] for _ in range(repeats))
