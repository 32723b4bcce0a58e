"""Replay: run stored messages through today's channels again and queue what comes out.

A replay is a new message row linked to its original (`replay_of`), with its own channel
results and deliveries, so the original's story is never rewritten. Its deliveries are
left for the running engine to claim (it picks them up within its poll interval, or at its
next start). `to` limits a replay to one destination; a dry run computes the same plan and
writes nothing. Duplicates are never replayed (their original is the one to replay).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from engine.config.model import EngineConfig
from engine.pipeline.channel import ChannelOutcome, CompiledChannel
from engine.runtime.clock import Clock
from engine.runtime.intake import CONTENT_TYPE, stored_result
from engine.runtime.processing import Rejection, decode, new_deliveries, route, run_channels
from engine.store.base import (
    Ingest,
    MessageKeys,
    MessageStatus,
    NewMessage,
    Store,
)


@dataclass
class ReplayPlan:
    original: int
    outcomes: list[ChannelOutcome] = field(default_factory=list)
    rejection: str = ""
    replay_id: int | None = None  # set once stored (not in a dry run)

    @property
    def sends(self) -> list[tuple[str, str, str, int]]:
        """(channel, destination, lane, payload size) for every delivery it queues."""
        return [
            (o.channel, p.destination.name, p.lane, len(p.data))
            for o in self.outcomes
            for p in o.payloads
        ]


class Replayer:
    def __init__(
        self,
        config: EngineConfig,
        channels: dict[str, CompiledChannel],
        store: Store,
        clock: Clock,
    ) -> None:
        self._config = config
        self._channels = channels
        self._store = store
        self._clock = clock

    def _destination_channels(self, destination: str) -> set[str]:
        return {
            c.name
            for c in self._config.channels.values()
            if any(d.name == destination for d in c.destinations)
        }

    async def replay(
        self,
        message_ids: list[int],
        *,
        to: str | None = None,
        dry_run: bool = False,
        progress: Callable[[ReplayPlan], None] | None = None,
    ) -> list[ReplayPlan]:
        if to is not None and not self._destination_channels(to):
            raise ValueError(f"no channel has a destination named '{to}'")
        plans = []
        for message_id in message_ids:
            plan = await self._one(message_id, to, dry_run)
            plans.append(plan)
            if progress is not None:
                progress(plan)
        return plans

    async def _one(self, message_id: int, to: str | None, dry_run: bool) -> ReplayPlan:
        plan = ReplayPlan(message_id)
        detail = await self._store.get(message_id)
        if detail is None:
            plan.rejection = "no such message"
            return plan
        if detail.message.status == "duplicate":
            plan.rejection = f"a duplicate of message {detail.message.duplicate_of}; not replayed"
            return plan
        listener = detail.message.listener
        decoded = decode(detail.raw)
        accepted: list[CompiledChannel] | Rejection
        if decoded.rejection is not None:
            accepted = decoded.rejection
        else:
            accepted = route(decoded, self._config.routes.get(listener, ()), self._channels)
        if isinstance(accepted, Rejection):
            plan.rejection = accepted.text
        else:
            if to is not None:
                wanted = self._destination_channels(to)
                accepted = [c for c in accepted if c.name in wanted]
            plan.outcomes = run_channels(decoded, accepted, only=to)
        if dry_run:
            return plan
        now = self._clock.now()
        failed = any(o.status == "error" for o in plan.outcomes)
        status: MessageStatus = (
            "rejected" if plan.rejection else "error" if failed else "processed"
        )
        deliveries = new_deliveries(plan.outcomes, now)
        ingested = await self._store.ingest(
            Ingest(
                NewMessage(
                    received_at=now,
                    listener=listener,
                    content_type=detail.message.content_type or CONTENT_TYPE,
                    charset=decoded.codec,
                    raw=detail.raw,
                    keys=decoded.keys if decoded.header is not None else MessageKeys(),
                    status=status,
                    ack_code="",
                    ack=b"",
                    error=plan.rejection,
                    replay_of=message_id,
                ),
                tuple(stored_result(o) for o in plan.outcomes),
                deliveries,
                claimed=False,
            )
        )
        plan.replay_id = ingested.message_id
        return plan
