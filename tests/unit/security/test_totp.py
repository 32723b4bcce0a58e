"""TOTP against the published vectors (RFC 4226 appendix D, RFC 6238 appendix B), the ±1 step
window, the no-reuse rule and the provisioning URI."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from engine.security import totp

SEED_SHA1 = b"12345678901234567890"
SEED_SHA256 = b"12345678901234567890123456789012"
SEED_SHA512 = b"1234567890" * 6 + b"1234"


def b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=")


RFC6238 = [  # time, SHA-1, SHA-256, SHA-512 (8 digits)
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]


@pytest.mark.parametrize(("when", "sha1", "sha256", "sha512"), RFC6238)
def test_rfc6238_vectors(when: int, sha1: str, sha256: str, sha512: str):
    assert totp.code_at(b32(SEED_SHA1), when, digits=8, digest="sha1") == sha1
    assert totp.code_at(b32(SEED_SHA256), when, digits=8, digest="sha256") == sha256
    assert totp.code_at(b32(SEED_SHA512), when, digits=8, digest="sha512") == sha512
    # The engine's own setting (6 digits, SHA-1) is the same value's last six digits.
    assert totp.code_at(b32(SEED_SHA1), when) == sha1[-6:]


def test_rfc4226_hotp_vectors():
    expected = ["755224", "287082", "359152", "969429", "338314",
                "254676", "287922", "162583", "399871", "520489"]  # fmt: skip
    assert [totp.hotp(SEED_SHA1, c) for c in range(10)] == expected


def test_a_code_matches_its_step_and_one_either_side_only():
    secret = b32(SEED_SHA1)  # fixed: the five codes around `now` are all different
    now = 1_750_000_015.0
    current = totp.step_at(now)
    for offset in (-1, 0, 1):
        code = totp.code_at(secret, now + 30 * offset)
        assert totp.match(secret, code, now) == current + offset
    for offset in (-2, 2):
        assert totp.match(secret, totp.code_at(secret, now + 30 * offset), now) is None
    assert len({totp.code_at(secret, now + 30 * o) for o in range(-2, 3)}) == 5


def test_a_used_step_and_earlier_ones_never_match_again():
    secret = totp.new_secret()
    now = 1_750_000_000.0
    code = totp.code_at(secret, now)
    step = totp.match(secret, code, now)
    assert step is not None
    assert totp.match(secret, code, now, after_step=step) is None
    assert totp.match(secret, code, now + 29, after_step=step) is None
    previous = totp.code_at(secret, now - 30)
    assert totp.match(secret, previous, now, after_step=step) is None
    later = totp.code_at(secret, now + 30)
    assert totp.match(secret, later, now + 30, after_step=step) == step + 1


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", "١٢٣٤٥٦", "12 456"])
def test_malformed_codes_do_not_match(code: str):
    assert totp.match(totp.new_secret(), code, 1_750_000_000.0) is None


def test_secrets_are_random_base32_of_160_bits():
    first, second = totp.new_secret(), totp.new_secret()
    assert first != second
    assert len(totp.decode_secret(first)) == totp.SECRET_BYTES
    assert totp.decode_secret(first.lower()) == totp.decode_secret(first)


def test_a_bad_secret_is_a_clear_error_that_does_not_quote_it():
    with pytest.raises(totp.TotpError) as bad:
        totp.decode_secret("NOT-BASE32!!")
    assert "NOT-BASE32" not in str(bad.value)
    with pytest.raises(totp.TotpError, match="too short"):
        totp.decode_secret(b32(b"short"))


def test_provisioning_uri_is_what_authenticator_apps_read():
    secret = totp.new_secret()
    uri = totp.provisioning_uri(secret, "alice@clinic")
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    assert unquote(parts.path) == "/engine:alice@clinic"
    query = parse_qs(parts.query)
    assert query == {
        "secret": [secret], "issuer": ["engine"], "algorithm": ["SHA1"], "digits": ["6"],
        "period": ["30"],
    }  # fmt: skip
