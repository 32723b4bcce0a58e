"""Request-rate limits: a token bucket per key (client IP, client identity), pure and clocked.

Rules it keeps:
- A rate `N/unit` lets a key make N requests at once and then one more every unit/N
  seconds (a token bucket of N tokens refilled at N per unit, kept as GCRA: one float per
  key, the time its bucket is full again). A refused request costs nothing, so a client
  that waits `retry_after` is let in.
- Memory is bounded: a key whose bucket is full again is forgotten (least recently charged
  first), and past `max_keys` the least recently charged key is dropped even if it is not
  idle (counted in `dropped`): that key starts afresh, which is the lesser harm than
  refusing every new client when an attacker spreads over many addresses.
- No I/O and no clock of its own: the clock is injected (`time.monotonic` by default), the
  caller logs. `RequestLimits.check` charges every applicable limit or none of them.
- IP keys: an IPv4-mapped IPv6 address is its IPv4 address; other IPv6 addresses are keyed by
  their /64, which one subscriber usually holds whole. Log labels (`ip_label`) carry the /24
  (IPv4) or /48 (IPv6) network and a tag keyed by a per-process secret, never the address.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from engine.config.model import Rate, RateLimit

Clock = Callable[[], float]

UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
RATE_PATTERN = r"^[1-9][0-9]{0,8}/(second|minute|hour)$"
RATE_EXPECTED = "a rate like 100/hour: a whole number of requests per second, minute or hour"
DEFAULT_MAX_KEYS = 100_000
# Float sums of unit/N drift by ulps; a request that many seconds early still counts as on time.
_EPSILON = 1e-9


def parse_rate(text: str) -> Rate:
    """`100/hour` as a Rate; ValueError saying what was expected otherwise."""
    if not re.match(RATE_PATTERN, text):
        raise ValueError(f"expected {RATE_EXPECTED}")
    count, unit = text.split("/")
    return Rate(int(count), UNITS[unit], text)


class _Bucket:
    __slots__ = ("full_at", "reported_at")

    def __init__(self, full_at: float) -> None:
        self.full_at = full_at  # when the bucket holds all N tokens again
        self.reported_at: float | None = None  # the last refusal that was reported


class RateLimiter:
    """One rate over many keys. `check(key)` charges the key and returns None, or returns
    the seconds to wait (> 0) and charges nothing."""

    def __init__(
        self, rate: Rate, *, clock: Clock = time.monotonic, max_keys: int = DEFAULT_MAX_KEYS
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.rate = rate
        self.clock = clock
        self.max_keys = max_keys
        self.dropped = 0
        self._interval = rate.seconds / rate.count
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, key: str) -> float | None:
        now = self.clock()
        wait = self.wait(key, now)
        if wait is None:
            self.charge(key, now)
        return wait

    def wait(self, key: str, now: float) -> float | None:
        """Seconds `key` must wait before its next request at `now`; None if it may go."""
        self._forget_idle(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            return None
        # Charging would make the bucket full at `full_at + interval`; allowed while that is
        # no more than one whole period (N tokens) ahead of now.
        allowed_at = max(bucket.full_at, now) + self._interval - self.rate.seconds
        return allowed_at - now if allowed_at - now > _EPSILON else None

    def charge(self, key: str, now: float) -> None:
        """Take one token from `key`'s bucket (after `wait` said it may go)."""
        bucket = self._buckets.pop(key, None)
        full_at = max(bucket.full_at if bucket is not None else now, now) + self._interval
        if bucket is None:
            bucket = _Bucket(full_at)
        bucket.full_at = full_at
        self._buckets[key] = bucket  # most recently charged last
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
            self.dropped += 1

    def report_due(self, key: str) -> bool:
        """Whether a refusal of `key` now should be reported: the first one in a period.
        Records it as reported when it is."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            return True
        if bucket.reported_at is not None and now - bucket.reported_at < self.rate.seconds:
            return False
        bucket.reported_at = now
        return True

    def _forget_idle(self, now: float) -> None:
        # The front is the least recently charged key. Keys behind a busy one wait for it, but
        # no key outlives its last charge by more than one period plus that key's own.
        while self._buckets:
            key, bucket = next(iter(self._buckets.items()))
            reported = bucket.reported_at
            if bucket.full_at > now or (reported is not None
                                        and now - reported < self.rate.seconds):
                return
            del self._buckets[key]


@dataclass(frozen=True)
class Throttled:
    """A refused request: which limit (`ip` or `client`) and key, how long to wait, and
    whether this is the first refusal of the key in the limit's period (log it)."""

    scope: str
    key: str
    retry_after: float
    report: bool
    rate: Rate

    @property
    def retry_after_header(self) -> str:
        """`Retry-After` in whole seconds, rounded up, at least 1."""
        return str(max(1, math.ceil(self.retry_after - _EPSILON)))


class RequestLimits:
    """The limits of one listener: per client IP and per client identity, each optional."""

    def __init__(
        self,
        config: RateLimit | None,
        *,
        clock: Clock = time.monotonic,
        max_keys: int = DEFAULT_MAX_KEYS,
        secret: bytes | None = None,
    ) -> None:
        config = config or RateLimit()
        self.clock = clock
        self.per_ip = (RateLimiter(config.per_ip, clock=clock, max_keys=max_keys)
                       if config.per_ip is not None else None)
        self.per_client = (RateLimiter(config.per_client, clock=clock, max_keys=max_keys)
                           if config.per_client is not None else None)
        self._secret = secret if secret is not None else secrets.token_bytes(32)

    @property
    def enabled(self) -> bool:
        return self.per_ip is not None or self.per_client is not None

    def check(self, ip: str | None, client: str | None = None) -> Throttled | None:
        """Charge the request to its IP and client identity, or to neither when one of the
        limits refuses it (the longest wait is the answer)."""
        now = self.clock()
        applicable: list[tuple[str, RateLimiter, str]] = []
        if self.per_ip is not None and ip:
            applicable.append(("ip", self.per_ip, ip_key(ip)))
        if self.per_client is not None and client:
            applicable.append(("client", self.per_client, client))
        refusals = [(wait, scope, limiter, key) for scope, limiter, key in applicable
                    if (wait := limiter.wait(key, now)) is not None]
        if not refusals:
            for _, limiter, key in applicable:
                limiter.charge(key, now)
            return None
        wait, scope, limiter, key = max(refusals, key=lambda r: r[0])
        return Throttled(scope, key, wait, limiter.report_due(key), limiter.rate)

    def label(self, refused: Throttled) -> str:
        """How a log line names the refused key: no full IP address (see `ip_label`)."""
        if refused.scope == "ip":
            return ip_label(refused.key, self._secret)
        return f"client {refused.key}"


def ip_key(address: str) -> str:
    """The key an address is limited under: IPv4 as written, IPv6 by its /64."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address  # not an IP (a Unix socket path): limited as written
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def ip_label(key: str, secret: bytes) -> str:
    """`ip 203.0.113.0/24 #1a2b3c4d`: the network and a tag that tells addresses apart within
    one run (keyed by `secret`, so it cannot be looked up), not the address itself."""
    tag = hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()[:8]
    try:
        network = ipaddress.ip_network(key, strict=False)
    except ValueError:
        return f"ip #{tag}"
    prefix = 24 if network.version == 4 else 48
    return f"ip {network.supernet(new_prefix=min(prefix, network.prefixlen))} #{tag}"
