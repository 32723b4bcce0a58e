"""The audit trail: append-only, chained, verifiable, searchable, and keyed from outside."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.security.audit import (
    Actor,
    AuditEvent,
    AuditKey,
    AuditKeyError,
)
from engine.security.audit_store import AuditLog, AuditStore
from tests.unit.security.audit_support import KEY_TEXT, fill, restore_triggers, tamper

ALICE = Actor("alice", "viewer", "192.0.2.10", "curl/8")


@pytest.fixture
def key() -> AuditKey:
    return AuditKey.from_bytes(KEY_TEXT.encode(), "test")


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "engine.db.audit.db"


@pytest.fixture
def trail(audit_path: Path, key: AuditKey) -> Iterator[AuditStore]:
    store = AuditStore(audit_path, key)
    yield store
    store.close()


def test_update_and_delete_are_refused_by_the_database(trail: AuditStore, audit_path: Path):
    fill(trail, 3)
    conn = sqlite3.connect(audit_path, isolation_level=None)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only: UPDATE refused"):
            conn.execute("UPDATE audit_events SET who = 'mallory' WHERE seq = 2")
        with pytest.raises(sqlite3.DatabaseError, match="append-only: DELETE refused"):
            conn.execute("DELETE FROM audit_events WHERE seq = 2")
        rows = conn.execute("SELECT seq, who FROM audit_events ORDER BY seq").fetchall()
    finally:
        conn.close()
    assert rows == [(1, "user0"), (2, "user1"), (3, "user2")]


def test_an_untouched_trail_verifies_after_reopening(audit_path: Path, key: AuditKey):
    with AuditStore(audit_path, key) as store:
        fill(store, 12)
    with AuditStore(audit_path, key) as store:
        store.append(ALICE, AuditEvent("R", "engine show", message_ids=(7,)))
        result = store.verify()
        last = store.search(limit=1)[0]
    assert result.ok and result.first_break is None
    assert (result.records, result.head_seq, result.head_hash) == (13, 13, last.hash)


def test_an_empty_trail_verifies(trail: AuditStore):
    result = trail.verify()
    assert result.ok and result.records == 0 and result.head_seq == 0


@pytest.mark.parametrize(
    "change",
    [
        "who = 'mallory'",
        "role = 'admin'",
        "address = '203.0.113.9'",
        "action = 'C'",
        "what = 'engine replay'",
        "outcome = 12",
        "recorded = recorded + 3600",
        "patient_ids = '[\"PAT999\"]'",
        "message_ids = '[]'",
        "query = NULL",
        "count = 0",
        "hash = '" + "ab" * 32 + "'",
    ],
)
def test_an_edited_field_is_found_and_named(
    trail: AuditStore, audit_path: Path, key: AuditKey, change: str
):
    fill(trail, 8)
    tamper(audit_path, f"UPDATE audit_events SET {change} WHERE seq = 4")
    restore_triggers(audit_path, key)
    result = trail.verify()
    assert not result.ok and result.first_break is not None
    assert (result.first_break.seq, result.first_break.kind) == (4, "edited")
    assert result.records == 3 and result.head_seq == 3
    assert str(result.first_break).startswith("record 4: edited:")


def test_a_deleted_record_is_found_and_named(trail: AuditStore, audit_path: Path, key: AuditKey):
    fill(trail, 8)
    tamper(audit_path, "DELETE FROM audit_events WHERE seq = 5")
    restore_triggers(audit_path, key)
    brk = trail.verify().first_break
    assert brk is not None
    assert (brk.seq, brk.kind) == (5, "deleted")
    assert "record 5 is missing" in brk.detail and "from 4 to 6" in brk.detail


def test_deleting_the_first_records_is_found(trail: AuditStore, audit_path: Path):
    fill(trail, 5)
    tamper(audit_path, "DELETE FROM audit_events WHERE seq <= 2")
    brk = trail.verify().first_break
    assert brk is not None and (brk.seq, brk.kind) == (1, "deleted")
    assert "records 1 to 2 are missing" in brk.detail


def test_a_deletion_hidden_by_renumbering_still_breaks_the_chain(
    trail: AuditStore, audit_path: Path
):
    fill(trail, 6)
    tamper(
        audit_path,
        "DELETE FROM audit_events WHERE seq = 3",
        *(f"UPDATE audit_events SET seq = {n - 1} WHERE seq = {n}" for n in range(4, 7)),
    )
    brk = trail.verify().first_break
    assert brk is not None and brk.seq == 3 and brk.kind == "broken"


def test_an_inserted_record_is_found_and_named(trail: AuditStore, audit_path: Path):
    fill(trail, 6)
    # Make room at 4 (highest first: seq is the primary key), then forge a record there,
    # copying its neighbour's link as an attacker without the key would.
    shifts = [f"UPDATE audit_events SET seq = {n + 1} WHERE seq = {n}" for n in range(6, 3, -1)]
    forged = (
        "INSERT INTO audit_events SELECT 4, recorded + 1, key_id, 'mallory', role, address, "
        "user_agent, action, what, outcome, message_ids, '[\"PAT004\"]', appointment_ids, "
        "query, count, prev_hash, hash FROM audit_events WHERE seq = 5"
    )
    tamper(audit_path, *shifts, forged)
    result = trail.verify()
    assert result.first_break is not None
    assert (result.first_break.seq, result.first_break.kind) == (4, "inserted")
    assert "record 5 is chained directly to record 3" in result.first_break.detail
    assert result.triggers_missing  # and the dropped triggers are reported too


def test_a_record_added_at_the_end_without_the_key_is_found(trail: AuditStore, audit_path: Path):
    fill(trail, 3)
    tamper(
        audit_path,
        "INSERT INTO audit_events SELECT 4, recorded, key_id, who, role, address, user_agent, "
        "action, what, outcome, message_ids, patient_ids, appointment_ids, query, count, "
        "hash, hash FROM audit_events WHERE seq = 3",
    )
    brk = trail.verify().first_break
    assert brk is not None and brk.seq == 4 and "without the key" in brk.detail


def test_verifying_with_another_key_says_so(audit_path: Path, key: AuditKey):
    with AuditStore(audit_path, key) as store:
        fill(store, 2)
    other = AuditKey.from_bytes(b"another-synthetic-key-0123456789abcdef", "test")
    with AuditStore(audit_path, other) as store:
        brk = store.verify().first_break
    assert brk is not None and (brk.seq, brk.kind) == (1, "wrong key")


def test_dropped_triggers_fail_verification(trail: AuditStore, audit_path: Path):
    fill(trail, 2)
    tamper(audit_path)
    result = trail.verify()
    assert result.first_break is None and not result.ok
    assert result.triggers_missing == ("audit_events_no_update", "audit_events_no_delete")


def test_search_filters_by_patient_user_action_and_time(trail: AuditStore):
    fill(trail, 10, start=1000.0)  # record i at 1000 + 60 i
    by_patient = trail.search(patient="PAT002", limit=0)
    assert [r.seq for r in by_patient] == [8, 3]  # i = 2 and 7; newest first
    assert all("PAT002" in r.event.patient_ids for r in by_patient)
    assert [r.seq for r in trail.search(who="user1", limit=0)] == [8, 5, 2]
    assert [r.seq for r in trail.search(action="E", limit=0)] == [10, 8, 6, 4, 2]
    assert [r.seq for r in trail.search(since=1000 + 60 * 3, until=1000 + 60 * 6)] == [6, 5, 4]
    combined = trail.search(who="user1", action="E", since=1000 + 60 * 2, limit=0)
    assert [r.seq for r in combined] == [8]
    assert [r.seq for r in trail.search(limit=2)] == [10, 9]
    assert trail.search(patient="PAT404") == []
    found = trail.search(patient="PAT001", action="E", limit=1)[0]
    assert found.event.query == {"patient_id": "PAT001"} and found.event.count == 1
    assert found.actor == Actor("user1", "viewer", "10.0.0.1", "test-agent")


def test_concurrent_writers_on_separate_connections_keep_one_chain(audit_path: Path, key: AuditKey):
    AuditStore(audit_path, key).close()
    threads, per_thread = 6, 30
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            with AuditStore(audit_path, key) as store:
                start.wait()
                for i in range(per_thread):
                    store.append(Actor(f"w{n}"), AuditEvent("R", "engine show", message_ids=(i,)))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert errors == []
    with AuditStore(audit_path, key) as store:
        result = store.verify()
        records = list(store.records())
    assert result.ok and result.records == threads * per_thread
    assert [r.seq for r in records] == list(range(1, threads * per_thread + 1))
    assert len({r.prev_hash for r in records}) == len(records)  # no two share a parent: no fork


async def test_concurrent_async_callers_keep_one_chain_in_call_order(
    audit_path: Path, key: AuditKey
):
    log = AuditLog(AuditStore(audit_path, key))
    try:
        records = await asyncio.gather(
            *(
                log.record(ALICE, AuditEvent("R", "GET /messages", message_ids=(i,)))
                for i in range(40)
            )
        )
        result = log.store.verify()
    finally:
        log.close()
    assert result.ok and result.records == 40
    assert [r.event.message_ids[0] for r in sorted(records, key=lambda r: r.seq)] == list(range(40))


def test_the_key_never_appears_in_the_audit_files(audit_path: Path, key: AuditKey):
    with AuditStore(audit_path, key) as store:
        fill(store, 20)
        files = [p for p in audit_path.parent.iterdir() if p.name.startswith(audit_path.name)]
        blobs = b"".join(p.read_bytes() for p in files)  # the WAL is still there: read it too
    blobs += audit_path.read_bytes()  # after the final checkpoint
    assert len(files) >= 2
    assert KEY_TEXT.encode() not in blobs
    assert KEY_TEXT.encode().hex().encode() not in blobs
    assert b"PAT001" in blobs  # the scan does read the records


def test_the_key_loader(tmp_path: Path):
    with pytest.raises(AuditKeyError, match=r"ENGINE_AUDIT_KEY_FILE.*ENGINE_AUDIT_KEY"):
        AuditKey.load(None, {})
    with pytest.raises(AuditKeyError, match="too short"):
        AuditKey.load(None, {"ENGINE_AUDIT_KEY": "short"})
    with pytest.raises(AuditKeyError, match="cannot read the audit key file"):
        AuditKey.load(tmp_path / "absent.key", {})
    key_file = tmp_path / "audit.key"
    key_file.write_text(KEY_TEXT + "\n")
    from_file = AuditKey.load(None, {"ENGINE_AUDIT_KEY_FILE": str(key_file)})
    from_env = AuditKey.load(None, {"ENGINE_AUDIT_KEY": KEY_TEXT})
    assert from_file.secret == from_env.secret == KEY_TEXT.encode()  # the newline is not key
    assert from_file.key_id == from_env.key_id
    assert AuditKey.load(key_file, {"ENGINE_AUDIT_KEY": "x" * 40}).source == f"file {key_file}"
    assert KEY_TEXT not in repr(from_env) and KEY_TEXT not in str(from_env)


def test_an_invalid_event_is_refused_and_nothing_is_written(trail: AuditStore):
    with pytest.raises(ValueError, match="outcome"):
        trail.append(ALICE, AuditEvent("R", "engine show", outcome=5))
    with pytest.raises(ValueError, match="action"):
        trail.append(ALICE, AuditEvent("X", "engine show"))  # type: ignore[arg-type]
    assert list(trail.records()) == []
