"""The embedded SQLite store: the `Store` protocol over one file in WAL mode.

Rule: writes go through the single group-commit writer thread (`sqlite_writer`), so a caller
awaits exactly the commit that carries its rows; nothing is acknowledged before that commit
returns (synchronous=FULL). Reads never touch the writer: the duplicate check, which runs
once per message, is one indexed SELECT on a read connection of the event-loop thread plus a
look at ingests still queued; searches and detail reads run on a small thread pool with a
connection per thread, so a large table never stalls the loop.

Encryption at rest: every connection carries the store's `RowSealer` (engine.security.atrest),
and the write and read functions seal and open the PHI-carrying values with it, so callers see
plain bytes. Opening refuses a file whose newest message is sealed with a key the ring lacks.

Schema: `sqlite_schema`; write operations: `sqlite_writes`; reads: `sqlite_queries`, message
search: `sqlite_search`;
appointment state (numbering, history, the overlap lookup): `sqlite_appointments`.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from engine.security.atrest import CLEAR, RowSealer, not_configured, sealed_key_id
from engine.store import sqlite_appointments as appointments
from engine.store import sqlite_queries as queries
from engine.store import sqlite_search
from engine.store import sqlite_writes as writes
from engine.store.base import (
    ActivityRow,
    AppointmentRow,
    AppointmentVersionRow,
    Attempt,
    Delivery,
    DuplicateHit,
    Ingest,
    Ingested,
    MessageDetail,
    MessageFilter,
    MessageRow,
    NewDelivery,
    NewMessage,
    Resolution,
    ResolveOutcome,
    StoreStats,
)
from engine.store.sqlite_activity import activity
from engine.store.sqlite_schema import (
    MIGRATIONS,
    Migration,
    StoreSchemaError,
    connect,
    prepare,
)
from engine.store.sqlite_writer import GroupCommitWriter

T = TypeVar("T")
HOT_READ_TIMEOUT = 0.1  # seconds
_DedupeKey = tuple[str, str]  # (MSH-3 sender, MSH-10 control id)


@dataclass(eq=False)
class _PendingIngest:
    """An ingest queued but not yet committed, visible to the duplicate check meanwhile."""

    key: _DedupeKey
    received_at: float
    settled: bool = False
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class SqliteStore:
    """`Store` on SQLite. `open()` creates or migrates the file; `close()` drains the writer."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        max_batch: int = 1024,
        busy_timeout: float = 5.0,
        read_threads: int = 2,
        migrations: Sequence[Migration] = MIGRATIONS,
        sealer: RowSealer = CLEAR,
    ) -> None:
        self.path = Path(path)
        self._sealer = sealer
        self._clock = clock
        self._max_batch = max_batch
        self._busy_timeout = busy_timeout
        self._read_threads = read_threads
        self._migrations = migrations
        self._writer: GroupCommitWriter | None = None
        self._closed_writer: GroupCommitWriter | None = None  # keeps stats() after close
        self._hot_reader: sqlite3.Connection | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._pool_conns: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._pending: dict[_DedupeKey, list[_PendingIngest]] = {}
        self._commit_observer: Callable[[float], None] | None = None

    # --- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            raise RuntimeError("store already open")
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(prepare, self.path, self._migrations, self._busy_timeout)
        await asyncio.to_thread(self._refuse_unknown_key)
        write_conn = connect(
            self.path, check_same_thread=False, busy_timeout=self._busy_timeout,
            sealer=self._sealer,
        )
        # The duplicate check runs on the event loop: it must never wait long for a lock (a
        # WAL reader can be kept waiting by another process's recovery or checkpoint). Past
        # this it fails, and intake answers "not stored, resend later".
        self._hot_reader = connect(
            self.path, readonly=True, busy_timeout=HOT_READ_TIMEOUT, sealer=self._sealer
        )
        self._pool = ThreadPoolExecutor(
            max_workers=self._read_threads,
            thread_name_prefix="store-read",
            initializer=self._open_pool_conn,
        )
        self._writer = GroupCommitWriter(
            write_conn,
            loop,
            max_batch=self._max_batch,
            on_settled=self._ingest_settled,
            batched=writes.BATCHED,
        )
        self._writer.on_commit = self._commit_observer
        self._writer.start()

    def _refuse_unknown_key(self) -> None:
        """Fail at open, not at the first read, when the newest message is sealed with a key
        the ring lacks (say, the engine started without its keys). Older rows under a key
        since removed still fail clearly when read: `engine keys status` shows them."""
        conn = connect(self.path, readonly=True, busy_timeout=self._busy_timeout)
        try:
            row = conn.execute(
                "SELECT substr(raw, 1, 40) FROM messages ORDER BY id DESC LIMIT 1"
            ).fetchone()
        finally:
            conn.close()
        key_id = sealed_key_id(row[0]) if row is not None else None
        ring = self._sealer.ring
        if key_id is not None and (ring is None or key_id not in ring.ids):
            raise StoreSchemaError(f"{self.path}: {not_configured(key_id)}")

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        self._closed_writer = writer
        await writer.close()
        if self._pool is not None:
            await asyncio.to_thread(self._pool.shutdown, True)
            self._pool = None
        with self._pool_lock:
            conns, self._pool_conns = self._pool_conns, []
        for conn in conns:
            conn.close()
        if self._hot_reader is not None:
            self._hot_reader.close()
            self._hot_reader = None

    @property
    def sealer(self) -> RowSealer:
        """What the store seals values with (clear without keys)."""
        return self._sealer

    @property
    def writer(self) -> GroupCommitWriter:
        """The group-commit writer (for diagnostics and tests that need to hold a batch)."""
        if self._writer is None:
            raise RuntimeError("store is not open")
        return self._writer

    def stats(self) -> StoreStats:
        writer = self._writer or self._closed_writer
        if writer is None:
            return StoreStats()
        s = writer.stats
        return StoreStats(
            commits=s.commits,
            rows=s.rows,
            commit_seconds=s.commit_seconds,
            extra={
                "transaction_seconds": s.transaction_seconds,
                "ops": float(s.ops),
                "failed_ops": float(s.failed_ops),
                "batches": float(s.batches),
                "max_batch": float(s.max_batch),
                "rollbacks": float(s.rollbacks),
                "pending_ingests": float(sum(len(v) for v in self._pending.values())),
            },
        )

    def observe_commits(self, observer: Callable[[float], None]) -> None:
        self._commit_observer = observer
        if self._writer is not None:
            self._writer.on_commit = observer

    # --- writes ------------------------------------------------------------------------

    async def probe(self) -> None:
        # BEGIN IMMEDIATE takes the file's write lock and COMMIT ends the transaction, so
        # this proves the writer thread, the connection and the lock; sharing a batch, it
        # shares that batch's fsync.
        await self.writer.submit(writes.probe, None)

    async def ingest(self, item: Ingest) -> Ingested:
        writer = self.writer
        if item.appointment is not None:
            appointments.check(item.appointment)
        pending = self._register(item.message)
        try:
            future = writer.submit(writes.ingest, (item, self._clock()), pending)
        except BaseException:
            if pending is not None:  # never queued: nobody may wait for it
                self._ingest_settled(pending, False, None)
            raise
        return await future

    async def ingest_all(self, items: list[Ingest]) -> list[Ingested]:
        writer = self.writer
        items = list(items)
        if not items:
            return []
        for item in items:
            if item.appointment is not None:
                appointments.check(item.appointment)
        pending = tuple(p for p in map(self._register, (i.message for i in items)) if p)
        try:
            future = writer.submit(writes.ingest_all, (items, self._clock()), pending or None)
        except BaseException:
            self._ingest_settled(pending, False, None)
            raise
        return await future

    def _register(self, m: NewMessage) -> _PendingIngest | None:
        # Only a message the sender was told is accepted (AA) is an original: one answered
        # AE or AR is processed again when resent with the same MSH-10 (after the sender or
        # an analyst fixed the cause); duplicates and replays never match.
        if m.ack_code != "AA" or m.status not in ("processed", "error") or m.replay_of is not None:
            return None
        key = (m.keys.sender, m.keys.control_id)
        pending = _PendingIngest(key, m.received_at)
        self._pending.setdefault(key, []).append(pending)
        return pending

    def _ingest_settled(self, tag: object, ok: bool, value: Any) -> None:
        # Runs on the loop right after the commit, before any waiting task resumes, so the
        # row is visible to the read connection by the time the entry disappears. An
        # `ingest_all` op carries a tuple: its messages settle together.
        if isinstance(tag, tuple):
            for one in tag:
                self._ingest_settled(one, ok, value)
            return
        assert isinstance(tag, _PendingIngest)
        tag.settled = True
        entries = self._pending.get(tag.key)
        if entries is not None:
            entries.remove(tag)
            if not entries:
                del self._pending[tag.key]
        for waiter in tag.waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def find_duplicate(
        self, sender: str, control_id: str, since: float
    ) -> DuplicateHit | None:
        for entry in list(self._pending.get((sender, control_id), ())):
            if entry.received_at >= since and not entry.settled:
                # Same key still on its way to disk: wait for its commit (or failure), then
                # the read below sees it, with its id and stored ACK.
                waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                entry.waiters.append(waiter)
                await waiter
        return queries.find_duplicate(self._hot(), sender, control_id, since)

    async def add_deliveries(
        self, message_id: int, deliveries: tuple[NewDelivery, ...], claimed: bool = True
    ) -> tuple[int, ...]:
        if not deliveries:
            return ()
        arg = (message_id, tuple(deliveries), claimed, self._clock())
        return await self.writer.submit(writes.add_deliveries, arg)

    async def set_ack(self, message_id: int, ack_code: str, ack: bytes) -> None:
        await self.writer.submit(writes.set_ack, (message_id, ack_code, ack))

    async def record_attempt(self, attempt: Attempt) -> None:
        await self.writer.submit(writes.record_attempt, (attempt, self._clock()))

    async def claim_queued(self, destinations: list[str], limit: int) -> list[Delivery]:
        if not destinations or limit <= 0:
            return []
        return await self.writer.submit(writes.claim_queued, (list(destinations), limit))

    async def release_claims(self, destinations: list[str] | None = None) -> int:
        return await self.writer.submit(writes.release_claims, destinations)

    async def requeue(self, delivery_ids: list[int]) -> int:
        if not delivery_ids:
            return 0
        return await self.writer.submit(writes.requeue, (list(delivery_ids), self._clock()))

    async def requeue_failed(self, destination: str) -> int:
        return await self.writer.submit(writes.requeue_failed, (destination, self._clock()))

    async def resolve_conflict(
        self, message_id: int, by: str, outcome: Resolution
    ) -> ResolveOutcome:
        return await self.writer.submit(
            writes.resolve_conflict, (message_id, by, outcome, self._clock())
        )

    async def discard(self, delivery_ids: list[int]) -> int:
        if not delivery_ids:
            return 0
        return await self.writer.submit(writes.discard, (list(delivery_ids), self._clock()))

    # --- reads (thread pool) -----------------------------------------------------------

    def _open_pool_conn(self) -> None:
        conn = connect(
            self.path, readonly=True, check_same_thread=False, busy_timeout=self._busy_timeout,
            sealer=self._sealer,
        )
        self._local.conn = conn
        with self._pool_lock:
            self._pool_conns.append(conn)

    def _with_pool_conn(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection = self._local.conn
        return fn(conn)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._pool is None:
            raise RuntimeError("store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._with_pool_conn, fn)

    async def search(self, flt: MessageFilter) -> list[MessageRow]:
        return await self._read(partial(sqlite_search.search, flt=flt))

    async def get(self, message_id: int) -> MessageDetail | None:
        return await self._read(partial(queries.get, message_id=message_id))

    async def activity(self, since: float, until: float, bucket: float) -> list[ActivityRow]:
        return await self._read(partial(activity, since=since, until=until, bucket=bucket))

    async def deliveries(
        self, destination: str | None = None, status: str | None = None, limit: int = 1000
    ) -> list[Delivery]:
        return await self._read(
            partial(queries.deliveries, destination=destination, status=status, limit=limit)
        )

    # The appointment reads are on every appointment message's path and are single index
    # lookups (microseconds): like the duplicate check they run on the loop thread, since a
    # hop to the read pool and back costs more than the query.
    def _hot(self) -> sqlite3.Connection:
        if self._hot_reader is None:
            raise RuntimeError("store is not open")
        return self._hot_reader

    async def appointment(self, key: str) -> AppointmentRow | None:
        return appointments.appointment(self._hot(), key=key)

    async def appointment_by_id(self, appointment_id: str) -> AppointmentRow | None:
        return appointments.appointment_by_id(self._hot(), appointment_id=appointment_id)

    async def overlapping(
        self,
        actors: tuple[str, ...],
        start: float,
        end: float,
        *,
        exclude_key: str = "",
        exclude_statuses: frozenset[str] = frozenset(),
        limit: int = 1000,
    ) -> list[AppointmentRow]:
        if not actors or not end > start or limit <= 0:
            return []  # an empty interval overlaps nothing: no need to ask the file
        return appointments.overlapping(
            self._hot(), tuple(actors), start, end, exclude_key, exclude_statuses, limit
        )

    async def appointment_history(self, key: str) -> list[AppointmentVersionRow]:
        return await self._read(partial(appointments.history, key=key))
