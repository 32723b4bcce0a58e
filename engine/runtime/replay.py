"""Replay: run stored messages through today's channels again and queue what comes out.

A replay is a new message row linked to its original (`replay_of`), with its own channel
results and deliveries, so the original's story is never rewritten. The appointment it
carries is judged again against today's state, like a message arriving now: a replay of the
current version is `unchanged` (conversions send the same state again, no event is raised),
a replay of an older one is `stale` (conversions send nothing, so a replay never undoes newer
state downstream). A FHIR request that named no time of its own keeps its original arrival
time as the time it speaks for. Its deliveries are
left for the running engine to claim (it picks them up within its poll interval, or at its
next start). `to` limits a replay to some destinations; a dry run computes the same plan and
writes nothing. Duplicates are never replayed (their original is the one to replay).
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from engine.config.model import EngineConfig
from engine.fhir.outcome import Invalid
from engine.fhir.validation import parse_appointment
from engine.pipeline.channel import ChannelOutcome, CompiledChannel
from engine.pipeline.documents import FHIR_JSON
from engine.runtime.appointments import JUDGE_ATTEMPTS, AppointmentGate, Judged, key_of
from engine.runtime.clock import Clock
from engine.runtime.intake import id_sequence, new_message, stored_result
from engine.runtime.processing import (
    Decoded,
    Rejection,
    decode,
    decode_fhir,
    new_deliveries,
    route,
)
from engine.store.base import Ingest, MessageDetail, MessageStatus, StaleJudgement, Store


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
        self._tz = zoneinfo.ZoneInfo(config.timezone)
        self._gate = AppointmentGate(store)
        self._control_ids = id_sequence("R", clock)

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
        to: str | Iterable[str] | None = None,
        dry_run: bool = False,
        progress: Callable[[ReplayPlan], None] | None = None,
    ) -> list[ReplayPlan]:
        """`to`: the destination (or destinations) to send to; None: every destination."""
        targets = None if to is None else frozenset([to] if isinstance(to, str) else to)
        for name in sorted(targets or ()):
            if not self._destination_channels(name):
                raise ValueError(f"no channel has a destination named '{name}'")
        if targets is not None and not targets:
            raise ValueError("no destination named to replay to")
        plans = []
        for message_id in message_ids:
            plan = await self._one(message_id, targets, dry_run)
            plans.append(plan)
            if progress is not None:
                progress(plan)
        return plans

    async def _one(self, message_id: int, to: frozenset[str] | None, dry_run: bool) -> ReplayPlan:
        plan = ReplayPlan(message_id)
        detail = await self._store.get(message_id)
        if detail is None:
            plan.rejection = "no such message"
            return plan
        if detail.message.status == "duplicate":
            plan.rejection = f"a duplicate of message {detail.message.duplicate_of}; not replayed"
            return plan
        decoded = self._decode(detail)
        for _ in range(JUDGE_ATTEMPTS):
            try:
                return await self._judged(plan, detail, decoded, to, dry_run)
            except StaleJudgement:  # the running engine moved the appointment on meanwhile
                plan.outcomes = []
        plan.rejection = "the appointment kept changing while it was replayed; try again"
        return plan

    async def _judged(
        self,
        plan: ReplayPlan,
        detail: MessageDetail,
        decoded: Decoded,
        to: frozenset[str] | None,
        dry_run: bool,
    ) -> ReplayPlan:
        async with self._gate.hold(key_of(decoded)):
            judged = await self._run(plan, detail, decoded, to)
            if dry_run:
                return plan
            now = self._clock.now()
            failed = any(o.status == "error" for o in plan.outcomes)
            status: MessageStatus = (
                "rejected" if plan.rejection else "error" if failed else "processed"
            )
            row = new_message(
                detail.message.listener, detail.raw, decoded, now, status, "", b"", plan.rejection
            )
            ingested = await self._store.ingest(
                Ingest(
                    replace(row, replay_of=detail.message.id),
                    tuple(stored_result(o) for o in plan.outcomes),
                    new_deliveries(plan.outcomes, now),
                    claimed=False,
                    appointment=judged.version() if judged else None,
                )
            )
        plan.replay_id = ingested.message_id
        return plan

    def _decode(self, detail: MessageDetail) -> Decoded:
        if detail.message.content_type != FHIR_JSON:
            return decode(detail.raw, self._tz)
        try:
            resource = parse_appointment(detail.raw, max_bytes=len(detail.raw))
        except Invalid as invalid:
            rejected = decode_fhir({}, detail.raw)
            text = str(invalid)
            return replace(rejected, appointment=None, rejection=Rejection(0, "", text))
        return decode_fhir(resource, detail.raw, sender=detail.message.keys.sender)

    async def _run(
        self, plan: ReplayPlan, detail: MessageDetail, decoded: Decoded,
        to: frozenset[str] | None,
    ) -> Judged | None:
        accepted: list[CompiledChannel] | Rejection
        if decoded.rejection is not None:
            accepted = decoded.rejection
        else:
            routes = self._config.routes.get(detail.message.listener, ())
            accepted = route(decoded, routes, self._channels)
        if isinstance(accepted, Rejection):
            plan.rejection = accepted.text
            return None
        if to is not None:
            wanted = set().union(*(self._destination_channels(name) for name in to))
            accepted = [c for c in accepted if c.name in wanted]
        judged, plan.outcomes = await self._gate.process(
            decoded,
            accepted,
            now=self._clock.now(),
            control_id=next(self._control_ids),
            source_time=detail.message.received_at,
            only=to,
        )
        return judged
