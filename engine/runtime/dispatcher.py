"""All delivery lanes of the running engine, fed from intake and from the store.

At start every queued delivery left by a previous process (stopped or killed) is released
and claimed again, so it resumes in its original order; a delivery that was in flight when
the process died is sent again (at-least-once, never lost). While running, a poller claims
deliveries that another process queued (`engine retry`, `engine replay`). Intake hands new
deliveries over directly once their commit returned.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence

from engine.config.model import DestinationConfig
from engine.destinations.base import Destination, Outcome
from engine.runtime.clock import Clock
from engine.runtime.lanes import DestinationRunner, Queued
from engine.runtime.metrics import Metrics
from engine.runtime.sync_failed import SyncFailedEvents
from engine.store.base import Delivery, NewDelivery, Store

log = logging.getLogger("engine.dispatcher")

CLAIM_BATCH = 1000

DestinationFactory = Callable[[DestinationConfig], Destination]


class Dispatcher:
    def __init__(
        self,
        destinations: Iterable[DestinationConfig],
        store: Store,
        clock: Clock,
        factory: DestinationFactory,
        metrics: Metrics,
        poll_interval: float = 1.0,
        failure_events: SyncFailedEvents | None = None,
    ) -> None:
        self._store = store
        self._failure_events = failure_events
        self._announcing: set[asyncio.Task[int]] = set()
        self._clock = clock
        self._poll_interval = poll_interval
        self._waiters: dict[int, asyncio.Future[Outcome]] = {}
        self.runners: dict[str, DestinationRunner] = {
            d.name: DestinationRunner(
                d,
                factory(d),
                store,
                clock,
                metrics.destination(d.channel, d.name),
                self._final,
                self._failed,
            )
            for d in destinations
        }
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        released = await self._store.release_claims()
        resumed = await self.claim()
        if released:
            log.info("resumed %d queued deliveries", resumed)
        self._poller = asyncio.get_running_loop().create_task(self._poll(), name="claim-poller")

    async def claim(self) -> int:
        """Take every claimable queued delivery of our destinations into its lane, in order."""
        names = list(self.runners)
        total = 0
        while names:
            rows = await self._store.claim_queued(names, CLAIM_BATCH)
            for row in rows:
                self._enqueue_row(row)
            total += len(rows)
            if len(rows) < CLAIM_BATCH:
                break
        return total

    def _enqueue_row(self, row: Delivery) -> None:
        runner = self.runners.get(row.destination)
        if runner is None:
            return
        # An operator's retry (attempts made, none in this round) queued it again when it
        # made it due; anything else has waited since it was made.
        requeued = row.attempts > 0 and row.round_attempts == 0
        # The retry budget carries over a restart: failures so far in this round count.
        runner.enqueue(
            Queued(
                row.id,
                row.message_id,
                row.channel,
                row.lane,
                row.payload,
                row.next_attempt_at,
                row.next_attempt_at if requeued else row.created_at,
                row.attempts,
                row.round_attempts,
            )
        )

    def enqueue(
        self, message_id: int, ids: Sequence[int], deliveries: Sequence[NewDelivery]
    ) -> None:
        """New deliveries from intake, once their commit returned `ids`."""
        for delivery_id, d in zip(ids, deliveries, strict=True):
            runner = self.runners.get(d.destination)
            if runner is not None:
                due = d.next_attempt_at  # a new delivery is due when queued
                item = Queued(delivery_id, message_id, d.channel, d.lane, d.payload, due, due)
                runner.enqueue(item)

    def depths(self) -> dict[str, float]:
        """Per destination, the deliveries held in memory and not final yet (metrics)."""
        return {name: runner.depth for name, runner in self.runners.items()}

    def watch(self, delivery_id: int) -> asyncio.Future[Outcome]:
        """A future for the delivery's final outcome (for the `delivered` ACK policy)."""
        future = self._waiters.get(delivery_id)
        if future is None:
            future = self._waiters[delivery_id] = asyncio.get_running_loop().create_future()
        return future

    def forget(self, delivery_id: int) -> None:
        self._waiters.pop(delivery_id, None)

    def _final(self, delivery_id: int, outcome: Outcome) -> None:
        future = self._waiters.pop(delivery_id, None)
        if future is not None and not future.done():
            future.set_result(outcome)

    def _failed(self, destination: str, item: Queued, reason: str) -> None:
        events = self._failure_events
        if events is None:
            return
        task = asyncio.get_running_loop().create_task(
            events.announce(item.message_id, destination, reason, self.enqueue)
        )
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                await self.claim()
            except Exception as exc:  # the store may be briefly busy; try again next tick
                log.warning("claiming queued deliveries failed: %s", type(exc).__name__)

    async def stop(self) -> None:
        if self._announcing:  # events being queued are stored before the lanes stop
            await asyncio.gather(*self._announcing, return_exceptions=True)
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        await asyncio.gather(*(r.stop() for r in self.runners.values()))
