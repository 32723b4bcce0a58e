"""Group commit: one thread owns the SQLite write connection and commits for everyone.

Rule: every write is an operation `fn(conn, arg)` queued here. The thread takes everything
queued (up to `max_batch`), runs it in ONE `BEGIN IMMEDIATE ... COMMIT` and then resolves all
those futures with ONE `loop.call_soon_threadsafe`. There are no timers: while one commit's
fsync runs, the next batch piles up, so batches grow exactly as fast as load does. A batch in
which an operation raises is rolled back and re-run one operation per transaction, so a bad
operation fails alone and the others still commit; when BEGIN or COMMIT itself fails, the
whole batch fails with that error. `close()` refuses new work and returns once everything already
queued has been committed (or failed) and settled.

Operations must touch only the connection they are given: a batch may run twice.
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
from time import perf_counter
from typing import Any, TypeVar

A = TypeVar("A")
R = TypeVar("R")

# (fn, arg, future, tag): a tuple, not an object, because it is made once per write.
_Item = tuple[Callable[[sqlite3.Connection, Any], Any], Any, "asyncio.Future[Any]", object]
# (future, ok, result-or-exception, tag)
_Outcome = tuple["asyncio.Future[Any]", bool, Any, object]
Settled = Callable[[object, bool, Any], None]

log = logging.getLogger(__name__)


class WriterClosed(RuntimeError):
    """A write was submitted after `close()` began."""


class _OpFailed(Exception):
    """An operation (not BEGIN or COMMIT) raised `error` inside a batch."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


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
    rollbacks: int = 0


class GroupCommitWriter:
    """Owns `conn` from `start()` until `close()` returns (and closes it then).

    `on_settled(tag, ok, value)` runs on the event loop, in the batch's single hand-off, for
    every operation submitted with a tag: it sees the outcome even when the caller stopped
    waiting (a cancelled caller does not undo a write)."""

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
        self._batched: Mapping[object, Callable[[sqlite3.Connection, list[Any]], list[Any]]] = (
            batched or {}  # type: ignore[assignment]
        )
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()  # None: stop
        self._closed = False
        self._stopped: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.stats = WriterStats()

    def start(self) -> None:
        self._thread.start()

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
        self._queue.put((fn, arg, fut, tag))
        return fut

    async def close(self) -> None:
        """Drain: everything submitted before this call is committed and settled first."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        if self._thread.ident is not None:  # started
            await self._stopped
            self._thread.join()
        self._conn.close()

    # --- the writer thread -------------------------------------------------------------

    def _run(self) -> None:
        q = self._queue
        cap = self._max_batch
        try:
            stopping = False
            while not stopping:
                first = q.get()
                if first is None:
                    break
                batch: list[_Item] = [first]
                while len(batch) < cap:
                    try:
                        item = q.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True
                        break
                    batch.append(item)
                outcomes = self._run_batch(batch)
                self.stats.batches += 1
                self.stats.max_batch = max(self.stats.max_batch, len(batch))
                self._hand_off(self._settle, outcomes)
        finally:
            self._hand_off(self._mark_stopped, None)

    def _hand_off(self, callback: Callable[[Any], None], arg: Any) -> None:
        # A closed loop means nobody is left to wait; the writes themselves are committed.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, arg)

    def _run_batch(self, batch: list[_Item]) -> list[_Outcome]:
        try:
            results = self._transaction(batch)
        except _OpFailed as failure:
            if len(batch) == 1:
                self.stats.failed_ops += 1
                _fn, _arg, fut, tag = batch[0]
                return [(fut, False, failure.error, tag)]
            # Someone in the batch failed, and its partial writes went with the rollback:
            # re-run each alone so only the culprit fails.
            outcomes: list[_Outcome] = []
            for item in batch:
                outcomes.extend(self._run_batch([item]))
            return outcomes
        except Exception as exc:
            # BEGIN or COMMIT failed (locked past busy_timeout, disk full, I/O error): no
            # operation is to blame and re-running them one by one would only multiply the
            # wait, so the whole batch fails with it.
            self.stats.failed_ops += len(batch)
            return [(fut, False, exc, tag) for _fn, _arg, fut, tag in batch]
        self.stats.ops += len(batch)
        return [
            (item[2], True, result, item[3]) for item, result in zip(batch, results, strict=True)
        ]

    def _transaction(self, batch: list[_Item]) -> list[Any]:
        conn = self._conn
        stats = self.stats
        started = perf_counter()
        changes = conn.total_changes
        conn.execute("BEGIN IMMEDIATE")
        try:
            try:
                results = self._run_ops(conn, batch)
            except Exception as exc:
                raise _OpFailed(exc) from exc
            committing = perf_counter()
            conn.execute("COMMIT")
        except BaseException:
            stats.rollbacks += 1
            stats.transaction_seconds += perf_counter() - started
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        done = perf_counter()
        stats.commits += 1
        stats.rows += conn.total_changes - changes
        stats.commit_seconds += done - committing
        stats.transaction_seconds += done - started
        return results

    def _run_ops(self, conn: sqlite3.Connection, batch: list[_Item]) -> list[Any]:
        """Run the batch's ops in order, except that batchable ops between two ordinary ones
        are grouped by kind and run once per kind (their results put back in place)."""
        results: list[Any] = [None] * len(batch)
        groups: dict[object, list[int]] = {}

        def flush() -> None:
            for op, positions in groups.items():
                many = self._batched[op]
                outs = many(conn, [batch[i][1] for i in positions])
                for i, out in zip(positions, outs, strict=True):
                    results[i] = out
            groups.clear()

        for i, (fn, arg, _fut, _tag) in enumerate(batch):
            if fn in self._batched:
                groups.setdefault(fn, []).append(i)
            else:
                flush()
                results[i] = fn(conn, arg)
        flush()
        return results

    # --- back on the event loop ----------------------------------------------------------

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

    def _mark_stopped(self, _: object) -> None:
        if not self._stopped.done():
            self._stopped.set_result(None)
