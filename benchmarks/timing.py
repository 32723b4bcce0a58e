"""Timing for the micro-benchmarks: the best of several rounds, so a figure shows the code and
not the noise of a shared machine."""

from __future__ import annotations

import timeit
from collections.abc import Callable


def per_op_us(fn: Callable[[], object], number: int, repeat: int = 7) -> float:
    """Microseconds per call of `fn`: the fastest of `repeat` rounds of `number` calls."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6
