"""Alerts to a real HTTPS alert receiver on 127.0.0.1 (certificates from engine.security.
devcerts, verified against their CA): a burst seen by the access watch arrives signed the
Standard Webhooks way (checked with engine.webhooks.verify) and without PHI; a receiver that
fails once gets the same alert again (same webhook-id); a full queue drops and counts."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from engine.config.model import (
    AlertsConfig,
    AlertWebhook,
    BurstWatch,
    ClientTls,
    ListenerTls,
    RetryPolicy,
    SecurityConfig,
)
from engine.destinations.webhook import WebhookDestination
from engine.security.alert_webhook import AlertDelivery, AlertSender
from engine.security.alerts import Alert, alert_extra
from engine.security.audit import Actor, AuditEvent, AuditKey
from engine.security.audit_store import AuditStore
from engine.security.devcerts import make_dev_certs
from engine.security.tls import client_context, server_context
from engine.security.watch import AccessWatch, WatchPolicy
from engine.webhooks import WebhookSecret, verify
from tests.unit.security.audit_support import KEY_TEXT

SECRET = str(WebhookSecret.generate())
PATIENT = "PAT-ALERT-4711"


class Receiver:
    """An HTTPS endpoint that answers with the statuses it is given, then 204."""

    def __init__(self, certs_dir: Path, statuses: list[int] | None = None) -> None:
        self.certs = make_dev_certs(certs_dir)
        self.statuses = list(statuses or [])
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hooks/alerts", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        tls = server_context(ListenerTls(str(self.certs.server), str(self.certs.server_key)))
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 204)

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}/hooks/alerts"


async def test_a_burst_alert_arrives_signed_and_without_phi(tmp_path: Path):
    async with Receiver(tmp_path / "certs") as receiver:
        webhook = AlertWebhook(receiver.url, SECRET, ClientTls(ca=str(receiver.certs.ca)))
        security = SecurityConfig(alerts=AlertsConfig(webhook=webhook))
        delivery = AlertDelivery(security)
        await delivery.start()
        watch = AccessWatch(WatchPolicy(burst=BurstWatch(reads=2, within=30.0)))
        key = AuditKey.from_bytes(KEY_TEXT.encode(), "test")
        with AuditStore(tmp_path / "audit.db", key, watch=watch) as trail:
            for _ in range(3):
                trail.append(
                    Actor("desk1", "viewer", "10.1.2.3", "agent"),
                    AuditEvent("R", "GET /fhir/Appointment/7", patient_ids=(PATIENT,)),
                )
        await delivery.stop(grace=30.0)
    assert delivery.sender is not None and delivery.sender.sent == 1
    [(headers, body)] = receiver.requests
    verify(SECRET, headers, body, seen={})  # raises unless the signature holds
    event = json.loads(body)
    assert event["type"] == "alert.access_burst"
    assert event["data"]["who"] == "desk1" and event["data"]["reads"] == 3
    assert event["data"]["text"] == "ALERT access burst: desk1 made 3 reads in 30s"
    assert event["timestamp"].endswith("Z")
    assert PATIENT.encode() not in body


def alert(kind: str = "test", **data: Any) -> Alert:
    record = logging.LogRecord("engine.alerts", logging.WARNING, __file__, 1, f"ALERT {kind}",
                               (), None)  # fmt: skip
    record.__dict__.update(alert_extra(kind, **data))
    return Alert.of(record)


async def test_a_failed_send_is_retried_with_the_same_id(tmp_path: Path):
    async with Receiver(tmp_path / "certs", statuses=[503]) as receiver:
        destination = WebhookDestination(
            "alert-webhook", url=receiver.url, secrets=[WebhookSecret.parse(SECRET)],
            tls=client_context(ClientTls(ca=str(receiver.certs.ca))),
        )  # fmt: skip
        sender = AlertSender(destination, retry=RetryPolicy(attempts=2, first=0.01, jitter=0))
        await sender.start()
        sender.offer(alert("credential_locked", credential="user:desk1", failures=5))
        await sender.stop(grace=30.0)
    assert sender.sent == 1 and sender.dropped == 0
    ids = [headers["webhook-id"] for headers, _ in receiver.requests]
    assert len(ids) == 2 and ids[0] == ids[1]
    assert json.loads(receiver.requests[1][1])["data"]["credential"] == "user:desk1"


class Stuck:
    """A destination whose sends never finish until stopped: the queue fills up."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def send(self, payload: bytes, meta: object) -> Any:
        self.started.set()
        await asyncio.Event().wait()

    async def close(self) -> None:
        return None


async def test_a_full_queue_drops_with_a_counted_warning(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="engine.alert_delivery")
    stuck = Stuck()
    sender = AlertSender(stuck, capacity=2)
    await sender.start()
    sender.offer(alert())
    await stuck.started.wait()  # the first alert is being sent: two more fill the queue
    for _ in range(4):
        sender.offer(alert())
    await sender.stop(grace=0.01)
    warnings = [r.getMessage() for r in caplog.records if r.name == "engine.alert_delivery"]
    assert warnings[:2] == [
        "alert webhook queue full (2): alert.test dropped; 1 dropped so far",
        "alert webhook queue full (2): alert.test dropped; 2 dropped so far",
    ]
    assert sender.dropped == 4  # two refused at the door, two left queued at stop
