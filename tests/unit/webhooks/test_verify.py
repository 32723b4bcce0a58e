"""Verification: tampering, clock skew, replays, rotation and malformed headers are refused,
each with the right reason and without leaking a secret or the body. A fake clock, no sleeps.
"""

from __future__ import annotations

import pytest

from engine.webhooks import (
    VerificationError,
    Verifier,
    WebhookSecret,
    headers,
    sign,
    verify,
)

NOW = 1_893_576_600  # 2030-01-02T09:30:00Z
BODY = b'{"type":"appointment.created","data":{"appointment_id":"APT-0007"}}'
SECRET = WebhookSecret.parse("whsec_C2FtcGxlLXNlY3JldC1mb3ItdGVzdHMtb25seQ==")
OTHER = WebhookSecret.parse("whsec_YW5vdGhlci1zeW50aGV0aWMtdGVzdC1rZXk=")


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(clock: FakeClock, *secrets: WebhookSecret | str, remember: float = 7 * 86400) -> Verifier:
    return Verifier(secrets or (SECRET,), clock=clock, remember=remember)


def reason(verifier: Verifier, sent: dict[str, str], body: bytes = BODY) -> str:
    with pytest.raises(VerificationError) as caught:
        verifier.verify(sent, body)
    return caught.value.reason


def test_accepts_what_the_engine_signs() -> None:
    verifier = make(FakeClock(NOW))
    verifier.verify(headers([SECRET], "evt_1", NOW, BODY), BODY)


def test_header_names_are_case_insensitive() -> None:
    sent = {k.title(): v for k, v in headers([SECRET], "evt_1", NOW, BODY).items()}
    assert "Webhook-Signature" in sent
    make(FakeClock(NOW)).verify(sent, BODY)


def test_tampered_body_id_or_timestamp_is_refused() -> None:
    verifier = make(FakeClock(NOW))
    sent = headers([SECRET], "evt_1", NOW, BODY)
    assert reason(verifier, sent, BODY.replace(b"0007", b"0008")) == "signature"
    assert reason(verifier, sent, BODY + b" ") == "signature"
    assert reason(verifier, {**sent, "webhook-id": "evt_2"}) == "signature"
    assert reason(verifier, {**sent, "webhook-timestamp": str(NOW - 1)}) == "signature"
    # None of those burnt the id: the genuine request still goes through.
    verifier.verify(sent, BODY)


def test_wrong_secret_is_refused() -> None:
    sent = headers([OTHER], "evt_1", NOW, BODY)
    assert reason(make(FakeClock(NOW)), sent) == "signature"


@pytest.mark.parametrize("offset", [-300, 300])
def test_timestamp_exactly_at_tolerance_is_accepted(offset: int) -> None:
    clock = FakeClock(NOW + offset)
    make(clock).verify(headers([SECRET], "evt_1", NOW, BODY), BODY)


@pytest.mark.parametrize(("offset", "word"), [(301, "old"), (-301, "future")])
def test_timestamp_one_second_past_tolerance_is_refused(offset: int, word: str) -> None:
    verifier = make(FakeClock(NOW + offset))
    with pytest.raises(VerificationError, match=word) as caught:
        verifier.verify(headers([SECRET], "evt_1", NOW, BODY), BODY)
    assert caught.value.reason == "timestamp"


def test_replayed_id_is_refused_until_remember_expires() -> None:
    clock = FakeClock(NOW)
    verifier = make(clock, remember=3600)
    verifier.verify(headers([SECRET], "evt_1", NOW, BODY), BODY)
    assert reason(verifier, headers([SECRET], "evt_1", NOW, BODY)) == "replay"
    # A sender's retry keeps the id and signs a fresh timestamp: still a duplicate.
    clock.now = NOW + 3599
    assert reason(verifier, headers([SECRET], "evt_1", NOW + 3599, BODY)) == "replay"
    clock.now = NOW + 3600
    verifier.verify(headers([SECRET], "evt_1", NOW + 3600, BODY), BODY)


def test_remembered_ids_are_pruned_so_memory_stays_bounded() -> None:
    clock = FakeClock(NOW)
    seen: dict[str, float] = {}
    verifier = Verifier([SECRET], clock=clock, remember=1000, seen=seen)
    for second in range(50):
        clock.now = NOW + second * 100
        verifier.verify(headers([SECRET], f"evt_{second}", int(clock.now), BODY), BODY)
        assert len(seen) <= 10
    assert sorted(seen) == sorted(f"evt_{n}" for n in range(40, 50))


def test_remember_shorter_than_the_timestamp_window_is_refused() -> None:
    with pytest.raises(ValueError, match="twice the tolerance"):
        Verifier([SECRET], tolerance=300, remember=599)


@pytest.mark.parametrize("signed_with", [SECRET, OTHER])
def test_rotation_accepts_either_secret(signed_with: WebhookSecret) -> None:
    verifier = make(FakeClock(NOW), SECRET, str(OTHER))
    verifier.verify(headers([signed_with], "evt_1", NOW, BODY), BODY)


def test_rotation_header_with_two_signatures_is_accepted_by_a_one_secret_receiver() -> None:
    sent = headers([OTHER, SECRET], "evt_1", NOW, BODY)
    make(FakeClock(NOW), SECRET).verify(sent, BODY)


def test_non_v1_signatures_are_ignored() -> None:
    good = sign([SECRET], "evt_1", NOW, BODY).removeprefix("v1,")
    verifier = make(FakeClock(NOW))
    # The right bytes under another version label do not count ...
    for label in ("v1a", "v2", "V1"):
        assert (
            reason(
                verifier,
                headers([SECRET], "evt_1", NOW, BODY) | {"webhook-signature": f"{label},{good}"},
            )
            == "signature"
        )
    # ... and do not spoil a list that also holds a valid v1.
    mixed = f"v2,{good} v1a,bm90LWEtc2lnbmF0dXJl garbage v1,!!! v1,{good}"
    verifier.verify(
        {"webhook-id": "evt_1", "webhook-timestamp": str(NOW), "webhook-signature": mixed}, BODY
    )


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"webhook-id": None}, "missing webhook-id"),
        ({"webhook-timestamp": None}, "missing webhook-timestamp"),
        ({"webhook-signature": None}, "missing webhook-signature"),
        ({"webhook-id": ""}, "missing webhook-id"),
        ({"webhook-id": "evt.1"}, "contains '.'"),
        ({"webhook-id": "e" * 300}, "longer than"),
        ({"webhook-timestamp": "1893576600.5"}, "not integer"),
        ({"webhook-timestamp": "-1893576600"}, "not integer"),
        ({"webhook-timestamp": "soon"}, "not integer"),
        ({"webhook-timestamp": "1" * 13}, "not integer"),
        ({"webhook-timestamp": "١٨٩٣٥٧٦٦٠٠"}, "not integer"),  # non-ASCII digits
        ({"Webhook-ID": "evt_other"}, "more than once"),
    ],
)
def test_malformed_headers(change: dict[str, str | None], detail: str) -> None:
    sent: dict[str, str] = headers([SECRET], "evt_1", NOW, BODY)
    for name, value in change.items():
        if value is None:
            del sent[name]
        else:
            sent[name] = value
    verifier = make(FakeClock(NOW))
    with pytest.raises(VerificationError, match=detail) as caught:
        verifier.verify(sent, BODY)
    assert caught.value.reason == "headers"


def test_signature_header_without_any_v1_entry_is_refused() -> None:
    sent = headers([SECRET], "evt_1", NOW, BODY) | {"webhook-signature": "nonsense"}
    assert reason(make(FakeClock(NOW)), sent) == "signature"


def test_errors_never_carry_secret_signature_or_body() -> None:
    verifier = make(FakeClock(NOW + 10_000), SECRET, OTHER)
    sent = headers([SECRET], "evt_1", NOW, BODY)
    texts = []
    for attempt in (sent, sent | {"webhook-timestamp": str(NOW + 10_000)}):
        with pytest.raises(VerificationError) as caught:
            verifier.verify(attempt, BODY)
        texts += [str(caught.value), repr(caught.value)]
    texts.append(repr(vars(verifier)))  # the secrets it holds show as fingerprints only
    signature = sent["webhook-signature"].removeprefix("v1,")
    for text in texts:
        for secret in (SECRET, OTHER):
            assert str(secret).removeprefix("whsec_") not in text
        assert signature not in text
        assert "APT-0007" not in text


def test_function_form_with_a_seen_dict() -> None:
    seen: dict[str, float] = {}
    sent = headers([SECRET], "evt_1", NOW, BODY)
    verify(str(SECRET), sent, BODY, seen=seen, now=NOW)
    with pytest.raises(VerificationError) as caught:
        verify([str(OTHER), str(SECRET)], sent, BODY, seen=seen, now=NOW + 1)
    assert caught.value.reason == "replay"
    with pytest.raises(VerificationError) as caught:
        verify(str(SECRET), sent, BODY, seen={}, now=NOW + 301)
    assert caught.value.reason == "timestamp"


def test_function_form_uses_the_real_clock_by_default() -> None:
    sent = headers([SECRET], "evt_1", 1_000_000_000, BODY)  # 2001: long past
    with pytest.raises(VerificationError, match="old") as caught:
        verify(str(SECRET), sent, BODY, seen={})
    assert caught.value.reason == "timestamp"


def test_bad_secret_text_is_a_value_error_at_construction() -> None:
    with pytest.raises(ValueError, match="whsec_"):
        Verifier(["not-a-secret"])
    with pytest.raises(ValueError, match="at least one"):
        Verifier([])
