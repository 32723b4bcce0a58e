"""Standard Webhooks signing and verification: pure, no I/O, standard library only.

The engine signs every webhook it sends, and receivers (ours and our customers') verify it,
per the Standard Webhooks spec (https://www.standardwebhooks.com, symmetric scheme):

- headers `webhook-id` (stays the same across retries of one event), `webhook-timestamp`
  (integer unix seconds of this attempt) and `webhook-signature`;
- the signed content is `{id}.{timestamp}.{body}` over the raw body bytes, signed with
  HMAC-SHA256 and written `v1,<base64>`; during key rotation there is one such entry per
  secret, space-separated, and a receiver accepts the message if any one matches;
- secrets are shown as `whsec_<base64 of 24..64 random bytes>`.

The rule this module keeps: a message is accepted only if its headers are well formed, its
timestamp is within `tolerance` seconds of the receiver's clock (either way), one of its `v1`
signatures matches one of the configured secrets (compared in constant time) and its id has
not been accepted within `remember` seconds. No error text ever carries a secret, a
signature or the body.

API::

    class WebhookSecret:
        @classmethod
        def parse(cls, text: str) -> WebhookSecret        # ValueError if not whsec_<base64>
        @classmethod
        def generate(cls) -> WebhookSecret                # 32 random bytes
        def __str__(self) -> str                          # "whsec_..." to show an operator once
        fingerprint: str                                  # short, non-secret id for logs
    def sign(secrets: Sequence[WebhookSecret], msg_id: str, timestamp: int,
             body: bytes) -> str                          # the webhook-signature value
    def headers(secrets: Sequence[WebhookSecret], msg_id: str, timestamp: int,
                body: bytes) -> dict[str, str]            # webhook-id/-timestamp/-signature
    class VerificationError(ValueError):                  # .reason: one of REASONS
    class Verifier:
        def __init__(self, secrets: Sequence[WebhookSecret | str], *, tolerance: float = 300.0,
                     remember: float = 7 * 86400, clock: Callable[[], float] = time.time)
        def verify(self, headers: Mapping[str, str], body: bytes) -> None
    def verify(secret: str | Sequence[str], headers: Mapping[str, str], body: bytes, *,
               seen: MutableMapping[str, float], tolerance: float = 300.0,
               remember: float = 7 * 86400, now: float | None = None) -> None

`Verifier` is what a long-running receiver keeps: it remembers accepted ids itself. The
function `verify` is the one-call form; pass the same `seen` dict on every call to get replay
protection (it is pruned on each call, oldest first, so it must keep insertion order: a dict).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from secrets import token_bytes
from typing import Final, Literal

__all__ = [
    "REASONS",
    "VerificationError",
    "Verifier",
    "WebhookSecret",
    "headers",
    "sign",
    "verify",
]

PREFIX: Final = "whsec_"
MIN_KEY_BYTES: Final = 24  # the spec's minimum (192 bits)
MAX_KEY_BYTES: Final = 64  # the spec's maximum (512 bits)
# An id is kept in memory for days; a cap keeps a hostile sender from filling it with long
# ones. Real ids (msg_<ksuid>, UUIDs) are far shorter.
MAX_ID_LENGTH: Final = 256
# Unix seconds fit in 12 digits until the year 33658; longer is garbage, not a timestamp.
MAX_TIMESTAMP_DIGITS: Final = 12

Reason = Literal["signature", "timestamp", "replay", "headers"]
REASONS: Final[tuple[Reason, ...]] = ("signature", "timestamp", "replay", "headers")


class WebhookSecret:
    """One HMAC key. Its repr shows only a fingerprint, so it can sit in configs and logs."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
            raise ValueError(
                f"webhook secret must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, got {len(key)}"
            )
        self._key = bytes(key)

    @classmethod
    def parse(cls, text: str) -> WebhookSecret:
        """Read `whsec_<base64>` (padding optional, surrounding whitespace ignored)."""
        text = text.strip()
        if not text.startswith(PREFIX):
            raise ValueError("webhook secret must start with 'whsec_' followed by base64")
        encoded = text[len(PREFIX) :]
        # Secrets are often pasted without their '=' padding; the reference libraries accept
        # that, so we do too, but nothing else that is not strict base64.
        encoded += "=" * (-len(encoded) % 4)
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("webhook secret after 'whsec_' is not valid base64") from None
        return cls(key)

    @classmethod
    def generate(cls) -> WebhookSecret:
        return cls(token_bytes(32))

    @property
    def fingerprint(self) -> str:
        """First 8 hex digits of SHA-256 of the key: tells secrets apart, reveals nothing."""
        return hashlib.sha256(self._key).hexdigest()[:8]

    def signature(self, content: bytes) -> bytes:
        """The raw HMAC-SHA256 of `content` under this key."""
        return hmac.digest(self._key, content, "sha256")

    def __str__(self) -> str:
        return PREFIX + base64.b64encode(self._key).decode("ascii")

    def __repr__(self) -> str:
        return f"WebhookSecret(fingerprint={self.fingerprint})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WebhookSecret):
            return NotImplemented
        return hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(self.fingerprint)


class VerificationError(ValueError):
    """A webhook was refused. `reason` says which check failed; the text names no secret."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"webhook rejected ({reason}): {detail}")
        self.reason: Reason = reason


def _check_id(msg_id: str) -> str | None:
    """Why `msg_id` cannot be signed or accepted, or None if it can."""
    if not msg_id:
        return "webhook-id is empty"
    if len(msg_id) > MAX_ID_LENGTH:
        return f"webhook-id is longer than {MAX_ID_LENGTH} characters"
    # The spec forbids '.' in the id: with one, "{id}.{ts}.{body}" no longer splits one way,
    # and a signature for one (id, ts, body) could be replayed as another.
    if "." in msg_id:
        return "webhook-id contains '.'"
    return None


def _content(msg_id: str, timestamp: int, body: bytes) -> bytes:
    return f"{msg_id}.{timestamp}.".encode() + body


def sign(secrets: Sequence[WebhookSecret], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,<base64>` per secret, space-separated, in order."""
    if not secrets:
        raise ValueError("at least one webhook secret is needed to sign")
    problem = _check_id(msg_id)
    if problem:
        raise ValueError(problem)
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValueError("webhook timestamp must be a non-negative integer (unix seconds)")
    content = _content(msg_id, timestamp, body)
    return " ".join(
        "v1," + base64.b64encode(secret.signature(content)).decode("ascii") for secret in secrets
    )


def headers(
    secrets: Sequence[WebhookSecret], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The three headers a sender puts on the POST carrying `body`."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secrets, msg_id, timestamp, body),
    }


def _lowercase(received: Mapping[str, str]) -> dict[str, str]:
    """Header names are case-insensitive; the same name twice with two values is refused
    rather than guessed at (`items()` yields every value of a multidict)."""
    folded: dict[str, str] = {}
    for name, value in received.items():
        key = name.lower()
        if not key.startswith("webhook-"):
            continue
        if key in folded and folded[key] != value:
            raise VerificationError("headers", f"{key} is present more than once")
        folded[key] = value
    return folded


def _v1_signatures(header: str) -> list[bytes]:
    """The decoded `v1` entries; other versions (v1a, v2, ...) and garbled entries are
    skipped, as the spec asks receivers to try each signature until one matches."""
    found: list[bytes] = []
    for entry in header.split():
        version, comma, encoded = entry.partition(",")
        if not comma or version != "v1":
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


def _as_secrets(given: Sequence[WebhookSecret | str]) -> tuple[WebhookSecret, ...]:
    parsed = tuple(s if isinstance(s, WebhookSecret) else WebhookSecret.parse(s) for s in given)
    if not parsed:
        raise ValueError("at least one webhook secret is needed to verify")
    return parsed


class Verifier:
    """Checks incoming webhooks against one or more secrets and remembers accepted ids.

    `remember` must cover the sender's whole retry span (days): a retry carries the same id
    with a fresh timestamp and a valid signature, so only the id tells it is a duplicate. It
    must also be at least twice `tolerance`, the longest time one captured request stays
    acceptable on the timestamp check alone.
    """

    def __init__(
        self,
        secrets: Sequence[WebhookSecret | str],
        *,
        tolerance: float = 300.0,
        remember: float = 7 * 86400,
        clock: Callable[[], float] = time.time,
        seen: MutableMapping[str, float] | None = None,
    ) -> None:
        if tolerance <= 0:
            raise ValueError("tolerance must be positive")
        if remember < 2 * tolerance:
            raise ValueError("remember must be at least twice the tolerance")
        self._secrets = _as_secrets(secrets)
        self._tolerance = tolerance
        self._remember = remember
        self._clock = clock
        # id -> when it was accepted, in insertion order (oldest first) so pruning stops at
        # the first id still fresh: constant work per call on average, memory bounded by the
        # ids accepted within `remember`.
        self._seen: MutableMapping[str, float] = {} if seen is None else seen

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """Accept (return) or refuse (raise VerificationError) one request."""
        now = self._clock()
        self._forget(now)
        folded = _lowercase(headers)
        msg_id = folded.get("webhook-id", "")
        stamp = folded.get("webhook-timestamp", "")
        header = folded.get("webhook-signature", "")
        missing = [
            name
            for name, value in (
                ("webhook-id", msg_id),
                ("webhook-timestamp", stamp),
                ("webhook-signature", header),
            )
            if not value
        ]
        if missing:
            raise VerificationError("headers", "missing " + ", ".join(missing))
        problem = _check_id(msg_id)
        if problem:
            raise VerificationError("headers", problem)
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= MAX_TIMESTAMP_DIGITS):
            raise VerificationError("headers", "webhook-timestamp is not integer unix seconds")
        timestamp = int(stamp)
        skew = now - timestamp
        if skew > self._tolerance:
            raise VerificationError(
                "timestamp", f"timestamp is {skew:.0f} s old (tolerance {self._tolerance:g} s)"
            )
        if -skew > self._tolerance:
            raise VerificationError(
                "timestamp",
                f"timestamp is {-skew:.0f} s in the future (tolerance {self._tolerance:g} s)",
            )
        # Signature before replay: an unsigned request must not be able to burn an id.
        if not self._signed(msg_id, timestamp, body, header):
            raise VerificationError("signature", "no v1 signature matches a configured secret")
        if msg_id in self._seen:
            raise VerificationError("replay", "this webhook-id was already accepted")
        self._seen[msg_id] = now

    def _signed(self, msg_id: str, timestamp: int, body: bytes, header: str) -> bool:
        offered = _v1_signatures(header)
        if not offered:
            return False
        content = _content(msg_id, timestamp, body)
        expected = [secret.signature(content) for secret in self._secrets]
        # Every pair is compared so the time taken does not depend on which one matched.
        matched = False
        for mine in expected:
            for theirs in offered:
                matched |= hmac.compare_digest(mine, theirs)
        return matched

    def _forget(self, now: float) -> None:
        horizon = now - self._remember
        expired: list[str] = []
        for msg_id, accepted in self._seen.items():
            if accepted > horizon:
                break
            expired.append(msg_id)
        for msg_id in expired:
            del self._seen[msg_id]


def verify(
    secret: str | Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    seen: MutableMapping[str, float],
    tolerance: float = 300.0,
    remember: float = 7 * 86400,
    now: float | None = None,
) -> None:
    """Verify one request in one call (raises VerificationError).

    `secret` is one `whsec_...` string or several (rotation). `seen` is required: pass the
    same dict (webhook-id -> when it was accepted) on every call, so duplicate ids are
    dropped for `remember` seconds; a receiver that forgot them would act twice on a retry.
    `now` (unix seconds) defaults to the current time.
    """
    secrets = [secret] if isinstance(secret, str) else list(secret)
    moment = time.time() if now is None else now
    verifier = Verifier(
        secrets, tolerance=tolerance, remember=remember, clock=lambda: moment, seen=seen
    )
    verifier.verify(headers, body)
