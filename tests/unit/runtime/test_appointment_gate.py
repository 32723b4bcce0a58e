"""The appointment gate: dispositions from the store's state, per-key serialisation, refusals
under `conflicts: reject`, all against a real SQLite store."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engine.config.model import ChannelConfig, ConflictPolicy, Pos
from engine.pipeline.channel import CompiledChannel
from engine.pipeline.steps.base import CompileContext
from engine.runtime.appointments import CONFLICT_STEP, AppointmentGate, key_of
from engine.runtime.intake import new_message
from engine.runtime.processing import decode_fhir
from engine.store.base import Ingest, StaleJudgement
from engine.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[3]
POS = Pos(Path("channels/x.yaml"), 1, 1)
BOOKED: dict[str, Any] = json.loads((ROOT / "samples" / "fhir_appointment_booked.json").read_text())
KEY = "urn:booking-portal:appointments|WEB2001"
T0 = 1_750_000_000.0


def channel(conflicts: ConflictPolicy = "flag") -> CompiledChannel:
    config = ChannelConfig("c", Path("channels/c.yaml"), POS, accept_types=("Appointment",),
                           conflicts=conflicts)
    return CompiledChannel(config, CompileContext({}, ROOT / "transforms"))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "engine.db")
    await s.open()
    yield s
    await s.close()


def resource(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(BOOKED)
    out.update(changes)
    return out


async def record(store: SqliteStore, gate: AppointmentGate, body: dict[str, Any],
                 *, at: float = T0, conflicts: ConflictPolicy = "flag") -> str:
    """Judge and commit one version; its disposition."""
    decoded = decode_fhir(body, json.dumps(body).encode())
    async with gate.hold(key_of(decoded)):
        judged, outcomes = await gate.process(
            decoded, [channel(conflicts)], now=at, control_id="C1", source_time=at
        )
        assert judged is not None
        await store.ingest(Ingest(new_message("api", b"{}", decoded, at, "processed", "201", b""),
                                  appointment=judged.version()))
    if judged.refused:
        assert outcomes[0].status == "error" and outcomes[0].error_step == CONFLICT_STEP
    return judged.context.disposition


async def test_dispositions_follow_the_stored_state(store: SqliteStore) -> None:
    gate = AppointmentGate(store)
    assert await record(store, gate, resource()) == "current"
    assert await record(store, gate, resource(), at=T0 + 1) == "unchanged"
    moved = resource(start="2025-04-02T15:00:00Z", end="2025-04-02T15:30:00Z")
    assert await record(store, gate, moved, at=T0 + 2) == "current"
    # The first booking arriving again, said to be older than the current version: stale.
    assert await record(store, gate, resource(), at=T0 + 1.5) == "stale"
    row = await store.appointment(KEY)
    assert row is not None and row.version == 2 and json.loads(row.resource)["start"] == (
        "2025-04-02T15:00:00Z")


async def test_reject_refuses_a_double_booking_and_keeps_state(store: SqliteStore) -> None:
    gate = AppointmentGate(store)
    await record(store, gate, resource())
    other = resource(identifier=[{"system": "urn:booking-portal:appointments",
                                  "value": "WEB2002"}])
    assert await record(store, gate, other, conflicts="reject") == "rejected"
    assert await store.appointment("urn:booking-portal:appointments|WEB2002") is None
    (version,) = await store.appointment_history("urn:booking-portal:appointments|WEB2002")
    assert version.disposition == "rejected"
    assert [w.kind for w in version.warnings] == ["double-booking"]
    assert await record(store, gate, other, conflicts="flag") == "current"


async def test_one_key_is_judged_at_a_time_and_idle_keys_are_forgotten(
    store: SqliteStore,
) -> None:
    gate = AppointmentGate(store)
    order: list[str] = []
    inside = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with gate.hold(KEY):
            order.append("first in")
            inside.set()
            await release.wait()
            order.append("first out")

    async def second() -> None:
        await inside.wait()
        async with gate.hold(KEY):
            order.append("second in")

    async def other_key() -> None:
        await inside.wait()
        async with gate.hold("urn:x|OTHER"):
            order.append("other in")
        release.set()

    await asyncio.gather(first(), second(), other_key())
    assert order == ["first in", "other in", "first out", "second in"]
    assert gate._locks == {}  # the point of the test: idle keys hold no lock


async def test_a_judgement_overtaken_by_another_writer_is_refused(store: SqliteStore) -> None:
    """Two gates on one store stand for two processes (the engine and `engine replay`)."""
    engine_gate, replay_gate = AppointmentGate(store), AppointmentGate(store)
    await record(store, engine_gate, resource())
    old = resource(comment="judged against version 1")
    decoded = decode_fhir(old, json.dumps(old).encode())
    judged, _ = await replay_gate.process(decoded, [channel()], now=T0 + 1, control_id="R1",
                                          source_time=T0 + 1)
    assert judged is not None and judged.context.disposition == "current"
    newest = resource(comment="version 2, committed meanwhile")
    assert await record(store, engine_gate, newest, at=T0 + 2) == "current"
    row = new_message("api", b"{}", decoded, T0 + 1, "processed", "", b"")
    with pytest.raises(StaleJudgement):
        await store.ingest(Ingest(row, appointment=judged.version()))
    current = await store.appointment(KEY)
    assert current is not None and current.version == 2
    assert json.loads(current.resource)["comment"] == "version 2, committed meanwhile"
    # Judged again, the late version is what it is: older than the current one.
    judged, _ = await replay_gate.process(decoded, [channel()], now=T0 + 3, control_id="R2",
                                          source_time=T0 + 1)
    assert judged is not None and judged.context.disposition == "stale"


async def test_a_waiter_cancelled_in_the_queue_leaves_no_lock_behind(store: SqliteStore) -> None:
    gate = AppointmentGate(store)
    inside = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with gate.hold(KEY):
            inside.set()
            await release.wait()

    async def waiter() -> None:
        async with gate.hold(KEY):
            raise AssertionError("a cancelled waiter must never get the key")

    first = asyncio.create_task(holder())
    await inside.wait()
    second = asyncio.create_task(waiter())
    while gate._locks[KEY][1] < 2:  # until the waiter is queued on the key's lock
        await asyncio.sleep(0)
    assert not second.done()
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    release.set()
    await first
    assert gate._locks == {}
    async with gate.hold(KEY):  # and the key is free for the next one
        pass


async def test_a_custom_step_cannot_change_the_recorded_version(
    store: SqliteStore, tmp_path: Path
) -> None:
    (tmp_path / "meddle.py").write_text(
        "def cancel(doc, context):\n"
        "    context.appointment.resource['status'] = 'cancelled'\n"
        "    return doc\n"
    )
    from engine.config.model import StepSpec

    config = ChannelConfig("c", Path("channels/c.yaml"), POS, accept_types=("Appointment",),
                           steps=(StepSpec("python", "meddle.cancel", POS, 1),))
    meddling = CompiledChannel(config, CompileContext({}, tmp_path))
    assert meddling.user_code and not channel().user_code
    gate = AppointmentGate(store)
    body = resource()
    decoded = decode_fhir(body, json.dumps(body).encode())
    judged, outcomes = await gate.process(decoded, [meddling, channel()], now=T0,
                                          control_id="C1", source_time=T0)
    assert judged is not None and [o.status for o in outcomes] == ["ok", "ok"]
    version = judged.version()
    assert version.status == "booked" and json.loads(version.resource)["status"] == "booked"
