"""Appointments end to end, over real sockets: SIU in → FHIR server out, FHIR in → MLLP EHR
out, webhook events, conflicts flagged or refused, replays that change nothing downstream,
and appointment.sync_failed when a delivery gives up."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from engine.commands.inspect import show
from engine.protocol.er7 import Message
from engine.runtime.clock import SystemClock
from engine.runtime.engine import Engine
from engine.runtime.replay import Replayer
from engine.store.base import MessageFilter
from engine.testing.fake_ehr import FakeEhr
from engine.testing.fake_fhir import FakeFhir
from engine.testing.mllp_client import MllpClient
from tests.integration.conftest import ack_code, eventually, free_port, running, sample, segment
from tests.integration.fhir_support import FhirClient, appointment, write_fhir_config

SIU_TYPES = ["SIU^S12", "SIU^S13", "SIU^S14", "SIU^S15", "SIU^S17", "SIU^S26"]
FAST_RETRY = {"attempts": 2, "first": "50ms", "max": "100ms"}
SECRET = "whsec_" + base64.b64encode(b"integration-test-secret-32-bytes").decode()
APT1001 = "urn:engine:v2-namespace:EPIC|APT1001"


class SpecReceiver:
    """A webhook receiver written from the Standard Webhooks text alone (hmac by hand), not
    from `engine.webhooks`: what a subscriber would build."""

    def __init__(self, secret: str) -> None:
        self.key = base64.b64decode(secret.removeprefix("whsec_"))
        self.events: list[dict[str, Any]] = []
        self.refused = 0
        self.seen: set[str] = set()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        msg_id = request.headers["webhook-id"]
        stamp = request.headers["webhook-timestamp"]
        signed = f"{msg_id}.{stamp}.".encode() + body
        mine = base64.b64encode(hmac.new(self.key, signed, hashlib.sha256).digest()).decode()
        given = [s.partition(",") for s in request.headers["webhook-signature"].split(" ")]
        if abs(time.time() - int(stamp)) > 300 or not any(
            v == "v1" and hmac.compare_digest(mine, sig) for v, _, sig in given
        ):
            self.refused += 1
            return web.Response(status=400)
        if msg_id not in self.seen:
            self.seen.add(msg_id)
            self.events.append(json.loads(body))
        return web.Response(status=204)

    async def __aenter__(self) -> SpecReceiver:
        app = web.Application()
        app.router.add_post("/hooks", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


@dataclass
class World:
    engine: Engine
    ehr: FakeEhr
    fhir: FakeFhir
    hooks: SpecReceiver
    api: FhirClient
    mllp_port: int

    async def send(self, *names: str, **fields: str) -> list[bytes]:
        acks = []
        async with await MllpClient.connect("127.0.0.1", self.mllp_port) as client:
            for name in names:
                acks.append(await client.send(with_fields(sample(name), **fields)))
        return acks

    async def settled(self) -> None:
        """Every delivery final (sent or failed), none queued."""

        async def done() -> bool:
            return all(d.status != "queued" for d in await self.engine.store.deliveries())

        await eventually(done, what="every delivery final")

    async def replay(self, ids: list[int]) -> None:
        engine = self.engine
        replayer = Replayer(engine.config, engine.channels, engine.store, SystemClock())
        plans = await replayer.replay(ids)
        assert all(p.replay_id is not None for p in plans)
        await self.settled()


def with_fields(data: bytes, **fields: str) -> bytes:
    message = Message.parse(data.decode("utf-8"))
    for path, value in fields.items():
        message.set(path, value)
    return message.to_er7().encode("utf-8")


def channels(ehr_port: int, fhir_url: str, hooks_port: int, conflicts: str) -> dict[str, Any]:
    return {
        "siu-to-fhir": {
            "accept": {"type": SIU_TYPES},
            "conflicts": conflicts,
            "steps": [{"convert": "siu_to_fhir"}],
            "destinations": {
                "fhir-server": {"fhir": {"base_url": fhir_url}, "retry": FAST_RETRY}
            },
        },
        "fhir-to-siu": {
            "accept": {"type": ["Appointment"]},
            "conflicts": conflicts,
            "steps": [{"convert": "fhir_to_siu"}, {"set": {"MSH-5": "CLINIC_EHR"}}],
            "destinations": {
                "clinic-ehr": {
                    "mllp": {"host": "127.0.0.1", "port": ehr_port, "ack_timeout": "2s"},
                    "retry": FAST_RETRY,
                    "order_by": "SCH-1.1",
                }
            },
        },
        "events": {
            "accept": {"type": [*SIU_TYPES, "Appointment"]},
            "steps": [{"convert": "appointment_event"}],
            "destinations": {
                "notifications": {
                    "webhook": {
                        "url": f"http://127.0.0.1:{hooks_port}/hooks",
                        "secret": "${TEST_WEBHOOK_SECRET}",
                    },
                    "retry": FAST_RETRY,
                }
            },
        },
    }


@pytest.fixture
async def world(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    conflicts = getattr(request, "param", "flag")
    http_port, mllp_port, ehr_port = free_port(), free_port(), free_port()
    os.environ["TEST_WEBHOOK_SECRET"] = SECRET
    try:
        async with (
            FakeEhr(port=ehr_port) as ehr,
            FakeFhir() as fhir,
            SpecReceiver(SECRET) as hooks,
        ):
            routes = write_fhir_config(
                tmp_path / "cfg",
                http_port,
                channels(ehr_port, fhir.url, hooks.port, conflicts),
                routes={"api": ["fhir-to-siu", "events"], "feed": ["siu-to-fhir", "events"]},
                mllp_port=mllp_port,
            )
            async with running(routes) as engine, aiohttp.ClientSession() as session:
                api = FhirClient(session, f"http://127.0.0.1:{http_port}/fhir")
                yield World(engine, ehr, fhir, hooks, api, mllp_port)
    finally:
        del os.environ["TEST_WEBHOOK_SECRET"]


def trigger(payload: bytes) -> str:
    return Message.parse(payload.decode()).get("MSH-9.2")


async def message_ids(engine: Engine) -> list[int]:
    return sorted(r.id for r in await engine.store.search(MessageFilter(limit=1000)))


async def test_siu_booking_change_and_cancel_are_one_fhir_appointment(world: World) -> None:
    acks = await world.send(
        "siu_s12_new_patient.hl7", "siu_s14_modify.hl7", "siu_s15_cancel.hl7"
    )
    assert [ack_code(a) for a in acks] == ["AA", "AA", "AA"]
    await world.settled()
    (stored,) = world.fhir.find(APT1001)
    assert stored["meta"]["versionId"] == "3" and stored["status"] == "cancelled"
    puts = [r for r in world.fhir.requests if r.method == "PUT"]
    assert [r.status for r in puts] == [201, 200, 200]
    assert world.hooks.types() == [
        "appointment.created", "appointment.updated", "appointment.cancelled"
    ]
    assert world.hooks.refused == 0
    assert all(e["data"]["appointment_id"] == APT1001 for e in world.hooks.events)

    await world.replay(await message_ids(world.engine))
    (after,) = world.fhir.find(APT1001)
    assert after == stored  # same version, same content
    assert len(world.hooks.events) == 3  # a replay announces nothing


async def test_fhir_booking_change_and_cancel_reach_the_ehr_as_s12_s13_s15(
    world: World,
) -> None:
    status, headers, created = await world.api.post("/Appointment", appointment())
    assert status == 201
    rid = created["id"]
    moved = appointment("rescheduled")
    status, headers, _ = await world.api.put(
        f"/Appointment/{rid}", moved, headers={"If-Match": headers["ETag"]}
    )
    assert status == 200
    status, _, cancelled = await world.api.put(
        f"/Appointment/{rid}", appointment("cancelled"), headers={"If-Match": headers["ETag"]}
    )
    assert status == 200 and cancelled["meta"]["versionId"] == "3"
    received = await world.ehr.wait_for(3)
    assert [trigger(p) for p in received] == ["S12", "S13", "S15"]
    assert {Message.parse(p.decode()).get("SCH-1.1") for p in received} == {"WEB2001"}
    await world.settled()
    assert world.hooks.types() == [
        "appointment.created", "appointment.updated", "appointment.cancelled"
    ]

    await world.replay(await message_ids(world.engine))
    # The stale versions (booking, change) send nothing; the current one (the cancel) is
    # sent again as what it is, so the EHR's appointment stays cancelled at the new time.
    later = world.ehr.received[3:]
    assert [trigger(p) for p in later] == ["S15"]
    final = Message.parse(world.ehr.received[-1].decode())
    assert final.get("MSH-9.2") == "S15" and final.get("TQ1-7") == "202504030900+0000"
    assert len(world.hooks.events) == 3
    _, _, read = await world.api.get(f"/Appointment/{rid}")
    assert read["meta"]["versionId"] == "3" and read["status"] == "cancelled"


async def shown(engine: Engine, message_id: int) -> str:
    out = io.StringIO()
    assert await show(engine.store, message_id, False, out) == 0
    return out.getvalue()


async def test_double_booking_and_update_after_cancel_are_flagged(world: World) -> None:
    other = {"SCH-1.1": "APT2002", "SCH-2.1": "F6002", "MSH-10": "MSG-DB1"}
    acks = await world.send("siu_s12_new_patient.hl7")
    acks += await world.send("siu_s12_new_patient.hl7", **other)
    assert [ack_code(a) for a in acks] == ["AA", "AA"]
    flagged = await world.engine.store.search(MessageFilter(flagged=True))
    assert [r.keys.control_id for r in flagged] == ["MSG-DB1"]
    text = await shown(world.engine, flagged[0].id)
    assert "FLAGGED double-booking" in text and APT1001 in text

    acks = await world.send("siu_s15_cancel.hl7")
    acks += await world.send("siu_s14_modify.hl7", **{"MSH-7": "20250320090000-0500"})
    assert [ack_code(a) for a in acks] == ["AA", "AA"]
    flagged = await world.engine.store.search(MessageFilter(flagged=True))
    assert len(flagged) == 2
    assert "FLAGGED update-after-cancel" in await shown(world.engine, flagged[0].id)


@pytest.mark.parametrize("world", ["reject"], indirect=True)
async def test_conflicts_are_refused_under_reject(world: World) -> None:
    other = {"SCH-1.1": "APT2002", "SCH-2.1": "F6002", "MSH-10": "MSG-DB2"}
    acks = await world.send("siu_s12_new_patient.hl7")
    acks += await world.send("siu_s12_new_patient.hl7", **other)
    assert ack_code(acks[0]) == "AA" and ack_code(acks[1]) == "AE"
    (err,) = segment(acks[1], "ERR")
    assert "appointment conflict" in err and "already booked" in err
    assert "APT1001" not in err  # the other booking is not named to the sender
    assert await world.engine.store.appointment("urn:engine:v2-namespace:EPIC|APT2002") is None
    (refused,) = await world.engine.store.search(MessageFilter(control_id="MSG-DB2"))
    text = await shown(world.engine, refused.id)
    assert "FLAGGED double-booking" in text and APT1001 in text  # the operator sees which

    # The same provider and time booked through the FHIR API: 422 with the reason, nothing
    # queued, not the state, and listed with the flagged ones.
    clash = appointment(
        start="2025-03-17T10:30:00Z",
        end="2025-03-17T11:00:00Z",
        participant=[
            {"actor": {"type": "Practitioner", "identifier": {
                "system": "urn:engine:v2-namespace:LOCAL", "value": "P1001"}},
             "status": "accepted"},
        ],
    )
    before = len(await world.engine.store.deliveries())
    status, _, outcome = await world.api.post("/Appointment", clash)
    assert status == 422
    (issue,) = outcome["issue"]
    assert issue["code"] == "business-rule" and "already booked" in issue["diagnostics"]
    assert "APT1001" not in json.dumps(outcome)
    assert await world.engine.store.appointment("urn:booking-portal:appointments|WEB2001") is None
    assert len(await world.engine.store.deliveries()) == before
    flagged = await world.engine.store.search(MessageFilter(flagged=True))
    assert {r.keys.message_type for r in flagged} == {"SIU^S12", "Appointment"}


async def test_a_delivery_that_gives_up_raises_sync_failed(world: World) -> None:
    world.fhir.fail_next(400)
    (ack,) = await world.send("siu_s12_new_patient.hl7")
    assert ack_code(ack) == "AA"

    async def announced() -> bool:
        return "appointment.sync_failed" in world.hooks.types()

    await eventually(announced, what="appointment.sync_failed")
    event = world.hooks.events[world.hooks.types().index("appointment.sync_failed")]
    assert event["data"]["booking_reference"] == "APT1001"
    assert event["data"]["destination"] == "fhir-server"
    assert event["data"]["reason_code"] == "rejected"
    assert "Testperson" not in json.dumps(world.hooks.events)
