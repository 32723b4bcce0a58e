"""The audit trail's own SQLite file: append, search, verify.

Rules kept here: the file is append-only (triggers refuse UPDATE and DELETE, and this module
never issues either); records are chained in one order, because every append reads the head
and inserts its successor inside one `BEGIN IMMEDIATE` transaction (another connection or
process waits for the lock, so the chain cannot fork); every append is fsynced before it
returns (WAL, synchronous=FULL). Nothing here prunes: message-store pruning never reaches this
file, and records stay for as long as the file is kept (six years at least, by policy).

A `watch` (engine.security.watch) is called with each record once it is committed, outside
the store's lock; it queries the store through `count_accesses` / `previous_access` /
`access_times` (PHI reads and searches per `is_access`, over the `(who, recorded)` index), so
it sees the records of every process. Whatever the watch does, the append has succeeded: its
failure is logged, never raised.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from engine.security.audit import (
    GENESIS,
    Actor,
    AuditError,
    AuditEvent,
    AuditKey,
    AuditRecord,
    Verification,
    canonical,
    chain_hash,
    is_access,
    verify_chain,
)
from engine.security.private_db import open_private_db

SCHEMA_VERSION = 1
TRIGGERS = ("audit_events_no_update", "audit_events_no_delete")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_events (
    seq INTEGER PRIMARY KEY,
    recorded REAL NOT NULL,
    key_id TEXT NOT NULL,
    who TEXT NOT NULL,
    role TEXT NOT NULL,
    address TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('C', 'R', 'U', 'D', 'E')),
    what TEXT NOT NULL,
    outcome INTEGER NOT NULL CHECK (outcome IN (0, 4, 8, 12)),
    message_ids TEXT NOT NULL,      -- JSON arrays
    patient_ids TEXT NOT NULL,
    appointment_ids TEXT NOT NULL,
    query TEXT,                     -- JSON object or NULL
    count INTEGER,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_events_recorded ON audit_events (recorded);
CREATE INDEX IF NOT EXISTS audit_events_who ON audit_events (who, recorded);
CREATE TRIGGER IF NOT EXISTS audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only: DELETE refused'); END;
"""
_COLUMNS = (
    "seq, recorded, key_id, who, role, address, user_agent, action, what, outcome, "
    "message_ids, patient_ids, appointment_ids, query, count, prev_hash, hash"
)


log = logging.getLogger("engine.audit")

# What is told of each committed record (engine.security.watch.AccessWatch).
Watch = Callable[["AuditStore", AuditRecord], None]
_ACCESS = "who = ? AND is_access(action, what)"


class AuditStore:
    """One audit file. Thread-safe: appends from several threads share one lock, and appends
    from other connections or processes are serialised by SQLite's write lock."""

    def __init__(
        self,
        path: Path,
        key: AuditKey,
        *,
        busy_timeout: float = 30.0,
        watch: Watch | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.key = key
        self.watch = watch
        self.now = now
        self._lock = threading.Lock()
        self._conn = self._open(busy_timeout)

    def _open(self, busy_timeout: float) -> sqlite3.Connection:
        conn = open_private_db(
            self.path,
            schema=_SCHEMA,
            version=SCHEMA_VERSION,
            what="audit trail",
            error=AuditError,
            busy_timeout=busy_timeout,
        )
        conn.create_function("is_access", 2, is_access, deterministic=True)
        return conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, actor: Actor, event: AuditEvent, recorded: float | None = None) -> AuditRecord:
        """Chain and store one record; it is on disk when this returns."""
        event.check()
        when = round(self.now() if recorded is None else recorded, 6)
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    head = conn.execute(
                        "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"
                    ).fetchone()
                    seq, prev = (int(head[0]) + 1, str(head[1])) if head else (1, GENESIS)
                    draft = AuditRecord(seq, when, actor, event, self.key.key_id, prev, "")
                    record = AuditRecord(
                        seq,
                        when,
                        actor,
                        event,
                        self.key.key_id,
                        prev,
                        chain_hash(self.key, prev, draft.body()),
                    )
                    conn.execute(
                        f"INSERT INTO audit_events ({_COLUMNS}) VALUES "
                        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        _row(record),
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise AuditError(f"cannot write to the audit trail {self.path}: {exc}") from exc
        if self.watch is not None:
            try:
                self.watch(self, record)
            except Exception as exc:  # the audited action went through; the watch must not
                log.error(
                    "access watch failed on audit record %d: %s", record.seq, type(exc).__name__
                )
        return record

    def count_accesses(self, who: str, after: float, through_seq: int) -> int:
        """PHI reads and searches by `who` recorded after `after`, up to record `through_seq`."""
        row = self._query(
            f"SELECT COUNT(*) FROM audit_events WHERE {_ACCESS} AND recorded > ? AND seq <= ?",
            (who, after, through_seq),
        )
        return int(row[0][0])

    def previous_access(self, who: str, before_seq: int) -> tuple[int, float] | None:
        """The sequence number and time of `who`'s last PHI read or search before a record."""
        rows = self._query(
            f"SELECT seq, recorded FROM audit_events WHERE {_ACCESS} AND seq < ? "
            "ORDER BY recorded DESC, seq DESC LIMIT 1",
            (who, before_seq),
        )
        return (int(rows[0][0]), float(rows[0][1])) if rows else None

    def access_times(self, who: str, after: float, before_seq: int) -> list[float]:
        """When `who` read or searched PHI after `after`, before record `before_seq`."""
        rows = self._query(
            f"SELECT recorded FROM audit_events WHERE {_ACCESS} AND recorded > ? AND seq < ?",
            (who, after, before_seq),
        )
        return [float(r[0]) for r in rows]

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise AuditError(f"cannot read the audit trail {self.path}: {exc}") from exc

    def records(self) -> Iterator[AuditRecord]:
        """Every record, oldest first, read in one snapshot."""
        with self._lock:
            try:
                rows = self._conn.execute(
                    f"SELECT {_COLUMNS} FROM audit_events ORDER BY seq"
                ).fetchall()
            except sqlite3.Error as exc:
                raise AuditError(f"cannot read the audit trail {self.path}: {exc}") from exc
        for row in rows:
            yield _record(row)

    def verify(self) -> Verification:
        result = verify_chain(self.key, self.records())
        with self._lock:
            present = {
                str(r[0])
                for r in self._conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?",
                    ("audit_events",),
                )
            }
        missing = tuple(t for t in TRIGGERS if t not in present)
        if not missing:
            return result
        return Verification(
            result.records, result.head_seq, result.head_hash, result.first_break, missing
        )

    def search(
        self,
        *,
        patient: str | None = None,
        who: str | None = None,
        action: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Newest first. `until` is exclusive; a limit of 0 means no limit."""
        where: list[str] = []
        params: list[Any] = []
        if patient is not None:
            where.append("EXISTS (SELECT 1 FROM json_each(patient_ids) WHERE value = ?)")
            params.append(patient)
        if who is not None:
            where.append("who = ?")
            params.append(who)
        if action is not None:
            where.append("action = ?")
            params.append(action)
        if since is not None:
            where.append("recorded >= ?")
            params.append(since)
        if until is not None:
            where.append("recorded < ?")
            params.append(until)
        sql = f"SELECT {_COLUMNS} FROM audit_events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC"
        if limit > 0:
            sql += " LIMIT ?"
            params.append(limit)
        with self._lock:
            try:
                rows = self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise AuditError(f"cannot search the audit trail {self.path}: {exc}") from exc
        return [_record(r) for r in rows]


class AuditLog:
    """The asyncio face of an AuditStore: appends run on one dedicated thread, in the order
    they were awaited, without blocking the event loop."""

    def __init__(self, store: AuditStore) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit")

    async def record(self, actor: Actor, event: AuditEvent) -> AuditRecord:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.store.append, actor, event)

    async def search(self, **filters: Any) -> list[AuditRecord]:
        """`AuditStore.search` on the appends' thread (the connection is that thread's)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: self.store.search(**filters))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.store.close()


def _row(r: AuditRecord) -> tuple[Any, ...]:
    e, a = r.event, r.actor
    return (
        r.seq, r.recorded, r.key_id, a.who, a.role, a.address, a.user_agent, e.action, e.what,
        e.outcome, canonical(list(e.message_ids)).decode(), canonical(list(e.patient_ids)).decode(),
        canonical(list(e.appointment_ids)).decode(),
        canonical(dict(e.query)).decode() if e.query is not None else None,
        e.count, r.prev_hash, r.hash,
    )  # fmt: skip


def _record(row: tuple[Any, ...]) -> AuditRecord:
    """A stored row as a record, without judging it: a tampered value is kept as found so that
    verification sees it (a non-JSON list becomes one string and fails the HMAC)."""
    (seq, recorded, key_id, who, role, address, agent, action, what, outcome,
     mids, pids, aids, query, count, prev_hash, hash_) = row  # fmt: skip
    event = AuditEvent(
        action, what, outcome, tuple(_json_list(mids)), tuple(_json_list(pids)),
        tuple(_json_list(aids)), _json_obj(query), count,
    )  # fmt: skip
    return AuditRecord(
        int(seq), recorded, Actor(who, role, address, agent), event, str(key_id),
        str(prev_hash), str(hash_),
    )  # fmt: skip


def _json_list(text: Any) -> list[Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return [text]
    return value if isinstance(value, list) else [value]


def _json_obj(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {"": text}
    return value if isinstance(value, dict) else {"": value}
