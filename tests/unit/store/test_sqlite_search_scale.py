"""Search as it runs on a large store: the time range through message_hours gives exactly what
checking every row would, received times out of id order included; a store migrated from
version 2 answers time ranges; and every indexed filter, alone and with a time range or a
page cursor, is planned on an index that yields messages newest first (no full scan, no sort).
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.store.base import Attempt, MessageFilter, MessageStatus
from engine.store.sqlite import SqliteStore
from engine.store.sqlite_schema import MIGRATIONS, prepare
from engine.store.sqlite_search import search_sql
from tests.unit.store.helpers import FakeClock, make_ingest

T0 = 1_750_000_000.0
HOUR = 3600.0


@dataclass
class Stored:
    """What one message was given, to check a search against every row."""

    id: int
    received_at: float
    status: str
    ack_code: str
    message_type: str
    control_id: str
    patient: str
    appointment: str
    channels: tuple[str, ...]
    deliveries: list[tuple[str, str]]  # (destination, status)


def _matches(m: Stored, f: dict[str, Any]) -> bool:
    delivery_ok = any(
        f.get("destination", d) == d and f.get("delivery_status", s) == s
        for d, s in m.deliveries
    ) if "destination" in f or "delivery_status" in f else True
    return (
        f.get("since", m.received_at) <= m.received_at
        and ("until" not in f or m.received_at < f["until"])
        and all(f.get(k, getattr(m, k)) == getattr(m, k)
                for k in ("status", "ack_code", "message_type", "control_id"))
        and f.get("patient_id", m.patient) == m.patient
        and f.get("appointment_id", m.appointment) == m.appointment
        and ("channel" not in f or f["channel"] in m.channels)
        and delivery_ok
        and m.id < f.get("before_id", m.id + 1)
    )


async def _fill(store: SqliteStore, count: int, seed: int) -> list[Stored]:
    """`count` messages over ten hours whose received times go back and forth (ids are not in
    time order), with mixed statuses, channels, destinations and delivery outcomes."""
    rng = random.Random(seed)
    out: list[Stored] = []
    statuses: list[MessageStatus] = ["processed", "processed", "error", "rejected"]
    for i in range(count):
        received = T0 + rng.uniform(0, 10 * HOUR)
        status = rng.choice(statuses)
        ack = {"processed": "AA", "error": "AE", "rejected": "AR"}[status]
        channels = tuple(rng.sample(["chan-a", "chan-b", "chan-c"], rng.randint(0, 2)))
        destinations = tuple(rng.sample(["dest-a", "dest-b"], rng.randint(0, 2)))
        if not channels:
            destinations = ()
        item = make_ingest(
            f"C{i % 7}", received_at=received, status=status, ack_code=ack,
            patients=(f"P{i % 5}",), appointments=(f"A{i % 9}",),
            message_type=rng.choice(["SIU^S12", "SIU^S14"]), channels=channels,
            destinations=destinations,
        )
        done = await store.ingest(item)
        kept = []
        for destination, delivery_id in zip(destinations, done.delivery_ids, strict=True):
            outcome = rng.choice(["queued", "sent", "failed", "discarded"])
            if outcome != "queued":
                await store.record_attempt(Attempt(
                    delivery_id=delivery_id, number=1, started_at=received, latency=0.01,
                    outcome="sent" if outcome == "sent" else "failed",
                ))
            if outcome == "discarded":
                assert await store.discard([delivery_id]) == 1
            kept.append((destination, outcome))
        out.append(Stored(done.message_id, received, status, ack, item.message.keys.message_type,
                          f"C{i % 7}", f"P{i % 5}", f"A{i % 9}", channels, kept))
    return out


FILTERS: list[dict[str, Any]] = [
    {}, {"status": "error"}, {"status": "processed"}, {"ack_code": "AR"}, {"ack_code": "AA"},
    {"message_type": "SIU^S14"}, {"control_id": "C3"}, {"patient_id": "P2"},
    {"appointment_id": "A4"}, {"channel": "chan-b"}, {"destination": "dest-a"},
    {"destination": "dest-b", "delivery_status": "failed"}, {"delivery_status": "sent"},
    {"delivery_status": "queued"}, {"delivery_status": "failed"},
    {"delivery_status": "discarded"}, {"channel": "chan-a", "destination": "dest-b"},
    {"status": "processed", "message_type": "SIU^S12", "ack_code": "AA"},
    {"patient_id": "P1", "channel": "chan-c", "status": "processed"},
]


async def test_every_filter_and_time_range_finds_what_checking_each_row_finds(
    store: SqliteStore,
) -> None:
    stored = await _fill(store, 120, seed=5)
    rng = random.Random(9)
    windows: list[dict[str, Any]] = [{}, {"since": T0 + 9 * HOUR}, {"until": T0 + HOUR / 2}]
    for _ in range(6):
        since = T0 + rng.uniform(-HOUR, 10 * HOUR)
        windows.append({"since": since, "until": since + rng.uniform(0, 4 * HOUR)})
    windows.append({"since": T0 + 20 * HOUR})  # after everything: nothing
    checked = 0
    for f in FILTERS:
        for window in windows:
            criteria = {**f, **window}
            expected = sorted((m.id for m in stored if _matches(m, criteria)), reverse=True)
            found = [r.id for r in await store.search(MessageFilter(**criteria, limit=500))]
            assert found == expected, criteria
            # A page at a time, by before_id, gives the same rows.
            paged: list[int] = []
            while page := [r.id for r in await store.search(
                    MessageFilter(**criteria, limit=7, before_id=paged[-1] if paged else None))]:
                paged.extend(page)
            assert paged == expected, criteria
            checked += len(expected)
    assert checked > 500  # the filters do find things


async def test_one_batch_over_many_hours_keeps_every_hour(store: SqliteStore) -> None:
    """Ingests that share a commit, received over six hours in no order: each hour's id range
    is widened by the batch, so every time range finds exactly its messages."""
    rng = random.Random(3)
    times = [T0 + rng.uniform(0, 6 * HOUR) for _ in range(40)]
    done = await asyncio.gather(*(
        store.ingest(make_ingest(f"B{i}", received_at=t)) for i, t in enumerate(times)))
    assert store.stats().commits < len(times)  # they did share commits
    by_id = {d.message_id: t for d, t in zip(done, times, strict=True)}
    for _ in range(30):
        since = T0 + rng.uniform(-HOUR, 6 * HOUR)
        until = since + rng.uniform(0, 3 * HOUR)
        expected = sorted((i for i, t in by_id.items() if since <= t < until), reverse=True)
        found = await store.search(MessageFilter(since=since, until=until, limit=100))
        assert [r.id for r in found] == expected


async def test_a_message_with_two_deliveries_to_one_destination_is_one_row(
    store: SqliteStore,
) -> None:
    twice = await store.ingest(make_ingest("TWICE", channels=("chan-a", "chan-b"),
                                           destinations=("dest-a",)))
    assert await store.add_deliveries(twice.message_id, make_ingest(
        "X", channels=("chan-b",), destinations=("dest-a",)).deliveries)
    for criteria in ({"destination": "dest-a"}, {"destination": "dest-a", "channel": "chan-b"},
                     {"delivery_status": "queued"}, {"destination": "dest-a", "since": T0}):
        rows = await store.search(MessageFilter(**criteria))  # type: ignore[arg-type]
        assert [r.id for r in rows] == [twice.message_id], criteria


async def test_a_version_2_store_is_migrated_and_searched_by_time(
    db_path: Path, clock: FakeClock
) -> None:
    """Written by the version 2 schema (no message_hours): the migration fills the hours from
    the messages there, and new messages keep them up."""
    old = SqliteStore(db_path, clock=clock, migrations=MIGRATIONS[:2])
    await old.open()
    try:
        # Out of order: the second message was received three hours before the first.
        first = await old.ingest(make_ingest("OLD1", received_at=T0 + 5 * HOUR))
        second = await old.ingest(make_ingest("OLD2", received_at=T0 + 2 * HOUR))
    finally:
        await old.close()
    with sqlite3.connect(db_path) as conn:  # a v2 file: no hours kept
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'message_hours'"
                            ).fetchone() == (0,)
    store = SqliteStore(db_path, clock=clock)
    await store.open()
    try:
        newer = await store.ingest(make_ingest("NEW1", received_at=T0 + HOUR))

        async def ids(**criteria: float) -> list[int]:
            return [r.id for r in await store.search(MessageFilter(**criteria))]

        assert await ids(until=T0 + 3 * HOUR) == [newer.message_id, second.message_id]
        assert await ids(since=T0 + 2 * HOUR, until=T0 + 3 * HOUR) == [second.message_id]
        assert await ids(since=T0 + 4 * HOUR) == [first.message_id]
    finally:
        await store.close()


# --------------------------------------------------------------------------- plans

_TIME = {"since": T0, "until": T0 + HOUR}
# Each filter the admin API searches by, and the index that must drive it.
INDEXED: list[tuple[dict[str, Any], str]] = [
    ({"status": "error"}, "messages_status"),
    ({"status": "processed"}, "messages_status"),
    ({"message_type": "SIU^S12"}, "messages_type"),
    ({"ack_code": "AE"}, "messages_ack_code"),
    ({"control_id": "C1"}, "messages_control_id"),
    ({"patient_id": "P1"}, "message_keys"),
    ({"appointment_id": "A1"}, "message_keys"),
    ({"channel": "chan-a"}, "channel_results_channel"),
    ({"destination": "dest-a"}, "deliveries_destination_message"),
    ({"destination": "dest-a", "delivery_status": "failed"}, "deliveries_destination_message"),
    ({"delivery_status": "failed"}, "deliveries_unsent"),
    ({"delivery_status": "queued"}, "deliveries_unsent"),
    ({"delivery_status": "discarded"}, "deliveries_unsent"),
    ({"delivery_status": "failed", "channel": "chan-a"}, "deliveries_unsent"),
    ({"status": "error", "message_type": "SIU^S12"}, "messages_status"),
    ({"status": "processed", "message_type": "SIU^S12"}, "messages_type"),
    ({"patient_id": "P1", "status": "error", "channel": "chan-a"}, "message_keys"),
    ({"channel": "chan-a", "destination": "dest-a"}, "deliveries_destination_message"),
]


def _plan(conn: sqlite3.Connection, criteria: dict[str, Any]) -> list[str]:
    sql, params = search_sql(MessageFilter(**criteria, limit=50))
    return [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


@pytest.mark.parametrize(("criteria", "index"), INDEXED, ids=lambda v: str(v))
@pytest.mark.parametrize("extra", [{}, _TIME, {"before_id": 1000}], ids=["alone", "time", "page"])
def test_each_indexed_filter_is_planned_on_its_index(
    tmp_path: Path, criteria: dict[str, Any], index: str, extra: dict[str, Any]
) -> None:
    path = tmp_path / "plan.db"
    prepare(path)
    with sqlite3.connect(path) as conn:
        plan = _plan(conn, {**criteria, **extra})
    text = " | ".join(plan)
    assert index in plan[0] or (index in text and "LIST SUBQUERY" in text), text
    assert "TEMP B-TREE" not in text, text  # nothing matched is sorted
    assert not any(line.startswith("SCAN ") for line in plan), text  # a whole table or index
    if extra:  # the time range or the page bounds the driving index's walk
        driver = next(line for line in plan if index in line)
        assert "<?" in driver or "LIST SUBQUERY" in text, text


def test_a_time_range_alone_walks_the_ids_it_maps_to(tmp_path: Path) -> None:
    path = tmp_path / "plan.db"
    prepare(path)
    with sqlite3.connect(path) as conn:
        plan = _plan(conn, _TIME)
    assert plan[0] == "SEARCH m USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)", plan
    assert all("message_hours" in line for line in plan[1:] if line.startswith("SEARCH")), plan
