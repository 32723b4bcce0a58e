"""Retry delays: the default schedule, its jitter bounds, the cap, exact delays without
jitter, and when a delivery has had all its tries. Randomness comes from seeded or scripted
generators, so every run sees the same numbers."""

from __future__ import annotations

import random

import pytest

from engine.config.model import RetryPolicy
from engine.runtime.backoff import delay, exhausted


class Scripted(random.Random):
    """`uniform` returns the given fraction of the way from a to b."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


def test_the_default_schedule_without_jitter_is_1_2_4_8_16() -> None:
    policy = RetryPolicy(jitter=0.0)
    assert [delay(policy, n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_the_defaults_are_5_retries_from_1s_doubling_to_16s_with_20_percent_jitter() -> None:
    assert RetryPolicy() == RetryPolicy(attempts=5, first=1.0, max=16.0, factor=2.0, jitter=0.2)


@pytest.mark.parametrize(("fraction", "scale"), [(0.0, 0.8), (0.5, 1.0), (1.0, 1.2)])
def test_jitter_spreads_each_delay_by_at_most_the_fraction(fraction: float, scale: float) -> None:
    policy = RetryPolicy()
    got = [delay(policy, n, Scripted(fraction)) for n in range(1, 6)]
    assert got == pytest.approx([scale * base for base in (1, 2, 4, 8, 16)])


def test_jittered_delays_stay_within_bounds_and_spread() -> None:
    policy = RetryPolicy()
    rng = random.Random(20250310)
    for n, base in enumerate((1.0, 2.0, 4.0, 8.0, 16.0), 1):
        draws = [delay(policy, n, rng) for _ in range(500)]
        assert all(0.8 * base <= d <= 1.2 * base for d in draws)
        # Not in lockstep: the draws cover both sides of the base delay.
        assert min(draws) < 0.9 * base and max(draws) > 1.1 * base


def test_delays_are_capped_at_max() -> None:
    policy = RetryPolicy(first=0.5, max=3.0, factor=3.0, jitter=0.0)
    assert [delay(policy, n) for n in range(1, 6)] == [0.5, 1.5, 3.0, 3.0, 3.0]
    assert delay(RetryPolicy(jitter=0.0), 40) == 16.0  # no overflow far down the schedule


def test_jitter_applies_around_the_capped_delay() -> None:
    policy = RetryPolicy(max=10.0, jitter=0.1)
    assert delay(policy, 8, Scripted(1.0)) == pytest.approx(11.0)
    assert delay(policy, 8, Scripted(0.0)) == pytest.approx(9.0)


def test_zero_jitter_is_exact_and_draws_nothing() -> None:
    class Refuses(random.Random):
        def uniform(self, a: float, b: float) -> float:
            raise AssertionError("no random draw expected without jitter")

    policy = RetryPolicy(first=0.25, factor=1.5, max=100.0, jitter=0.0)
    assert [delay(policy, n, Refuses()) for n in range(1, 5)] == [0.25, 0.375, 0.5625, 0.84375]


def test_full_jitter_never_goes_below_zero() -> None:
    policy = RetryPolicy(jitter=1.0)
    assert delay(policy, 3, Scripted(0.0)) == 0.0
    assert delay(policy, 3, Scripted(1.0)) == pytest.approx(8.0)


@pytest.mark.parametrize(
    ("attempts", "failures", "expected"),
    [
        (5, 1, False),
        (5, 5, False),  # the fifth retry is still due
        (5, 6, True),  # the first try and five retries all failed
        (1, 1, False),
        (1, 2, True),
    ],
)
def test_exhausted_after_the_first_try_and_every_retry(
    attempts: int, failures: int, expected: bool
) -> None:
    assert exhausted(RetryPolicy(attempts=attempts), failures) is expected
