"""Hot reload of a running engine, in process, over real sockets and a real SQLite store: a bad
configuration is refused and the old one keeps running; a changed mapping table and a
rebuilt destination take effect for the next message while a sender keeps sending, and every
acknowledged message is delivered exactly once; changed and removed destinations keep their
queued deliveries; settings bound at start need a restart; every reload is audited."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import yaml

from engine.config import load
from engine.protocol.er7 import Message
from engine.runtime.engine import Engine
from engine.runtime.security import SecurityServices
from engine.security.audit import Actor, AuditKey
from engine.security.audit_store import AuditLog, AuditStore
from engine.testing.fake_ehr import FakeEhr
from engine.testing.mllp_client import MllpClient
from tests.integration.conftest import (
    ack_code,
    channel,
    deliveries_of,
    eventually,
    free_port,
    sample,
    write_config,
)
from tests.unit.security.audit_support import KEY_TEXT

ADMIN = Actor(who="user:root1", role="admin", address="127.0.0.1", user_agent="test")
TABLE = "transforms/tables/appointment_types.yaml"
OLD_CODE, NEW_CODE = "NP_EVAL_60", "NP_NEW_90"


def numbered(n: int) -> bytes:
    """The new-patient sample as appointment n: its own control id, appointment and slot."""
    message = Message.parse(sample("siu_s12_new_patient.hl7").decode("utf-8"))
    message.set("MSH-10", f"RL{n:05d}")
    message.set("SCH-1.1", f"APTRL{n:05d}")
    return message.to_er7().encode("utf-8")


def control_id(data: bytes) -> str:
    return Message.parse(data.decode("utf-8")).get("MSH-10")


def replace_in(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, (path, old)
    path.write_text(text.replace(old, new))


def edit_channel(root: Path, name: str, change: dict[str, object]) -> None:
    path = root / "channels" / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(change)
    path.write_text(yaml.safe_dump(data))


@asynccontextmanager
async def audited(routes: Path, tmp_path: Path) -> AsyncIterator[tuple[Engine, AuditStore]]:
    """The engine with an audit trail in tmp_path, and that trail to read."""
    config = load(routes)
    trail = tmp_path / "audit.db"
    log = AuditLog(AuditStore(trail, AuditKey.from_bytes(KEY_TEXT.encode(), "test")))
    engine = Engine(config, poll_interval=0.05, security=SecurityServices(config, audit=log))
    await engine.start()
    try:
        with AuditStore(trail, AuditKey.from_bytes(KEY_TEXT.encode(), "test")) as reader:
            yield engine, reader
    finally:
        await engine.stop()


def reloads(trail: AuditStore) -> list[tuple[str, int, str]]:
    """(who, outcome, summary) of each config reload record, oldest first."""
    found = [r for r in trail.search(limit=0) if r.event.what == "config reload"]
    return [(r.actor.who, r.event.outcome, str((r.event.query or {})["summary"]))
            for r in reversed(found)]  # fmt: skip


async def test_a_broken_channel_is_refused_and_the_old_one_keeps_running(tmp_path: Path) -> None:
    listen, ehr_port = free_port(), free_port()
    routes = write_config(tmp_path, listen, {"to-ehr": channel(ehr_port, dedupe=0)})
    async with FakeEhr(port=ehr_port) as ehr, audited(routes, tmp_path) as (engine, trail):
        path = tmp_path / "channels" / "to-ehr.yaml"
        path.write_text(path.read_text() + "colour: blue\n")
        replace_in(tmp_path / TABLE, OLD_CODE, NEW_CODE)  # would apply, were the rest good
        line = len(path.read_text().splitlines())
        result = await engine.reload(ADMIN)
        assert not result.accepted and result.outcome == 4
        assert result.summary == "1 configuration problem"
        assert any(p.startswith(f"{path}:{line}:1: unknown key 'colour'")
                   for p in result.problems), result.problems  # fmt: skip
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            assert ack_code(await client.send(numbered(1))) == "AA"
        (delivered,) = await ehr.wait_for(1)
        assert Message.parse(delivered.decode()).get("SCH-7.1") == OLD_CODE
        assert reloads(trail) == [("user:root1", 4, "1 configuration problem")]


async def test_a_changed_table_applies_to_the_next_message_with_none_lost(tmp_path: Path) -> None:
    """A sender keeps sending over one MLLP connection while the table changes and the
    destination is rebuilt (its ack_timeout changed): every message answered AA reaches the
    EHR exactly once, those sent after the reload returned carry the new code, those
    answered before it started the old one."""
    listen, ehr_port = free_port(), free_port()
    routes = write_config(tmp_path, listen, {"to-ehr": channel(ehr_port, dedupe=0)})
    acked: list[tuple[int, float]] = []  # (n, loop time of its ACK)
    sent_at: dict[int, float] = {}
    stop = asyncio.Event()

    async def sender() -> None:
        loop = asyncio.get_running_loop()
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            n = 0
            while not stop.is_set():
                n += 1
                sent_at[n] = loop.time()
                ack = await client.send(numbered(n))
                assert ack_code(ack) == "AA", ack
                acked.append((n, loop.time()))

    async with FakeEhr(port=ehr_port) as ehr, audited(routes, tmp_path) as (engine, trail):
        sending = asyncio.create_task(sender())

        async def some(count: int, after: float = 0.0) -> bool:
            assert not sending.done(), sending
            return sum(t > after for _, t in acked) >= count

        await eventually(lambda: some(20), what="20 messages before the reload")
        replace_in(tmp_path / TABLE, OLD_CODE, NEW_CODE)
        edit_channel(tmp_path, "to-ehr", {"destinations": channel(
            ehr_port, dedupe=0, ack_timeout="3s")["destinations"]})  # fmt: skip
        loop = asyncio.get_running_loop()
        began = loop.time()
        result = await engine.reload(ADMIN)
        ended = loop.time()
        assert result.accepted, result.text()
        assert result.summary == ("channels changed: to-ehr; tables changed: appointment_types; "
                                  "destinations rebuilt: clinic-ehr")  # fmt: skip
        try:
            await eventually(lambda: some(20, ended), what="20 messages after the reload")
        finally:
            stop.set()
            await asyncio.gather(sending, return_exceptions=True)
        await sending  # it ended without an error
        received = await ehr.wait_for(len(acked), timeout=20)
        codes = {control_id(m): Message.parse(m.decode()).get("SCH-7.1") for m in received}

        async def all_sent() -> bool:
            return all(d.status == "sent" for d in await deliveries_of(engine))

        await eventually(all_sent, what="every delivery sent")
        assert reloads(trail) == [("user:root1", 0, result.summary)]
    counts = Counter(control_id(m) for m in received)
    assert counts == Counter(f"RL{n:05d}" for n, _ in acked)  # each exactly once
    during = [n for n, t in acked if began < t < ended]
    assert during, "no message was answered while the reload ran"
    for n, answered in acked:
        if sent_at[n] > ended:
            assert codes[f"RL{n:05d}"] == NEW_CODE, n
        elif answered < began:
            assert codes[f"RL{n:05d}"] == OLD_CODE, n


async def test_queued_deliveries_follow_a_changed_destination(tmp_path: Path) -> None:
    """A delivery waiting on a down EHR is sent by the rebuilt destination to the new EHR."""
    listen, old_port, new_port = free_port(), free_port(), free_port()
    slow = {"attempts": 50, "first": "50ms", "max": "100ms"}
    routes = write_config(tmp_path, listen, {"to-ehr": channel(old_port, retry=slow)})
    async with FakeEhr(port=new_port) as ehr, audited(routes, tmp_path) as (engine, _):
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            assert ack_code(await client.send(numbered(1))) == "AA"

        async def retried() -> bool:
            return any(d.attempts >= 1 for d in await deliveries_of(engine))

        await eventually(retried, what="a failed attempt on the down EHR")
        edit_channel(tmp_path, "to-ehr", {"destinations": channel(
            new_port, retry=slow)["destinations"]})  # fmt: skip
        result = await engine.reload(ADMIN)
        assert result.summary == "channels changed: to-ehr; destinations rebuilt: clinic-ehr"
        (delivered,) = await ehr.wait_for(1)
        assert control_id(delivered) == "RL00001"
        await eventually(lambda: _status(engine, "sent"), what="the delivery recorded as sent")


async def _status(engine: Engine, status: str) -> bool:
    return [d.status for d in await deliveries_of(engine)] == [status]


async def test_a_removed_destination_is_drained_then_stopped(tmp_path: Path) -> None:
    listen, ehr_port = free_port(), free_port()
    slow = {"attempts": 50, "first": "50ms", "max": "100ms"}
    archive = tmp_path / "archive"
    routes = write_config(tmp_path, listen, {"to-ehr": channel(ehr_port, retry=slow)})
    async with audited(routes, tmp_path) as (engine, _):
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            assert ack_code(await client.send(numbered(1))) == "AA"
        edit_channel(tmp_path, "to-ehr", {"destinations": {"archive": {
            "file": {"directory": str(archive)}}}})  # fmt: skip
        result = await engine.reload(ADMIN)
        assert result.summary == ("channels changed: to-ehr; destinations added: archive; "
                                  "destinations removed: clinic-ehr"), result.text()  # fmt: skip
        assert engine.dispatcher.retiring == {"clinic-ehr"}
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            assert ack_code(await client.send(numbered(2))) == "AA"
        async with FakeEhr(port=ehr_port) as ehr:  # the EHR comes back: the queue drains
            (delivered,) = await ehr.wait_for(1)
            assert control_id(delivered) == "RL00001"

            async def stopped() -> bool:
                return "clinic-ehr" not in engine.dispatcher.runners

            await eventually(stopped, what="the removed destination stopped once drained")
        assert await _status(engine, "sent")
        assert len(list(archive.iterdir())) == 1  # the message after the reload


async def test_settings_bound_at_start_need_a_restart(tmp_path: Path) -> None:
    listen, ehr_port = free_port(), free_port()
    routes = write_config(tmp_path, listen, {"to-ehr": channel(ehr_port)})
    async with audited(routes, tmp_path) as (engine, trail):
        text = routes.read_text()
        moved = re.sub(rf"port: {listen}\b", f"port: {free_port()}", text)
        routes.write_text(moved.replace("profile: development", "profile: production"))
        replace_in(tmp_path / TABLE, OLD_CODE, NEW_CODE)
        result = await engine.reload(ADMIN)
        assert not result.accepted and result.outcome == 4
        assert result.summary == "needs a restart: listener feed changed, security"
        assert result.problems == (
            "listener feed changed: listeners are bound at start",
            "security: profile, lockout, alerts and at-rest keys are read at start",
        )
        assert engine.config.listeners["feed"].address[1] == listen
        routes.write_text(text)  # put back: the table change alone is accepted
        result = await engine.reload(ADMIN)
        assert result.summary == "tables changed: appointment_types"
        assert [o for _, o, _ in reloads(trail)] == [4, 0]
