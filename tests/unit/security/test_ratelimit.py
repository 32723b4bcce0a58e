"""The rate limiter on a fake clock: bursts up to the count, refill at count per unit, waits
that say when the next request goes, idle keys forgotten, memory capped, both limits of a
request charged together or not at all, and log labels without the address."""

from __future__ import annotations

import pytest

from engine.config.model import Rate, RateLimit
from engine.security.ratelimit import (
    RateLimiter,
    RequestLimits,
    Throttled,
    ip_key,
    ip_label,
    parse_rate,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_parse_rate_reads_a_count_per_unit() -> None:
    assert parse_rate("100/hour") == Rate(100, 3600.0, "100/hour")
    assert parse_rate("1000/minute") == Rate(1000, 60.0, "1000/minute")
    assert parse_rate("5/second") == Rate(5, 1.0, "5/second")


@pytest.mark.parametrize("text", ["0/hour", "100/day", "100 per hour", "1.5/minute",
                                  "/hour", "100/", "-1/second", "100/hours", ""])
def test_parse_rate_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="expected a rate like 100/hour"):
        parse_rate(text)


def test_the_count_goes_at_once_then_one_more_per_interval(clock: FakeClock) -> None:
    limiter = RateLimiter(parse_rate("3/minute"), clock=clock)
    assert [limiter.check("a") for _ in range(3)] == [None, None, None]
    assert limiter.check("a") == pytest.approx(20.0)  # one token back every 60/3 s
    clock.advance(19.5)
    assert limiter.check("a") == pytest.approx(0.5)
    clock.advance(0.5)
    assert limiter.check("a") is None
    assert limiter.check("a") == pytest.approx(20.0)


def test_a_refused_request_costs_nothing(clock: FakeClock) -> None:
    limiter = RateLimiter(parse_rate("2/second"), clock=clock)
    limiter.check("a")
    limiter.check("a")
    for _ in range(50):
        assert limiter.check("a") == pytest.approx(0.5)
    clock.advance(0.5)
    assert limiter.check("a") is None


def test_after_a_whole_period_the_full_count_is_back(clock: FakeClock) -> None:
    limiter = RateLimiter(parse_rate("100/hour"), clock=clock)
    assert all(limiter.check("a") is None for _ in range(100))
    assert limiter.check("a") == pytest.approx(36.0)
    clock.advance(3600)
    assert all(limiter.check("a") is None for _ in range(100))
    assert limiter.check("a") is not None


def test_keys_do_not_share_a_bucket(clock: FakeClock) -> None:
    limiter = RateLimiter(parse_rate("1/hour"), clock=clock)
    assert limiter.check("a") is None
    assert limiter.check("a") is not None
    assert limiter.check("b") is None


def test_many_small_intervals_do_not_drift(clock: FakeClock) -> None:
    limiter = RateLimiter(parse_rate("1000/minute"), clock=clock)
    for _ in range(10):
        assert all(limiter.check("a") is None for _ in range(1000))
        assert limiter.check("a") is not None
        clock.advance(60)


def test_idle_keys_are_forgotten(clock: FakeClock) -> None:
    limiter = RateLimiter(parse_rate("10/minute"), clock=clock)
    for key in ("a", "b", "c"):
        limiter.check(key)
    assert len(limiter) == 3
    clock.advance(5.9)  # one token each, refilled after 6 s: not yet
    limiter.check("d")
    assert len(limiter) == 4
    clock.advance(0.2)
    limiter.check("d")
    assert len(limiter) == 1  # a, b and c are full again: forgotten


def test_memory_is_capped_by_dropping_the_least_recently_charged(clock: FakeClock) -> None:
    limiter = RateLimiter(parse_rate("1/hour"), clock=clock, max_keys=3)
    for key in ("a", "b", "c", "d"):
        assert limiter.check(key) is None
    assert len(limiter) == 3 and limiter.dropped == 1
    assert limiter.check("a") is None  # dropped: it starts afresh
    assert limiter.check("d") is not None  # kept: still limited


def test_a_refusal_is_reported_once_per_period(clock: FakeClock) -> None:
    limiter = RateLimiter(parse_rate("1/minute"), clock=clock)
    limiter.check("a")
    assert limiter.check("a") is not None
    assert limiter.report_due("a") is True
    assert limiter.report_due("a") is False
    clock.advance(59)
    assert limiter.report_due("a") is False
    clock.advance(1)
    assert limiter.report_due("a") is True


def test_a_reported_key_is_kept_until_its_period_ends(clock: FakeClock) -> None:
    """Forgetting it sooner would report the same client again within the period."""
    limiter = RateLimiter(parse_rate("2/minute"), clock=clock)
    limiter.check("a")
    clock.advance(29)
    limiter.check("a")
    assert limiter.check("a") is not None
    assert limiter.report_due("a") is True
    clock.advance(61)  # the bucket is full again, the report is 61 s old
    limiter.check("b")
    assert len(limiter) == 1


def test_request_limits_charge_both_limits_or_neither(clock: FakeClock) -> None:
    limits = RequestLimits(RateLimit(per_ip=parse_rate("2/minute"),
                                     per_client=parse_rate("1/minute")), clock=clock)
    assert limits.check("192.0.2.1", "client-a") is None
    refused = limits.check("192.0.2.1", "client-a")
    assert isinstance(refused, Throttled) and refused.scope == "client"
    # The refused request did not take the address's second token.
    assert limits.check("192.0.2.1", "client-b") is None
    refused = limits.check("192.0.2.1", "client-c")
    assert refused is not None and refused.scope == "ip"
    assert refused.retry_after == pytest.approx(30.0)


def test_request_limits_without_a_client_apply_the_ip_limit_only(clock: FakeClock) -> None:
    limits = RequestLimits(RateLimit(per_client=parse_rate("1/hour")), clock=clock)
    assert all(limits.check("192.0.2.1") is None for _ in range(5))
    assert limits.check("192.0.2.1", "c") is None
    assert limits.check("192.0.2.1", "c") is not None


def test_request_limits_off_by_default(clock: FakeClock) -> None:
    limits = RequestLimits(None, clock=clock)
    assert not limits.enabled
    assert all(limits.check("192.0.2.1", "c") is None for _ in range(1000))


@pytest.mark.parametrize(("wait", "header"), [(0.01, "1"), (1.0, "1"), (1.2, "2"),
                                              (36.0, "36"), (36.000000000001, "36")])
def test_retry_after_is_whole_seconds_at_least_one(wait: float, header: str) -> None:
    throttled = Throttled("ip", "k", wait, True, parse_rate("1/hour"))
    assert throttled.retry_after_header == header


def test_ipv6_addresses_share_their_64_and_mapped_ipv4_is_ipv4() -> None:
    assert ip_key("192.0.2.7") == "192.0.2.7"
    assert ip_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert ip_key("2001:db8:1:2:aaaa::1") == ip_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert ip_key("2001:db8:1:3::1") != ip_key("2001:db8:1:2::1")
    assert ip_key("fe80::1%eth0") == "fe80::/64"


def test_an_ipv6_client_cannot_escape_by_changing_its_interface_id(clock: FakeClock) -> None:
    limits = RequestLimits(RateLimit(per_ip=parse_rate("1/hour")), clock=clock)
    assert limits.check("2001:db8::1") is None
    assert limits.check("2001:db8::2") is not None


def test_log_labels_name_the_network_not_the_address() -> None:
    secret = b"k" * 32
    label = ip_label("192.0.2.7", secret)
    assert label.startswith("ip 192.0.2.0/24 #") and "192.0.2.7" not in label
    assert ip_label("192.0.2.8", secret) != label  # told apart within a run
    assert ip_label("192.0.2.7", b"other" * 8) != label  # not the same across runs
    v6 = ip_label("2001:db8:1:2::/64", secret)
    assert v6.startswith("ip 2001:db8:1::/48 #") and "2001:db8:1:2" not in v6
    assert ip_label("not-an-ip", secret).startswith("ip #")


def test_the_label_of_a_client_is_its_identity(clock: FakeClock) -> None:
    limits = RequestLimits(RateLimit(per_client=parse_rate("1/hour")), clock=clock)
    limits.check(None, "AB:CD")
    refused = limits.check(None, "AB:CD")
    assert refused is not None and limits.label(refused) == "client AB:CD"
