"""What the identity tests share: a settable clock, the start time, a password."""

from __future__ import annotations

START = 1_750_000_000.0
DAY = 86400.0
PASSWORD = "correct horse battery staple"


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.t = now

    def __call__(self) -> float:
        return self.t
