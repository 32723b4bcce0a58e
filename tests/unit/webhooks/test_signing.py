"""Signing: what `sign`/`headers` produce is what the Standard Webhooks scheme says.

The receiver here is written from the documented scheme only (hmac/base64 by hand), so a
mistake shared by `sign` and `Verifier` cannot hide.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.webhooks import WebhookSecret, headers, sign

# The Standard Webhooks reference vector, from the spec repository's Python library tests:
# standard-webhooks/standard-webhooks, libraries/python/tests/test_webhooks.py,
# test_sign_function (the same values appear in the other libraries' tests).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_PAYLOAD = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

# Synthetic, thin event body in the shape REFERENCE.md gives (ids only, invented values).
EVENT = json.dumps(
    {
        "type": "appointment.cancelled",
        "timestamp": "2030-01-02T09:30:00Z",
        "data": {"appointment_id": "APT-0001", "patient_id": "PX-42", "start": "2030-01-05"},
    },
    separators=(",", ":"),
).encode()


def documented_receiver(secrets: list[str], received: dict[str, str], body: bytes) -> bool:
    """Accept iff any `v1,` signature equals HMAC-SHA256(key, "{id}.{ts}.{body}") for any
    secret, the key being the base64 after `whsec_`. Written from the spec text alone."""
    lowered = {k.lower(): v for k, v in received.items()}
    msg_id = lowered["webhook-id"]
    stamp = lowered["webhook-timestamp"]
    signed = msg_id.encode() + b"." + stamp.encode() + b"." + body
    for secret in secrets:
        key = base64.b64decode(secret.removeprefix("whsec_"))
        mine = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for entry in lowered["webhook-signature"].split(" "):
            version, _, theirs = entry.partition(",")
            if version == "v1" and hmac.compare_digest(mine, theirs):
                return True
    return False


def test_reference_vector() -> None:
    secret = WebhookSecret.parse(VECTOR_SECRET)
    assert sign([secret], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_PAYLOAD) == VECTOR_SIGNATURE


def test_headers_are_the_three_spec_headers() -> None:
    secret = WebhookSecret.parse(VECTOR_SECRET)
    got = headers([secret], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_PAYLOAD)
    assert got == {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": "1614265330",
        "webhook-signature": VECTOR_SIGNATURE,
    }


def test_documented_receiver_accepts_engine_headers() -> None:
    secret = WebhookSecret.generate()
    sent = headers([secret], "evt_7f3a", 1893576600, EVENT)
    assert documented_receiver([str(secret)], sent, EVENT)
    assert not documented_receiver([str(secret)], sent, EVENT.replace(b"APT-0001", b"APT-0002"))
    assert not documented_receiver([str(WebhookSecret.generate())], sent, EVENT)


def test_rotation_signs_once_per_secret_in_order() -> None:
    old, new = WebhookSecret.generate(), WebhookSecret.generate()
    sent = headers([new, old], "evt_rot", 1893576600, EVENT)
    entries = sent["webhook-signature"].split(" ")
    assert len(entries) == 2
    assert all(entry.startswith("v1,") for entry in entries)
    # A receiver that knows only one of the two secrets accepts, whichever it is.
    assert documented_receiver([str(old)], sent, EVENT)
    assert documented_receiver([str(new)], sent, EVENT)
    assert entries[0] == sign([new], "evt_rot", 1893576600, EVENT)


@settings(derandomize=True, database=None, deadline=None, max_examples=200)
@given(
    msg_id=st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="."),
        min_size=1,
        max_size=64,
    ),
    timestamp=st.integers(min_value=0, max_value=10**11),
    body=st.binary(max_size=512),
    flip=st.integers(min_value=0),
)
def test_documented_receiver_accepts_any_body_and_catches_any_bit_flip(
    msg_id: str, timestamp: int, body: bytes, flip: int
) -> None:
    secret = WebhookSecret.parse(VECTOR_SECRET)
    sent = headers([secret], msg_id, timestamp, body)
    assert documented_receiver([VECTOR_SECRET], sent, body)
    if body:
        index = flip % len(body)
        tampered = body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1 :]
        assert not documented_receiver([VECTOR_SECRET], sent, tampered)


def test_secret_round_trips_and_hides_its_key() -> None:
    secret = WebhookSecret.generate()
    text = str(secret)
    assert text.startswith("whsec_")
    assert len(base64.b64decode(text.removeprefix("whsec_"))) >= 24
    assert WebhookSecret.parse(text) == secret
    assert WebhookSecret.generate() != secret
    assert text.removeprefix("whsec_") not in repr(secret)
    assert repr(secret) == f"WebhookSecret(fingerprint={secret.fingerprint})"


def test_parse_accepts_unpadded_base64_and_surrounding_whitespace() -> None:
    key = bytes(range(25))  # 25 bytes: base64 needs padding
    padded = "whsec_" + base64.b64encode(key).decode()
    assert padded.endswith("=")
    expected = WebhookSecret(key)
    assert WebhookSecret.parse(padded.rstrip("=")) == expected
    assert WebhookSecret.parse(f"  {padded}\n") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with 'whsec_'"),
        ("whsk_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with 'whsec_'"),
        ("whsec_MfKQ9r8GKYqr!wjUPD8ILPZIo2LaLaSw", "not valid base64"),
        ("whsec_" + base64.b64encode(b"k" * 16).decode(), "24 to 64 bytes, got 16"),
        ("whsec_" + base64.b64encode(b"k" * 65).decode(), "24 to 64 bytes, got 65"),
        ("whsec_", "24 to 64 bytes, got 0"),
    ],
)
def test_parse_rejects_with_a_clear_message_that_hides_the_text(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        WebhookSecret.parse(text)
    payload = text.removeprefix("whsec_")
    if payload:
        assert payload not in str(caught.value)


@pytest.mark.parametrize(
    ("msg_id", "timestamp", "message"),
    [
        ("", 1, "empty"),
        ("evt.1", 1, "contains '.'"),
        ("e" * 257, 1, "longer than 256"),
        ("evt_1", -1, "non-negative integer"),
        ("evt_1", True, "non-negative integer"),
    ],
)
def test_sign_refuses_what_a_receiver_could_not_verify(
    msg_id: str, timestamp: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        sign([WebhookSecret.generate()], msg_id, timestamp, b"{}")


def test_sign_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="at least one"):
        sign([], "evt_1", 1, b"{}")
