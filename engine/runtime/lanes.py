"""Delivery lanes of one destination: FIFO per `order_by` key, parallel across keys.

Rules kept here:
- Within a lane, a delivery is sent only when every earlier one of that lane is final
  (sent, failed or discarded): a retrying head holds its lane, other lanes go on.
- At most `destination.concurrency` sends are in flight at once, across all lanes.
- Every attempt and its response is recorded in the store. A delivery is `sent` only on a
  `Sent` outcome; a timeout or a dropped connection is a `Retry`, never a success.
- Retries follow the destination's policy (exponential backoff with jitter); when they are
  used up, or the destination rejects the payload, the delivery goes `failed` and an alert
  line is logged (ids and reason only, never content).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from engine.config.model import DestinationConfig
from engine.destinations.base import DeliveryMeta, Destination, Outcome, Reject, Retry, Sent
from engine.runtime.backoff import delay, exhausted
from engine.runtime.clock import Clock
from engine.runtime.metrics import DestinationMetrics
from engine.security.alerts import LOGGER, alert_extra
from engine.store.base import Attempt, AttemptOutcome, Store

log = logging.getLogger("engine.delivery")
alerts = logging.getLogger(LOGGER)


@dataclass
class Queued:
    id: int
    message_id: int
    channel: str
    lane: str
    payload: bytes
    next_at: float  # wall-clock unix seconds
    queued_at: float  # when it was queued (or requeued by an operator): delivery latency
    attempts: int = 0  # every attempt ever made (numbering)
    failures: int = 0  # failures in this round (retry budget)


FinalCallback = Callable[[int, Outcome], None]
# (destination name, the delivery, why: "rejected" or "retries_exhausted")
FailedCallback = Callable[[str, Queued, str], None]

RECORD_TRIES = 8  # about 12 s of retries (0.1 s doubling, capped at 5 s)
STOP_GRACE = 10.0  # seconds a send in flight may take to finish when the engine stops


class DestinationRunner:
    def __init__(
        self,
        config: DestinationConfig,
        destination: Destination,
        store: Store,
        clock: Clock,
        metrics: DestinationMetrics,
        on_final: FinalCallback | None = None,
        on_failed: FailedCallback | None = None,
        *,
        held: bool = False,
    ) -> None:
        self.config = config
        self.name = config.name
        self._destination = destination
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._on_final = on_final
        self._on_failed = on_failed
        self._lanes: dict[str, deque[Queued]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(max(1, destination.concurrency))
        self._records: set[asyncio.Task[None]] = set()
        self._known: set[int] = set()
        self._stopping = False
        self._wake = asyncio.Event()  # set on stop: ends every retry wait at once
        # Held (a reload rebuilding this destination): deliveries are kept aside, unsent,
        # until `resume`, so none overtakes an earlier one the replaced runner still holds.
        self._held: list[Queued] | None = [] if held else None

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def idle(self) -> bool:
        """Nothing queued in memory, nothing held, nothing being recorded."""
        return not self._lanes and not self._held and not self._records

    def resume(self) -> None:
        """Start sending what was held, oldest first (ids are arrival order)."""
        held, self._held = self._held or [], None
        for item in sorted(held, key=lambda q: q.id):
            self.enqueue(item)

    @property
    def depth(self) -> int:
        """Deliveries this runner holds that are not final yet (waiting, retrying, in flight)."""
        return len(self._known)

    def enqueue(self, item: Queued) -> None:
        if self._held is not None:
            self._held.append(item)
            return
        if self._stopping or item.id in self._known:
            return
        self._known.add(item.id)
        lane = self._lanes.get(item.lane)
        if lane is None:
            lane = self._lanes[item.lane] = deque()
        lane.append(item)
        if item.lane not in self._workers:
            self._workers[item.lane] = asyncio.get_running_loop().create_task(
                self._run_lane(item.lane), name=f"lane:{self.name}:{item.lane}"
            )

    async def _run_lane(self, key: str) -> None:
        lane = self._lanes[key]
        try:
            while lane and not self._stopping:
                item = lane[0]
                wait = item.next_at - self._clock.now()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait)
                    continue
                if await self._attempt(item):
                    lane.popleft()
                    self._known.discard(item.id)
        finally:
            del self._workers[key]
            if not lane:
                del self._lanes[key]

    async def _attempt(self, item: Queued) -> bool:
        """One try; True when the delivery is final (sent or failed)."""
        async with self._slots:
            started = self._clock.now()
            t0 = self._clock.monotonic()
            try:
                outcome = await self._destination.send(
                    item.payload, DeliveryMeta(item.id, item.message_id, item.channel)
                )
            except Exception as exc:  # a destination bug must not stop the lane
                log.error("destination %s: unexpected %s", self.name, type(exc).__name__)
                outcome = Retry(f"internal error in destination ({type(exc).__name__})")
            latency = self._clock.monotonic() - t0
        item.attempts += 1

        def record(kind: AttemptOutcome, next_at: float | None = None) -> None:
            reason = "" if isinstance(outcome, Sent) else outcome.reason
            self._record(
                Attempt(
                    item.id,
                    item.attempts,
                    started,
                    latency,
                    kind,
                    outcome.code,
                    outcome.response,
                    reason,
                    next_attempt_at=next_at,
                )
            )

        metrics = self._metrics
        if isinstance(outcome, Sent):
            metrics.sent.inc()
            metrics.latency_seconds.observe(max(0.0, started + latency - item.queued_at))
            record("sent")
            self._final(item, outcome)
            return True
        if isinstance(outcome, Reject):
            why = f"rejected by destination: {outcome.reason}"
        else:
            item.failures += 1
            why = f"gave up after {item.failures} attempts: {outcome.reason}"
        if isinstance(outcome, Reject) or exhausted(self.config.retry, item.failures):
            metrics.failed.inc()
            record("failed")
            self._alert(item, why)
            self._final(item, outcome)
            if self._on_failed is not None:
                reason = "rejected" if isinstance(outcome, Reject) else "retries_exhausted"
                self._on_failed(self.name, item, reason)
            return True
        wait = delay(self.config.retry, item.failures)
        if outcome.after is not None:
            wait = max(wait, outcome.after)
        item.next_at = self._clock.now() + wait
        metrics.retried.inc()
        record("retry", item.next_at)
        log.info(
            "delivery %d to %s: retry %d in %.1fs (%s)",
            item.id,
            self.name,
            item.failures,
            wait,
            outcome.reason,
        )
        return False

    def _record(self, attempt: Attempt, tries: int = 0) -> None:
        # Not awaited: the lane moves on while the group commit carries the attempt. The
        # writer keeps submission order, so a delivery's attempts are stored in sequence; a
        # crash before that commit means the delivery is sent again (at least once).
        task = asyncio.get_running_loop().create_task(self._store.record_attempt(attempt))
        self._records.add(task)
        task.add_done_callback(lambda t: self._recorded(t, attempt, tries))

    def _recorded(self, task: asyncio.Task[None], attempt: Attempt, tries: int) -> None:
        self._records.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        # Unrecorded, the delivery would stay queued and claimed by us with no lane holding
        # it: neither sent again nor visible as failed. The store is usually only busy for a
        # moment (another process writing), so record it again.
        error = type(task.exception()).__name__
        if tries < RECORD_TRIES and not self._stopping:
            log.warning(
                "destination %s: attempt for delivery %d not recorded (%s); retrying",
                self.name,
                attempt.delivery_id,
                error,
            )
            asyncio.get_running_loop().call_later(
                min(0.1 * 2**tries, 5.0), self._record, attempt, tries + 1
            )
        else:
            log.error(
                "destination %s: attempt for delivery %d not recorded (%s); it is sent "
                "again after the next start",
                self.name,
                attempt.delivery_id,
                error,
            )

    def _final(self, item: Queued, outcome: Outcome) -> None:
        if self._on_final is not None:
            self._on_final(item.id, outcome)

    def _alert(self, item: Queued, reason: str) -> None:
        alerts.warning(
            "ALERT delivery failed: destination=%s delivery=%d message=%d channel=%s reason=%s",
            self.name,
            item.id,
            item.message_id,
            item.channel,
            reason,
            extra=alert_extra("delivery_failed", destination=self.name, delivery_id=item.id,
                              message_id=item.message_id, channel=item.channel, reason=reason),
        )  # fmt: skip

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop sending: retry waits end at once, sends in flight get `grace` seconds to get
        their answer (so a message the EHR took is recorded as sent, not sent again), then
        are cancelled. What is not sent stays queued in the store and resumes next start."""
        self._stopping = True
        self._wake.set()
        workers = list(self._workers.values())
        if workers:
            _done, late = await asyncio.wait(workers, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        if self._records:
            await asyncio.gather(*self._records, return_exceptions=True)
        await self._destination.close()
