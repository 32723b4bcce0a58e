"""Retry delays: exponential backoff with jitter.

Retry n (1-based, after the first try failed n times) waits
min(first * factor**(n-1), max), spread by ±jitter so that many lanes failing together do
not retry in lockstep. With the defaults (first 1 s, factor 2, max 16 s, 5 retries) the
waits are about 1, 2, 4, 8 and 16 s.
"""

from __future__ import annotations

import random

from engine.config.model import RetryPolicy


def delay(policy: RetryPolicy, retry_number: int, rng: random.Random | None = None) -> float:
    base = min(policy.first * policy.factor ** (retry_number - 1), policy.max)
    if policy.jitter <= 0:
        return base
    spread = (rng or random).uniform(-policy.jitter, policy.jitter)
    return max(0.0, base * (1.0 + spread))


def exhausted(policy: RetryPolicy, failures: int) -> bool:
    """True when a delivery that has failed `failures` times in this round gets no more tries:
    the first try plus `policy.attempts` retries."""
    return failures > policy.attempts
