"""Appointment state at intake: one version at a time per appointment, judged against the store.

The rule it keeps: versions of one appointment are judged and committed one after the other
(`hold` is held from the store read until the ingest that records the version returned), so
each is compared with the version committed just before it and never with a stale read. Across
appointments nothing waits. The judgement (`judge`) reads the current version and the
appointments that share an actor over an overlapping time, asks `assess` what the version
means, and decides its disposition:

- a warning under a channel with `conflicts: reject` -> `rejected`: those channels fail with
  the reason (AE / 422, the kind of conflict in words; the other bookings' keys stay in the
  store); the version is history only;
- not applied (older than the current version) -> `stale`;
- same content as the current version -> `unchanged`;
- else `current`.

Within this process the lock makes the judgement current; against another process writing
the same store (`engine replay`), each current version carries the version it was judged
against and the store refuses it (`StaleJudgement`) if that moved on: callers judge again.

Double-booking checks see committed versions only: two clashing bookings arriving in the same
few milliseconds for different appointments may both pass (documented limit).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from engine.appointments.state import (
    CALLER_TEXT,
    INACTIVE_STATUSES,
    Assessment,
    Known,
    actors,
    appointment_key,
    assess,
    interval,
)
from engine.pipeline.channel import ChannelOutcome, CompiledChannel
from engine.pipeline.context import AppointmentContext, RunContext
from engine.pipeline.errors import APPLICATION_ERROR
from engine.runtime.processing import Decoded, run_channels
from engine.security.alerts import LOGGER, alert_extra
from engine.store.base import (
    AppointmentDisposition,
    AppointmentRow,
    AppointmentWarning,
    NewAppointmentVersion,
    Store,
)

alerts = logging.getLogger(LOGGER)

CONFLICT_STEP = "conflicts"
# How many times a version is judged again when another process (a replay from the CLI)
# committed a version of the same appointment between the judgement and the commit.
JUDGE_ATTEMPTS = 3
# Appointments a double-booking warning reads (and names): enough to say it clashes and with
# whom, and a bound on the work when a shared location holds hundreds at once.
CLASH_LIMIT = 10


@dataclass(frozen=True)
class Judged:
    """What intake does with one appointment version."""

    key: str
    context: AppointmentContext
    known: AppointmentRow | None
    refused: tuple[str, ...]  # channels under `conflicts: reject` that refuse it
    source_time: float | None
    body: bytes  # the canonical JSON of the version, as stored

    @property
    def assessment(self) -> Assessment:
        return self.context.assessment

    def reasons(self) -> list[str]:
        """What the sender is told about each conflict: kinds in words, no other bookings."""
        return list(dict.fromkeys(CALLER_TEXT[w.kind] for w in self.assessment.warnings))

    def refusal(self, channel: str) -> ChannelOutcome:
        """The error outcome of a channel that refuses the version as a conflict."""
        reasons = "; ".join(self.reasons())
        return ChannelOutcome(
            channel,
            "error",
            error=f"appointment conflict: {reasons}",
            error_step=CONFLICT_STEP,
            error_code=APPLICATION_ERROR,
        )

    def version(self, *, rejected: bool = False) -> NewAppointmentVersion:
        """The version to record; `rejected`: the sender was told it failed (a channel error
        under the `processed` policy), so it is history, not the appointment's state."""
        resource = self.context.resource
        span = interval(resource)
        return NewAppointmentVersion(
            key=self.key,
            resource=self.body,
            status=str(resource.get("status", "")),
            change=self.assessment.change,
            disposition="rejected" if rejected else self.context.disposition,
            source_time=self.source_time,
            start=span[0].timestamp() if span else None,
            end=span[1].timestamp() if span else None,
            actors=actors(resource),
            warnings=tuple(
                AppointmentWarning(w.kind, w.text, w.related) for w in self.assessment.warnings
            ),
            base_version=self.known.version if self.known is not None else 0,
        )

    def alert(self, message_id: int) -> None:
        """One alert line per flagged version: kinds and the message id, no identifiers."""
        if self.assessment.warnings and not self.refused:
            kinds = ", ".join(sorted({w.kind for w in self.assessment.warnings}))
            alerts.warning(
                "ALERT appointment conflict flagged: message %d: %s", message_id, kinds,
                extra=alert_extra("appointment_conflict", message_id=message_id,
                                  conflicts=kinds.split(", ")),
            )  # fmt: skip


def dump(resource: dict[str, Any]) -> bytes:
    return json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode()


def load(row: AppointmentRow) -> Known:
    return Known(row.key, row.version, json.loads(row.resource), row.source_time)


class AppointmentGate:
    """Per-appointment serialisation and judgement over one store."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str | None) -> AsyncIterator[None]:
        """Exclusive use of one appointment key (None: nothing to hold)."""
        if key is None:
            yield
            return
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]  # idle keys cost nothing
            else:
                self._locks[key] = (lock, users - 1)

    async def judge(
        self,
        resource: dict[str, Any],
        channels: list[CompiledChannel],
        *,
        source_time: float | None,
        expects_existing: bool,
    ) -> Judged:
        """Assess `resource` against the store; call inside `hold(key)`."""
        key = appointment_key(resource)
        row = await self._store.appointment(key)
        body = dump(resource)
        if row is not None and row.resource == body:
            # Byte for byte the current version (a resend, a replay): unchanged, whatever
            # its time, and nothing else to look up (the judgement `assess` would make).
            context = AppointmentContext(
                resource, resource, Assessment("unchanged", (), apply=True), "unchanged"
            )
            return Judged(key, context, row, (), source_time, body)
        known = load(row) if row is not None else None
        others: list[Known] = []
        span = interval(resource)
        held = actors(resource)
        if span is not None and held and resource.get("status") not in INACTIVE_STATUSES:
            rows = await self._store.overlapping(
                held,
                span[0].timestamp(),
                span[1].timestamp(),
                exclude_key=key,
                exclude_statuses=INACTIVE_STATUSES,
                limit=CLASH_LIMIT,
            )
            others = [load(r) for r in rows]
        assessment = assess(
            resource,
            known,
            source_time=source_time,
            overlapping=others,
            expects_existing=expects_existing,
        )
        refused = tuple(
            c.name for c in channels if c.config.conflicts == "reject" and assessment.warnings
        )
        disposition: AppointmentDisposition
        if refused:
            disposition = "rejected"
        elif not assessment.apply:
            disposition = "stale"
        elif assessment.change == "unchanged":
            disposition = "unchanged"
        else:
            disposition = "current"
        context = AppointmentContext(
            resource, known.resource if known else None, assessment, disposition
        )
        return Judged(key, context, row, refused, source_time, body)

    async def process(
        self,
        decoded: Decoded,
        channels: list[CompiledChannel],
        *,
        now: float,
        control_id: str,
        source_time: float | None = None,
        only: frozenset[str] | None = None,
    ) -> tuple[Judged | None, list[ChannelOutcome]]:
        """Judge the message's appointment (if it carries one) and run the channels with it;
        channels that refuse it as a conflict get their error outcome instead of a run. Call
        inside `hold(key_of(decoded))`. `source_time` stands in when the message gives none."""
        judged = None
        if decoded.appointment is not None:
            judged = await self.judge(
                decoded.appointment,
                channels,
                source_time=decoded.source_time if decoded.source_time is not None
                else source_time,
                expects_existing=decoded.expects_existing,
            )
        context = RunContext(now, control_id, judged.context if judged else None)
        refused = judged.refused if judged else ()
        ran = iter(run_channels(decoded, [c for c in channels if c.name not in refused],
                                only, context))
        outcomes = [
            judged.refusal(c.name) if judged and c.name in refused else next(ran)
            for c in channels
        ]
        return judged, outcomes


def key_of(decoded: Decoded) -> str | None:
    """The appointment key to hold while a message is processed (None: it carries none)."""
    return appointment_key(decoded.appointment) if decoded.appointment is not None else None
