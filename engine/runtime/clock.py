"""Time as the engine sees it, injectable so tests can drive retries and windows."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock unix seconds (stored timestamps)."""

    def monotonic(self) -> float:
        """For measuring durations and scheduling; never goes backwards."""


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()
