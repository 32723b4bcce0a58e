"""Key rotation over a real SQLite store (engine.store.sqlite_keys): a clear store becomes
sealed, a rotation killed midway finishes when run again, the blind index follows, and key
usage counts what each key still protects."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.security.atrest import KeyRing, RowSealer
from engine.store import sqlite_keys
from engine.store.base import Attempt, MessageFilter
from engine.store.sqlite import SqliteStore
from engine.store.sqlite_schema import StoreSchemaError, connect
from tests.unit.store.helpers import FakeClock, make_ingest

OLD = KeyRing({"old": bytes(32)}, "old")
BOTH = KeyRing({"old": bytes(32), "new": bytes(range(32))}, "new")
NEW = KeyRing({"new": bytes(range(32))}, "new")


async def fill(path: Path, ring: KeyRing | None, count: int, first: int = 0) -> None:
    store = SqliteStore(path, clock=FakeClock(1_750_000_000.0), sealer=RowSealer(ring))
    await store.open()
    try:
        for n in range(first, first + count):
            stored = await store.ingest(make_ingest(f"C{n}", patients=(f"PAT{n % 3}",)))
            await store.record_attempt(Attempt(
                delivery_id=stored.delivery_ids[0], number=1, started_at=1.0, latency=0.1,
                outcome="sent", code="AA", response=b"MSA|AA|" + f"C{n}".encode()))
    finally:
        await store.close()


async def read_all(path: Path, ring: KeyRing | None) -> list[bytes]:
    store = SqliteStore(path, sealer=RowSealer(ring))
    await store.open()
    try:
        rows = await store.search(MessageFilter(limit=1000))
        found = []
        for row in rows:
            detail = await store.get(row.id)
            assert detail is not None
            found.append(detail.raw + detail.attempts[0].response + detail.deliveries[0].payload)
        assert len(await store.search(MessageFilter(patient_id="PAT1", limit=1000))) == sum(
            1 for r in rows if r.keys.patient_ids == ("PAT1",))
        return found
    finally:
        await store.close()


def usage(path: Path) -> sqlite_keys.KeyUsage:
    conn = connect(path)
    try:
        return sqlite_keys.usage(conn)
    finally:
        conn.close()


async def test_a_clear_store_is_sealed_and_searchable_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "engine.db"
    await fill(path, None, 6)
    before = await read_all(path, None)
    assert usage(path).values[sqlite_keys.CLEAR_ID] > 0
    conn = connect(path)
    done = sqlite_keys.rotate(conn, NEW, batch=4)
    conn.close()
    assert done.resealed[sqlite_keys.CLEAR_ID] > 0 and done.reindexed == 6
    after = usage(path)
    assert set(after.values) == {"new"} and set(after.index_entries) == {"new"}
    assert await read_all(path, NEW) == before
    files = (path, tmp_path / "engine.db-wal")
    assert not any(b"PAT1" in f.read_bytes() for f in files if f.exists())


async def test_a_rotation_killed_midway_finishes_when_run_again(tmp_path: Path) -> None:
    path = tmp_path / "engine.db"
    await fill(path, OLD, 10)
    before = await read_all(path, OLD)

    class Killed(Exception):
        pass

    def kill_after_two(table: str, rows: int, done: sqlite_keys.Rotation) -> None:
        if done.rows >= 6:
            raise Killed

    conn = connect(path)
    with pytest.raises(Killed):
        sqlite_keys.rotate(conn, BOTH, batch=3, progress=kill_after_two)
    assert not conn.in_transaction  # the batch under way committed; nothing is left open
    midway = usage(path)
    assert midway.values["new"] > 0 and midway.values["old"] > 0
    await fill(path, BOTH, 2, first=10)  # the engine writes meanwhile, under the new key
    again = sqlite_keys.rotate(conn, BOTH, batch=3)
    conn.close()
    assert "new" not in again.resealed  # what was already current was left alone
    assert usage(path).total("old") == 0
    assert (await read_all(path, NEW))[2:] == before  # newest first: the two added lead


async def test_opening_a_sealed_store_without_its_key_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "engine.db"
    await fill(path, OLD, 1)
    for ring in (None, NEW):
        store = SqliteStore(path, sealer=RowSealer(ring))
        with pytest.raises(StoreSchemaError, match="key old, which is not configured"):
            await store.open()
