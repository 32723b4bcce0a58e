"""Group commit: every write of the process shares the commit that is next to go.

How: writes are operations `fn(conn, arg)` queued with `submit`. When no commit is in flight,
the event-loop thread opens a transaction (`BEGIN IMMEDIATE`), runs everything queued (up to
`max_batch`) and hands the transaction to the commit thread, which runs `COMMIT` (the fsync)
and settles all the batch's futures with ONE `loop.call_soon_threadsafe`. While that fsync
runs, the next batch piles up. There are no timers: batches grow exactly as fast as load does.

Why the statements run on the loop thread and only COMMIT runs on the writer thread: the
sqlite3 module releases the GIL around every step of every statement, so a writer thread
that issued the statements had to win the GIL back from the busy event loop once per row,
which made batches several times slower than their fsync (measured: 2.1 ms per transaction
of which 0.6 ms was COMMIT). Now a batch costs the commit thread two GIL hand-offs.

Rules kept:
- A future resolves only after the COMMIT carrying its rows returned.
- Each ordinary op runs inside its own SAVEPOINT, and each group of batchable ops (see
  `batched`) inside one; when one fails it is rolled back alone (a batchable group is then
  re-run op by op), the op's future gets the exception, and the rest still commits.
- `BEGIN IMMEDIATE` never blocks the loop: while another process (the CLI) holds the write
  lock, it is retried every few milliseconds until `busy_timeout`, then the batch fails.
- When the transaction itself is lost (SQLite rolled it back: disk full, I/O error), every op
  of the batch fails with that error; nothing is left waiting.
- `close()` refuses new work and returns once everything queued was committed or failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from time import monotonic, perf_counter
from typing import Any, TypeVar

A = TypeVar("A")
R = TypeVar("R")

Op = Callable[[sqlite3.Connection, Any], Any]
ManyOp = Callable[[sqlite3.Connection, list[Any]], list[Any]]
# (fn, arg, future, tag): a tuple, not an object, because it is made once per write.
_Item = tuple[Op, Any, "asyncio.Future[Any]", object]
# (future, ok, result-or-exception, tag)
_Outcome = tuple["asyncio.Future[Any]", bool, Any, object]
Settled = Callable[[object, bool, Any], None]

log = logging.getLogger(__name__)

_BUSY_RETRY = 0.002  # seconds between BEGIN IMMEDIATE attempts while another process writes


class WriterClosed(RuntimeError):
    """A write was submitted after `close()` began."""


@dataclass
class WriterStats:
    commits: int = 0  # transactions committed
    rows: int = 0  # rows inserted, updated or deleted by committed transactions
    commit_seconds: float = 0.0  # time spent in COMMIT (the fsync)
    transaction_seconds: float = 0.0  # BEGIN to end of COMMIT, committed or not
    ops: int = 0  # operations that committed
    failed_ops: int = 0
    batches: int = 0  # settle hand-offs to the event loop (one per batch)
    max_batch: int = 0
    rollbacks: int = 0  # savepoints rolled back (a failing op or group) and failed commits


@dataclass
class _Job:
    outcomes: list[_Outcome]
    started: float
    changes: int


class GroupCommitWriter:
    """Owns `conn` from `start()` until `close()` returns (and closes it then).

    `on_settled(tag, ok, value)` runs on the event loop, in the batch's single hand-off, for
    every operation submitted with a tag: it sees the outcome even when the caller stopped
    waiting (a cancelled caller does not undo a write). `before_commit`, when set, is called
    on the commit thread just before each COMMIT (tests use it to hold a batch open);
    `on_commit(seconds)`, when set, on the event loop after each COMMIT that succeeded, with
    its duration (the metrics' commit time)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        loop: asyncio.AbstractEventLoop,
        *,
        max_batch: int = 1024,
        on_settled: Settled | None = None,
        name: str = "store-writer",
        batched: Mapping[object, object] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._conn = conn
        self._loop = loop
        self._max_batch = max_batch
        self._on_settled = on_settled
        # op -> the same op for a list of args (see `_run_ops`)
        self._batched: Mapping[object, ManyOp] = batched or {}  # type: ignore[assignment]
        # BEGIN must not block the loop: take over the connection's busy timeout and retry.
        (busy_ms,) = conn.execute("PRAGMA busy_timeout").fetchone()
        self._busy_timeout = busy_ms / 1000.0
        conn.execute("PRAGMA busy_timeout = 0")
        self._pending: list[_Item] = []
        self._committing = False
        self._scheduled = False
        self._started = False
        self._closed = False
        self._busy_since: float | None = None
        self._idle: asyncio.Future[None] | None = None
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()  # None: stop
        self._thread = threading.Thread(target=self._commit_loop, name=name, daemon=True)
        self.before_commit: Callable[[], None] | None = None
        self.on_commit: Callable[[float], None] | None = None
        self.stats = WriterStats()

    def start(self) -> None:
        self._started = True
        self._thread.start()
        self._schedule()

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(
        self, fn: Callable[[sqlite3.Connection, A], R], arg: A, tag: object = None
    ) -> asyncio.Future[R]:
        """Queue `fn(conn, arg)`; the future resolves once its transaction has committed."""
        if self._closed:
            raise WriterClosed("the store is closed")
        fut: asyncio.Future[R] = self._loop.create_future()
        self._pending.append((fn, arg, fut, tag))
        self._schedule()
        return fut

    async def close(self) -> None:
        """Drain: everything submitted before this call is committed and settled first."""
        self._closed = True
        if self._started:
            if self._pending or self._committing:
                self._idle = self._loop.create_future()
                await self._idle
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join)
            self._started = False
        self._conn.close()

    # --- the event-loop side -----------------------------------------------------------

    def _schedule(self) -> None:
        # call_soon, not now: writes submitted in the same loop iteration share the batch.
        if self._started and not self._committing and not self._scheduled and self._pending:
            self._scheduled = True
            self._loop.call_soon(self._begin_batch)

    def _begin_batch(self) -> None:
        self._scheduled = False
        if self._committing or not self._pending:
            return
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                self._fail_batch(self._take(), exc)
                return
            now = monotonic()
            if self._busy_since is None:
                self._busy_since = now
            if now - self._busy_since < self._busy_timeout:
                self._scheduled = True
                self._loop.call_later(_BUSY_RETRY, self._begin_batch)
                return
            self._busy_since = None
            self._fail_batch(self._take(), exc)
            return
        self._busy_since = None
        started = perf_counter()
        changes = conn.total_changes
        batch = self._take()
        try:
            outcomes = self._run_ops(conn, batch)
        except Exception as exc:
            # The transaction itself was lost (disk full, I/O error, out of memory: SQLite
            # rolled it back, so even the ops that had succeeded are gone): every op of the
            # batch fails, and the connection is left clean for the next batch.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            self.stats.rollbacks += 1
            self._fail_batch(batch, exc)
            return
        self._committing = True
        self._jobs.put(_Job(outcomes, started, changes))

    def _take(self) -> list[_Item]:
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        return batch

    def _fail_batch(self, batch: list[_Item], exc: Exception) -> None:
        self.stats.failed_ops += len(batch)
        self._settle([(fut, False, exc, tag) for _fn, _arg, fut, tag in batch])
        self._after_batch()

    def _run_ops(self, conn: sqlite3.Connection, batch: list[_Item]) -> list[_Outcome]:
        """Run the batch in order, except that batchable ops between two ordinary ones are
        grouped by kind and run once per kind; each op or group in its own savepoint."""
        outcomes: list[_Outcome | None] = [None] * len(batch)
        groups: dict[object, list[int]] = {}

        def flush() -> None:
            for op, positions in groups.items():
                self._run_group(conn, batch, positions, self._batched[op], outcomes)
            groups.clear()

        for i, item in enumerate(batch):
            if item[0] in self._batched:
                groups.setdefault(item[0], []).append(i)
            else:
                flush()
                outcomes[i] = self._run_one(conn, item)
        flush()
        return [o for o in outcomes if o is not None]

    def _run_one(self, conn: sqlite3.Connection, item: _Item) -> _Outcome:
        fn, arg, fut, tag = item
        conn.execute("SAVEPOINT op")
        try:
            result = fn(conn, arg)
        except Exception as exc:
            if not conn.in_transaction:
                raise  # SQLite dropped the whole transaction: the batch fails with the cause
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            self.stats.rollbacks += 1
            return (fut, False, exc, tag)
        conn.execute("RELEASE op")
        return (fut, True, result, tag)

    def _run_group(
        self,
        conn: sqlite3.Connection,
        batch: list[_Item],
        positions: list[int],
        many: ManyOp,
        outcomes: list[_Outcome | None],
    ) -> None:
        conn.execute("SAVEPOINT ops")
        try:
            results = many(conn, [batch[i][1] for i in positions])
        except Exception:
            if not conn.in_transaction:
                raise  # as in _run_one
            conn.execute("ROLLBACK TO ops")
            conn.execute("RELEASE ops")
            self.stats.rollbacks += 1
            # Someone in the group failed: run each alone so only the culprit fails.
            def one(c: sqlite3.Connection, a: Any) -> Any:
                return many(c, [a])[0]

            for i in positions:
                _fn, arg, fut, tag = batch[i]
                outcomes[i] = self._run_one(conn, (one, arg, fut, tag))
            return
        conn.execute("RELEASE ops")
        for i, result in zip(positions, results, strict=True):
            _fn, _arg, fut, tag = batch[i]
            outcomes[i] = (fut, True, result, tag)

    def _committed(self, job: _Job, error: Exception | None, commit_seconds: float) -> None:
        stats = self.stats
        stats.batches += 1
        stats.max_batch = max(stats.max_batch, len(job.outcomes))
        stats.transaction_seconds += perf_counter() - job.started
        if error is None:
            stats.commits += 1
            stats.commit_seconds += commit_seconds
            stats.rows += self._conn.total_changes - job.changes
            ok = sum(1 for o in job.outcomes if o[1])
            stats.ops += ok
            stats.failed_ops += len(job.outcomes) - ok
            outcomes = job.outcomes
            if self.on_commit is not None:
                try:
                    self.on_commit(commit_seconds)
                except Exception:  # as in _settle: bookkeeping must not strand the futures
                    log.exception("store writer: commit hook failed")
        else:
            # The COMMIT itself failed (disk full, I/O error): nothing of the batch is stored.
            stats.rollbacks += 1
            stats.failed_ops += len(job.outcomes)
            outcomes = [(fut, False, error, tag) for fut, _ok, _v, tag in job.outcomes]
        self._committing = False
        self._settle(outcomes)
        self._after_batch()

    def _after_batch(self) -> None:
        if self._pending:
            self._schedule()
        elif self._idle is not None and not self._committing and not self._idle.done():
            self._idle.set_result(None)

    def _settle(self, outcomes: list[_Outcome]) -> None:
        on_settled = self._on_settled
        for fut, ok, value, tag in outcomes:
            if tag is not None and on_settled is not None:
                try:
                    on_settled(tag, ok, value)
                except Exception:  # a bookkeeping bug must not strand the other futures
                    log.exception("store writer: settle hook failed")
            if fut.done():  # the caller was cancelled; its write stands regardless
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    # --- the commit thread -------------------------------------------------------------

    def _commit_loop(self) -> None:
        conn = self._conn
        while True:
            job = self._jobs.get()
            if job is None:
                return
            hook = self.before_commit
            if hook is not None:
                hook()
            started = perf_counter()
            error: Exception | None = None
            try:
                conn.execute("COMMIT")
            except Exception as exc:
                error = exc
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
            elapsed = perf_counter() - started
            # A closed loop means nobody is left to wait; the writes themselves are committed.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._committed, job, error, elapsed)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)
