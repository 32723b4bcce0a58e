"""The SQLite store end to end on real files: round trip, durability, group commit under
concurrency, a bad write failing alone, the duplicate check, and close draining."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import sys
from pathlib import Path

import pytest

from engine.store.base import (
    Attempt,
    ChannelResultRow,
    Delivery,
    DuplicateHit,
    Ingest,
    Ingested,
    MessageFilter,
    MessageKeys,
    NewChannelResult,
    NewDelivery,
    NewMessage,
)
from engine.store.sqlite import SqliteStore
from tests.unit.store.helpers import FakeClock, WriterGate, make_ingest

T0 = 1_750_000_000.0


async def test_ingest_and_get_round_trip_every_field(store: SqliteStore, clock: FakeClock) -> None:
    original = await store.ingest(make_ingest("ORIG1"))
    message = NewMessage(
        received_at=T0 + 1.25,
        listener="epic-siu",
        content_type="application/hl7-v2",
        charset="iso-8859-1",
        raw=b"MSH|^~\\&|SYNTH|FAC|||20250101||SIU^S14|CTRL9|P|2.5.1\rPID|1||P1~P2\r\xe9",
        keys=MessageKeys(
            sender="SYNTH", facility="FAC", control_id="CTRL9", message_type="SIU^S14",
            version="2.5.1", patient_ids=("P1", "P2"), appointment_ids=("A1", "A2"),
        ),
        status="error",
        ack_code="AE",
        ack=b"MSH|...|ACK\rMSA|AE|CTRL9\rERR||SCH^1^7|103|E\r",
        error="steps[1] map: no entry",
        replay_of=original.message_id,
        duplicate_of=original.message_id,
    )
    results = (
        NewChannelResult(channel="c1", status="ok", output=b"OUT-1"),
        NewChannelResult(
            channel="c2", status="error", output=b"", error="no mapping",
            error_step="steps[2] map", error_location="SCH-7.1",
        ),
    )
    deliveries = (
        NewDelivery(channel="c1", destination="d1", lane="APT1", payload=b"OUT-1",
                    next_attempt_at=T0 + 2),
        NewDelivery(channel="c1", destination="d2", lane="", payload=b"OTHER",
                    next_attempt_at=T0 + 3),
    )
    clock.now = T0 + 5
    ingested = await store.ingest(Ingest(message, results, deliveries))
    first, second = ingested.delivery_ids
    assert ingested.message_id > original.message_id and second > first
    clock.now = T0 + 9
    attempt = Attempt(
        delivery_id=first, number=1, started_at=T0 + 6, latency=0.5, outcome="retry",
        code="AE", response=b"MSA|AE|CTRL9\r", error="application error",
        next_attempt_at=T0 + 8,
    )
    await store.record_attempt(attempt)

    detail = await store.get(ingested.message_id)
    assert detail is not None
    row = detail.message
    assert (row.id, row.received_at, row.listener, row.content_type, row.charset) == (
        ingested.message_id, T0 + 1.25, "epic-siu", "application/hl7-v2", "iso-8859-1",
    )
    assert row.keys == message.keys
    assert (row.status, row.ack_code, row.error) == ("error", "AE", "steps[1] map: no entry")
    assert (row.replay_of, row.duplicate_of) == (original.message_id, original.message_id)
    assert row.size == len(message.raw)
    assert (detail.raw, detail.ack) == (message.raw, message.ack)
    assert detail.results == (
        ChannelResultRow(detail.results[0].id, row.id, "c1", "ok", b"OUT-1", "", "", ""),
        ChannelResultRow(
            detail.results[1].id, row.id, "c2", "error", b"", "no mapping", "steps[2] map",
            "SCH-7.1",
        ),
    )
    assert detail.deliveries == (
        Delivery(first, row.id, "c1", "d1", "APT1", "queued", 1, T0 + 8, b"OUT-1", T0 + 5,
                 T0 + 9, "AE", "application error", round_attempts=1),
        Delivery(second, row.id, "c1", "d2", "", "queued", 0, T0 + 3, b"OTHER", T0 + 5, T0 + 5),
    )
    assert detail.attempts == (attempt,)
    assert detail.replays == ()
    replayed = await store.get(original.message_id)
    assert replayed is not None and replayed.replays == (ingested.message_id,)
    assert await store.get(ingested.message_id + 100) is None


async def test_an_ingest_is_on_disk_when_it_returns(store: SqliteStore, db_path: Path) -> None:
    ingested = await store.ingest(make_ingest("DURABLE1", destinations=("d1", "d2")))
    # Another process opening the file sees the message, its result and both deliveries.
    script = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1])\n"
        "i = int(sys.argv[2])\n"
        "m = c.execute('SELECT control_id FROM messages WHERE id = ?', (i,))\n"
        "d = c.execute('SELECT count(*) FROM deliveries WHERE message_id = ?', (i,))\n"
        "r = c.execute('SELECT count(*) FROM channel_results')\n"
        "print(m.fetchone()[0], d.fetchone()[0], r.fetchone()[0])\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(db_path), str(ingested.message_id),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert out.decode().split() == ["DURABLE1", "2", "1"]


async def test_concurrent_ingests_share_commits(store: SqliteStore, db_path: Path) -> None:
    ops = 500
    results = await asyncio.gather(*(store.ingest(make_ingest(f"C{i:04d}")) for i in range(ops)))
    stats = store.stats()
    assert stats.commits < ops / 4
    assert stats.extra["ops"] == ops
    assert len({r.message_id for r in results}) == ops
    # message, patient key, appointment key, result, delivery; each batch widens its hour
    assert stats.rows == ops * 5 + stats.commits
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == ops
        assert conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == ops


async def test_a_bad_write_fails_alone_in_its_batch(store: SqliteStore) -> None:
    gate = WriterGate(store.writer)
    await gate.hold()
    bad = Attempt(delivery_id=999_999, number=1, started_at=T0, latency=0.1, outcome="sent")
    outcome = await asyncio.gather(
        store.ingest(make_ingest("B1")),
        store.record_attempt(bad),
        store.ingest(make_ingest("B2")),
        gate.release(),
        return_exceptions=True,
    )
    assert isinstance(outcome[0], Ingested) and isinstance(outcome[2], Ingested)
    assert isinstance(outcome[1], sqlite3.IntegrityError)
    assert store.stats().extra["failed_ops"] == 1
    assert [r.keys.control_id for r in await store.search(MessageFilter())] == ["B2", "B1"]


async def test_find_duplicate_sees_committed_messages(store: SqliteStore) -> None:
    first = await store.ingest(make_ingest("D1", received_at=T0))
    newer = await store.ingest(make_ingest("D1", received_at=T0 + 10))
    await store.ingest(
        make_ingest("D1", received_at=T0 + 20, status="duplicate", duplicate_of=newer.message_id)
    )
    stored = await store.get(newer.message_id)
    assert stored is not None
    hit = await store.find_duplicate("TEST_EHR", "D1", T0 - 1)
    assert hit == DuplicateHit(newer.message_id, T0 + 10, stored.ack)  # duplicates ignored
    assert await store.find_duplicate("TEST_EHR", "D1", T0 + 11) is None  # outside window
    assert await store.find_duplicate("OTHER_EHR", "D1", T0 - 1) is None
    assert await store.find_duplicate("TEST_EHR", "D2", T0 - 1) is None
    older = await store.find_duplicate("TEST_EHR", "D1", T0)
    assert older is not None and older.message_id == newer.message_id != first.message_id


async def test_find_duplicate_waits_for_a_pending_ingest(store: SqliteStore) -> None:
    gate = WriterGate(store.writer)
    await gate.hold()
    item = make_ingest("P1", received_at=T0)
    # The ingest is queued behind the gate, not committed, when the check runs.
    ingested, hit, _ = await asyncio.gather(
        store.ingest(item), store.find_duplicate("TEST_EHR", "P1", T0 - 60), gate.release()
    )
    assert isinstance(ingested, Ingested)
    assert hit == DuplicateHit(ingested.message_id, T0, item.message.ack)
    assert store.stats().extra["pending_ingests"] == 0


async def test_find_duplicate_skips_a_pending_ingest_that_fails(store: SqliteStore) -> None:
    gate = WriterGate(store.writer)
    await gate.hold()
    doomed = make_ingest("F1", replay_of=424242)  # foreign key: no such message
    failed, hit, _ = await asyncio.gather(
        store.ingest(doomed),
        store.find_duplicate("TEST_EHR", "F1", T0 - 60),
        gate.release(),
        return_exceptions=True,
    )
    assert isinstance(failed, sqlite3.IntegrityError)
    assert hit is None
    assert store.stats().extra["pending_ingests"] == 0


async def test_close_drains_queued_ingests(db_path: Path, clock: FakeClock) -> None:
    store = SqliteStore(db_path, clock=clock)
    await store.open()
    gate = WriterGate(store.writer)
    await gate.hold()
    outcome = await asyncio.gather(
        *(store.ingest(make_ingest(f"Q{i}")) for i in range(20)), store.close(), gate.release()
    )
    assert all(isinstance(o, Ingested) for o in outcome[:20])
    assert store.stats().extra["ops"] == 21  # the gate and the 20, all before the close
    with pytest.raises(RuntimeError, match="not open"):
        await store.ingest(make_ingest("LATE"))
    with pytest.raises(RuntimeError, match="not open"):
        await store.search(MessageFilter())
    reopened = SqliteStore(db_path)
    await reopened.open()
    assert len(await reopened.search(MessageFilter())) == 20
    await reopened.close()


async def test_open_twice_is_an_error_and_close_twice_is_not(store: SqliteStore) -> None:
    with pytest.raises(RuntimeError, match="already open"):
        await store.open()
    await store.close()
    await store.close()


async def test_payload_equal_to_the_output_is_stored_once_and_read_back(
    store: SqliteStore, db_path: Path
) -> None:
    item = make_ingest("S1", destinations=("d1",))
    same = await store.ingest(item)
    other = await store.ingest(
        dataclasses.replace(
            item,
            deliveries=(dataclasses.replace(item.deliveries[0], payload=b"DIFFERENT"),),
        )
    )
    with sqlite3.connect(db_path) as conn:
        stored = dict(conn.execute("SELECT id, payload FROM deliveries").fetchall())
    opened = {k: v and store.sealer.open("deliveries", "payload", k, v) for k, v in stored.items()}
    assert opened == {same.delivery_ids[0]: None, other.delivery_ids[0]: b"DIFFERENT"}
    by_id = {d.id: d.payload for d in await store.deliveries()}
    assert by_id == {same.delivery_ids[0]: item.deliveries[0].payload,
                     other.delivery_ids[0]: b"DIFFERENT"}
