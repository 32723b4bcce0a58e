"""All delivery lanes of the running engine, fed from intake and from the store.

At start every queued delivery left by a previous process (stopped or killed) is released
and claimed again, so it resumes in its original order; a delivery that was in flight when
the process died is sent again (at-least-once, never lost). While running, a poller claims
deliveries that another process queued (`engine retry`, `engine replay`). Intake hands new
deliveries over directly once their commit returned.

A configuration reload changes the destinations (`rebuild`, `install`, `settle`): a new one
gets its lanes; a changed one gets a new runner that holds what it is given until the old
runner has stopped (a send in flight gets its answer) and the destination's queued deliveries
are claimed again, so they go out in their order, none lost; a removed one keeps sending
until its queued deliveries are drained (sent or failed), then stops. A delivery queued for
it afterwards (a message that started on the old configuration) brings it back until drained.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

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


def same_destination(a: DestinationConfig, b: DestinationConfig) -> bool:
    """Whether a reload can keep the running destination: everything but where it was
    written (`pos`) is the same."""
    return dataclasses.replace(b, pos=a.pos) == a


@dataclass(frozen=True)
class Rebuild:
    """What a reload does to the destinations, built before anything is swapped (building a
    destination may fail: then nothing changes). `runners` are the new runners of the added
    and changed destinations; the changed ones are held until `settle`."""

    runners: dict[str, DestinationRunner]
    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    wanted: frozenset[str]


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
        self._factory = factory
        self._metrics = metrics
        self.runners: dict[str, DestinationRunner] = {d.name: self._runner(d) for d in destinations}
        # Removed by a reload: still sending (retiring) or stopped once drained (retired).
        self.retiring: set[str] = set()
        self._retired: dict[str, DestinationConfig] = {}
        self._poller: asyncio.Task[None] | None = None

    def _runner(self, config: DestinationConfig, held: bool = False) -> DestinationRunner:
        return DestinationRunner(
            config, self._factory(config), self._store, self._clock,
            self._metrics.destination(config.channel, config.name), self._final, self._failed,
            held=held,
        )  # fmt: skip

    def _lane_of(self, destination: str) -> DestinationRunner | None:
        runner = self.runners.get(destination)
        if runner is None and destination in self._retired:
            # Queued by a message that started before the reload removed its destination.
            runner = self.runners[destination] = self._runner(self._retired.pop(destination))
            self.retiring.add(destination)
        return runner

    # ------------------------------------------------------------------ reload

    def rebuild(self, destinations: Iterable[DestinationConfig]) -> Rebuild:
        """The runners a new configuration needs; raises what building a destination raises,
        with nothing changed."""
        wanted = {d.name: d for d in destinations}
        current = {name: r.config for name, r in self.runners.items()}
        added = tuple(n for n in wanted if n not in current)
        changed = tuple(
            n for n in wanted if n in current and not same_destination(current[n], wanted[n])
        )
        removed = tuple(n for n in current if n not in wanted and n not in self.retiring)
        runners = {n: self._runner(wanted[n], held=n in changed) for n in (*added, *changed)}
        return Rebuild(runners, added, changed, removed, frozenset(wanted))

    def install(
        self, rebuild: Rebuild, failure_events: SyncFailedEvents | None
    ) -> dict[str, DestinationRunner]:
        """Swap the runners in (synchronous: between two messages); returns the replaced
        runners, which `settle` stops."""
        replaced = {n: self.runners[n] for n in rebuild.changed}
        self.runners.update(rebuild.runners)
        self.retiring = (self.retiring | set(rebuild.removed)) - rebuild.wanted
        for name in rebuild.added:
            self._retired.pop(name, None)
        self._failure_events = failure_events
        return replaced

    async def settle(self, replaced: dict[str, DestinationRunner]) -> None:
        """Stop the replaced runners, then hand their destinations' queued deliveries to the
        new runners in order. The new runners resume whatever happens here."""
        names = list(replaced)
        try:
            await asyncio.gather(*(r.stop() for r in replaced.values()))
            if names:
                await self._store.release_claims(names)
                await self.claim(names)
        except Exception as exc:  # the rows stay queued: the next start resumes them
            log.error("reload: handing queued deliveries of %s to the new lanes failed: %s",
                      ", ".join(names), type(exc).__name__)  # fmt: skip
        finally:
            for name in names:
                self.runners[name].resume()

    async def _retire_drained(self) -> None:
        for name in sorted(self.retiring):
            runner = self.runners[name]
            if not runner.idle or await self._store.deliveries(name, "queued", limit=1):
                continue
            if name not in self.retiring or self.runners.get(name) is not runner or not runner.idle:
                continue  # added back by a reload, or given a delivery, meanwhile
            self.retiring.discard(name)
            del self.runners[name]
            self._retired[name] = runner.config
            await runner.stop()
            log.info("destination %s (removed by a reload) drained and stopped", name)

    async def start(self) -> None:
        released = await self._store.release_claims()
        resumed = await self.claim()
        if released:
            log.info("resumed %d queued deliveries", resumed)
        self._poller = asyncio.get_running_loop().create_task(self._poll(), name="claim-poller")

    async def claim(self, names: list[str] | None = None) -> int:
        """Take every claimable queued delivery of our destinations (or of `names`) into its
        lane, in order."""
        names = list(self.runners) if names is None else names
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
        runner = self._lane_of(row.destination)
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
            runner = self._lane_of(d.destination)
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
                if self.retiring:
                    await self._retire_drained()
            except Exception as exc:  # the store may be briefly busy; try again next tick
                log.warning("claiming queued deliveries failed: %s", type(exc).__name__)

    async def stop(self) -> None:
        if self._announcing:  # events being queued are stored before the lanes stop
            await asyncio.gather(*self._announcing, return_exceptions=True)
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        await asyncio.gather(*(r.stop() for r in self.runners.values()))
