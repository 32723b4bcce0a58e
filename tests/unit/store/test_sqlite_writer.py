"""The group-commit writer on its own: batching, one hand-off per batch, a failing op failing
alone, draining on close, and writes that stand when their caller gave up."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from engine.store.sqlite_schema import connect
from engine.store.sqlite_writer import GroupCommitWriter, WriterClosed
from tests.unit.store.helpers import WriterGate


def _insert(conn: sqlite3.Connection, value: str | None) -> int:
    rowid = conn.execute("INSERT INTO t (v) VALUES (?)", (value,)).lastrowid
    assert rowid is not None
    return rowid


def _count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])


def _writer(
    path: Path, settled: list[tuple[object, bool, Any]] | None = None, max_batch: int = 1024
) -> GroupCommitWriter:
    conn = connect(path, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    writer = GroupCommitWriter(
        conn,
        asyncio.get_running_loop(),
        max_batch=max_batch,
        on_settled=None if settled is None else lambda *a: settled.append(a),
    )
    writer.start()
    return writer


async def _submit_all(writer: GroupCommitWriter, values: list[str | None]) -> list[Any]:
    futures = [writer.submit(_insert, v) for v in values]
    return await asyncio.gather(*futures, return_exceptions=True)


@pytest.mark.asyncio_only
async def test_queued_ops_share_one_commit_and_one_hand_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    hand_offs = 0
    original = loop.call_soon_threadsafe

    def counting(*args: Any, **kwargs: Any) -> asyncio.Handle:
        nonlocal hand_offs
        hand_offs += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    writer = _writer(tmp_path / "w.db")
    gate = WriterGate(writer)
    await gate.hold()
    hand_offs = 0  # the gate's own thread wait used one
    futures = [writer.submit(_insert, f"v{i}") for i in range(200)]
    await gate.release()
    ids = await asyncio.gather(*futures)
    assert ids == list(range(1, 201))
    assert writer.stats.commits == 2  # the gate's, then all 200 together
    assert writer.stats.max_batch == 200
    assert hand_offs == 2
    assert writer.stats.rows == 200
    await writer.close()
    assert _count(tmp_path / "w.db") == 200


async def test_the_cap_splits_a_long_queue(tmp_path: Path) -> None:
    writer = _writer(tmp_path / "w.db", max_batch=64)
    gate = WriterGate(writer)
    await gate.hold()
    futures = [writer.submit(_insert, f"v{i}") for i in range(200)]
    await gate.release()
    await asyncio.gather(*futures)
    assert writer.stats.max_batch == 64
    assert writer.stats.commits == 1 + 4  # 64 + 64 + 64 + 8
    await writer.close()


async def test_a_failing_op_fails_alone_and_the_rest_commit(tmp_path: Path) -> None:
    settled: list[tuple[object, bool, Any]] = []
    writer = _writer(tmp_path / "w.db", settled)
    gate = WriterGate(writer)
    await gate.hold()
    values: list[str | None] = [f"v{i}" for i in range(10)]
    values[4] = None  # NOT NULL violation
    futures = [writer.submit(_insert, v, tag=i) for i, v in enumerate(values)]
    await gate.release()
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert isinstance(results[4], sqlite3.IntegrityError)
    assert all(isinstance(r, int) for i, r in enumerate(results) if i != 4)
    assert writer.stats.failed_ops == 1
    assert writer.stats.rollbacks == 1  # the culprit's savepoint only
    assert [(tag, ok) for tag, ok, _ in settled] == [(i, i != 4) for i in range(10)]
    await writer.close()
    assert _count(tmp_path / "w.db") == 9


async def test_a_lock_held_elsewhere_fails_the_batch_once(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    conn = connect(path, check_same_thread=False, busy_timeout=0.05)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    writer = GroupCommitWriter(conn, asyncio.get_running_loop())
    futures = [writer.submit(_insert, f"v{i}") for i in range(3)]  # queued before start
    other = sqlite3.connect(path, isolation_level=None)  # e.g. the CLI, mid-transaction
    other.execute("BEGIN IMMEDIATE")
    writer.start()
    results = await asyncio.gather(*futures, return_exceptions=True)
    other.execute("ROLLBACK")
    other.close()
    assert all(isinstance(r, sqlite3.OperationalError) for r in results)
    assert "locked" in str(results[0])
    assert (writer.stats.failed_ops, writer.stats.commits) == (3, 0)
    assert await writer.submit(_insert, "after") == 1  # the writer carries on
    await writer.close()


async def test_close_drains_everything_queued_before_it(tmp_path: Path) -> None:
    writer = _writer(tmp_path / "w.db")
    gate = WriterGate(writer)
    await gate.hold()
    futures = [writer.submit(_insert, f"v{i}") for i in range(50)]
    # close() starts first (gather order) and must still wait for the 50 and the gate.
    await asyncio.gather(writer.close(), gate.release())
    with pytest.raises(WriterClosed):
        writer.submit(_insert, "late")
    assert all(f.done() and not f.cancelled() for f in futures)
    assert [f.result() for f in futures] == list(range(1, 51))
    assert _count(tmp_path / "w.db") == 50


async def test_a_cancelled_callers_write_still_commits(tmp_path: Path) -> None:
    settled: list[tuple[object, bool, Any]] = []
    writer = _writer(tmp_path / "w.db", settled)
    gate = WriterGate(writer)
    await gate.hold()
    given_up = writer.submit(_insert, "kept", tag="t")
    given_up.cancel()
    await gate.release()
    await writer.close()
    assert settled == [("t", True, 1)]
    assert _count(tmp_path / "w.db") == 1


async def test_close_without_start_closes_the_connection(tmp_path: Path) -> None:
    conn = connect(tmp_path / "w.db", check_same_thread=False)
    writer = GroupCommitWriter(conn, asyncio.get_running_loop())
    await writer.close()
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")
    with pytest.raises(ValueError):
        GroupCommitWriter(conn, asyncio.get_running_loop(), max_batch=0)


async def test_a_full_disk_fails_the_whole_batch_and_the_writer_recovers(tmp_path: Path) -> None:
    """SQLITE_FULL rolls the whole transaction back, savepoints included: every op of the
    batch must fail (even those that ran before the full one), none may hang, and the next
    batch must work once there is room again."""
    writer = _writer(tmp_path / "w.db")
    conn = writer._conn  # the test plays the disk: cap the file's size
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    gate = WriterGate(writer)
    await gate.hold()
    small = writer.submit(_insert, "small")
    big = [writer.submit(_insert, "x" * 20_000) for _ in range(3)]
    await gate.release()
    results = await asyncio.wait_for(
        asyncio.gather(small, *big, return_exceptions=True), timeout=10
    )
    assert all(isinstance(r, sqlite3.Error) for r in results), results
    assert "full" in str(results[-1])
    conn.execute("PRAGMA max_page_count = 1073741823")
    assert isinstance(await asyncio.wait_for(writer.submit(_insert, "after"), 10), int)
    await writer.close()
    assert _count(tmp_path / "w.db") == 1
