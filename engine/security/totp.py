"""Time-based one-time passwords (RFC 6238 over RFC 4226 HOTP), with the standard library only.

What authenticator apps speak: HMAC-SHA-1, 6 digits, 30-second steps, a base32 secret, and a
provisioning URI (`otpauth://totp/...`) to scan. The rule kept here: a code is accepted for the
current step and one step either side (clock drift), and `match` says WHICH step it matched so
that the caller can refuse that step and every earlier one next time: a code once used cannot
be used again, not even within its own window. Time is always passed in (unix seconds), never
read here.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import struct
from urllib.parse import quote, urlencode

STEP = 30  # seconds
DIGITS = 6
DRIFT = 1  # steps accepted either side of the current one
SECRET_BYTES = 20  # 160 bits, the HMAC-SHA-1 block-size recommendation of RFC 4226


class TotpError(ValueError):
    """A malformed secret. The text never quotes the secret."""


def new_secret() -> str:
    """A fresh random secret, base32 without padding (what authenticator apps expect)."""
    return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii").rstrip("=")


def decode_secret(secret: str) -> bytes:
    """Base32, case-insensitive, spaces and missing padding tolerated."""
    text = secret.replace(" ", "").upper()
    text += "=" * (-len(text) % 8)
    try:
        raw = base64.b32decode(text)
    except (ValueError, TypeError) as exc:
        raise TotpError("the TOTP secret is not valid base32") from exc
    if len(raw) < 10:  # RFC 4226 requires at least 128 bits; 80 is the floor apps accept
        raise TotpError("the TOTP secret is too short")
    return raw


def hotp(key: bytes, counter: int, digits: int = DIGITS, digest: str = "sha1") -> str:
    """RFC 4226 section 5.3: HMAC of the 8-byte counter, dynamic truncation, mod 10^digits."""
    mac = hmac.new(key, struct.pack(">Q", counter), digest).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def step_at(now: float, step: int = STEP) -> int:
    return int(now // step)


def code_at(
    secret: str, now: float, *, digits: int = DIGITS, digest: str = "sha1", step: int = STEP
) -> str:
    """The code an authenticator shows at `now`."""
    return hotp(decode_secret(secret), step_at(now, step), digits, digest)


def match(secret: str, code: str, now: float, *, after_step: int = -1) -> int | None:
    """The time step `code` belongs to (current step ± DRIFT), or None. Steps at or before
    `after_step` (the last one used) are never matched, which is what refuses a reused code.
    Every candidate is compared in constant time and all of them are computed, so timing says
    nothing about which step (if any) was close."""
    candidate = code.strip()
    if len(candidate) != DIGITS or not candidate.isascii() or not candidate.isdigit():
        return None
    key = decode_secret(secret)
    current = step_at(now)
    found: int | None = None
    for step in range(current - DRIFT, current + DRIFT + 1):
        same = hmac.compare_digest(hotp(key, step).encode(), candidate.encode())
        if same and step > after_step and found is None:
            found = step
    return found


def provisioning_uri(secret: str, account: str, issuer: str = "engine") -> str:
    """The `otpauth://` URI an authenticator app scans (Key Uri Format)."""
    label = quote(f"{issuer}:{account}", safe=":@")
    query = urlencode(
        {"secret": secret, "issuer": issuer, "algorithm": "SHA1", "digits": DIGITS,
         "period": STEP}
    )  # fmt: skip
    return f"otpauth://totp/{label}?{query}"
