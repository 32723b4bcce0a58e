"""The webhook receiver seen from a real HTTP client on 127.0.0.1: signed events accepted,
tampered / stale / replayed / unsigned ones refused with their reason, injected answers, the
CLI entry."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from engine.testing.webhook_receiver import Attempt, WebhookReceiver, format_attempt, run
from engine.webhooks import WebhookSecret, headers

NOW = 1_700_000_000
SECRET = WebhookSecret(b"k" * 32)
NEXT_SECRET = WebhookSecret(b"n" * 32)


def event(kind: str = "appointment.cancelled", appointment_id: str = "appt-0001") -> bytes:
    """A thin, synthetic event body: ids, time and status only."""
    data = {"appointment_id": appointment_id, "patient_id": "pat-0001", "start": "2030-01-02"}
    return json.dumps({"type": kind, "timestamp": NOW, "data": data}).encode()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver([SECRET], clock=lambda: NOW) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, body: bytes, signed: dict[str, str]) -> int:
    send = {**signed, "Content-Type": "application/json"}
    async with http.post(url, data=body, headers=send) as response:
        assert await response.read() == b""
        return response.status


async def test_signed_event_is_accepted(
    receiver: WebhookReceiver, http: aiohttp.ClientSession
) -> None:
    body = event()
    status = await post(http, receiver.url, body, headers([SECRET], "msg_1", NOW, body))
    assert status == 204
    assert receiver.events == [json.loads(body)]
    assert receiver.accepted[0].msg_id == "msg_1"
    assert receiver.attempts == [Attempt("msg_1", "/webhooks", 204)]


async def test_scheme_alone_is_enough_to_sign(
    receiver: WebhookReceiver, http: aiohttp.ClientSession
) -> None:
    """Signed from the published scheme, not from engine.webhooks."""
    body = event("appointment.created")
    key = base64.b64decode(str(SECRET).removeprefix("whsec_"))
    mac = hmac.new(key, f"msg_2.{NOW}.".encode() + body, hashlib.sha256).digest()
    signed = {
        "webhook-id": "msg_2",
        "webhook-timestamp": str(NOW),
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }
    assert await post(http, f"{receiver.url}/intake", body, signed) == 204
    assert receiver.accepted[0].path == "/webhooks/intake"


async def test_rotation_accepts_either_secret(http: aiohttp.ClientSession) -> None:
    async with WebhookReceiver([SECRET, str(NEXT_SECRET)], clock=lambda: NOW) as receiver:
        body = event()
        assert await post(http, receiver.url, body, headers([NEXT_SECRET], "m1", NOW, body)) == 204
        assert await post(http, receiver.url, body, headers([SECRET], "m2", NOW, body)) == 204
        assert len(receiver.events) == 2


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("tampered", "signature"),
        ("old", "timestamp"),
        ("future", "timestamp"),
        ("unsigned", "headers"),
        ("wrong-key", "signature"),
        ("not-json", "body"),
    ],
)
async def test_bad_requests_are_refused_with_their_reason(
    receiver: WebhookReceiver, http: aiohttp.ClientSession, name: str, reason: str
) -> None:
    body = event()
    signed = headers([SECRET], "msg_bad", NOW, body)
    if name == "tampered":
        body = event(appointment_id="appt-9999")
    elif name == "old":
        signed = headers([SECRET], "msg_bad", NOW - 301, body)
    elif name == "future":
        signed = headers([SECRET], "msg_bad", NOW + 301, body)
    elif name == "unsigned":
        del signed["webhook-signature"]
    elif name == "wrong-key":
        signed = headers([NEXT_SECRET], "msg_bad", NOW, body)
    elif name == "not-json":
        body = b"not json"
        signed = headers([SECRET], "msg_bad", NOW, body)
    assert await post(http, receiver.url, body, signed) == 400
    assert receiver.events == []
    assert receiver.rejected == [Attempt("msg_bad", "/webhooks", 400, reason)]


async def test_replayed_id_is_refused(
    receiver: WebhookReceiver, http: aiohttp.ClientSession
) -> None:
    body = event()
    signed = headers([SECRET], "msg_3", NOW, body)
    assert await post(http, receiver.url, body, signed) == 204
    assert await post(http, receiver.url, body, signed) == 400
    # A fresh timestamp and signature do not make the same id new again.
    assert await post(http, receiver.url, body, headers([SECRET], "msg_3", NOW + 5, body)) == 400
    assert [a.reason for a in receiver.rejected] == ["replay", "replay"]
    assert len(receiver.events) == 1


async def test_injected_answers_come_first_and_keep_the_id_usable(
    receiver: WebhookReceiver, http: aiohttp.ClientSession
) -> None:
    receiver.answer_with(500, times=2)
    receiver.answer_with(410)
    body = event()
    signed = headers([SECRET], "msg_4", NOW, body)
    statuses = [await post(http, receiver.url, body, signed) for _ in range(4)]
    assert statuses == [500, 500, 410, 204]
    assert [a.reason for a in receiver.attempts] == ["injected"] * 3 + [""]
    assert receiver.rejected == []
    assert len(receiver.events) == 1
    with pytest.raises(ValueError):
        receiver.answer_with(42)


async def test_only_post_is_served(receiver: WebhookReceiver, http: aiohttp.ClientSession) -> None:
    async with http.get(receiver.url) as response:
        assert response.status == 405
    assert receiver.attempts == []


async def test_wait_until_wakes_on_each_post(
    receiver: WebhookReceiver, http: aiohttp.ClientSession
) -> None:
    body = event()
    sending = asyncio.create_task(
        post(http, receiver.url, body, headers([SECRET], "msg_5", NOW, body))
    )
    await receiver.wait_until(lambda: len(receiver.events) == 1, timeout=5)
    assert await sending == 204
    with pytest.raises(TimeoutError):
        await receiver.wait_until(lambda: len(receiver.events) == 2, timeout=0.05)


def test_format_attempt_shows_the_type_and_reason_only() -> None:
    accepted = format_attempt(Attempt("m1", "/webhooks", 204), json.loads(event()))
    assert accepted == "204 accepted id=m1 appointment.cancelled"
    assert "pat-0001" not in accepted
    refused = format_attempt(Attempt("m2", "/webhooks", 400, "signature"), None)
    assert refused == "400 refused (signature) id=m2"


async def test_run_generates_a_secret_and_prints_each_post(http: aiohttp.ClientSession) -> None:
    lines: list[str] = []
    listening = asyncio.Event()
    answered = asyncio.Event()

    def write(line: str) -> None:
        lines.append(line)
        if len(lines) == 2:
            listening.set()
        elif len(lines) > 2:
            answered.set()

    serving = asyncio.create_task(run(0, write=write))
    try:
        await asyncio.wait_for(listening.wait(), 5)
        secret = WebhookSecret.parse(lines[0].rsplit(" ", 1)[1])
        url = lines[1].split(" on ", 1)[1].split(" ", 1)[0]
        body = event()
        # The CLI checks timestamps against the real clock.
        signed = headers([secret], "msg_6", int(time.time()), body)
        assert await post(http, url, body, signed) == 204
        await asyncio.wait_for(answered.wait(), 5)
    finally:
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
    assert lines[2] == "204 accepted id=msg_6 appointment.cancelled"
