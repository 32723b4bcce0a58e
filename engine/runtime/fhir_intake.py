"""FHIR intake: a validated Appointment (create, update, or a Bundle of them) → channels → one
durable commit → the HTTP answer.

The promise is the MLLP intake's: the request, its channel results, its queued deliveries and
the appointment version it carries are committed together, and a 2xx is answered only after
that commit. What the answers mean:

- create (`POST Appointment`): 201 for an appointment the engine did not know; the engine
  keys appointments by identifier, so a POST of a known identifier is a new version of that
  appointment, answered 200 (a client resending after a lost answer changes nothing).
  `If-None-Exist: identifier=<system>|<value>` naming a known appointment: 200 with it,
  nothing stored or sent.
- update (`PUT Appointment/<id>`): 404 for an unknown id (no update-as-create: ids are the
  engine's); 422 when the body's identifier names another appointment; `If-Match` naming an
  older version: 412.
- a conflict refused by a channel under `conflicts: reject`: 422 business-rule; a channel
  error under the `processed` policy: 422 processing (stored with the error, like an AE).
- a transaction Bundle: every entry judged first, all committed in one transaction, or none
  (the first failing entry's status, its issues pointing into the Bundle); a batch: each entry
  on its own.
- the store failing: 503, nothing acknowledged.

Every refused request is stored too (status rejected, the answer's status as its ACK code),
so it can be seen and replayed; a conditional create that matched and a read store nothing.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import parse_qsl

from engine.config.model import EngineConfig, ListenerConfig
from engine.fhir.outcome import Invalid, Issue, operation_outcome
from engine.pipeline.channel import ChannelOutcome, CompiledChannel
from engine.runtime.appointments import CONFLICT_STEP, AppointmentGate, Judged, dump, key_of
from engine.runtime.clock import Clock
from engine.runtime.dispatcher import Dispatcher
from engine.runtime.intake import new_message, stored_result
from engine.runtime.processing import Decoded, Rejection, decode_fhir, new_deliveries, route
from engine.store.base import AppointmentRow, Ingest, Ingested, MessageStatus, Store

log = logging.getLogger("engine.intake")

_WEAK_ETAG = re.compile(r'^\s*(?:W/)?"([0-9]+)"\s*$')


@dataclass(frozen=True)
class FhirRequest:
    """One create or update, its resource already validated."""

    method: Literal["POST", "PUT"]
    resource: dict[str, Any]
    raw: bytes
    target: str | None = None  # PUT: the id in the URL
    if_match: str | None = None
    if_none_exist: str | None = None
    at: str = "Appointment"  # where issues point (Bundle.entry[2].resource in a Bundle)


@dataclass(frozen=True)
class FhirAnswer:
    status: int
    resource: dict[str, Any] | None = None  # the appointment as the engine holds it now
    outcome: dict[str, Any] | None = None  # an OperationOutcome (errors)
    id: str = ""
    version: int = 0
    last_modified: float | None = None

    @property
    def ok(self) -> bool:
        return self.status < 300


def fail(status: int, code: str, diagnostics: str, *expression: str) -> FhirAnswer:
    return FhirAnswer(status, outcome=operation_outcome([Issue("error", code, diagnostics,
                                                                expression)]))


@dataclass(frozen=True)
class _Prepared:
    request: FhirRequest
    decoded: Decoded
    judged: Judged
    outcomes: list[ChannelOutcome]
    ingest: Ingest


class FhirIntake:
    def __init__(
        self,
        config: EngineConfig,
        channels: dict[str, CompiledChannel],
        store: Store,
        dispatcher: Dispatcher,
        clock: Clock,
        gate: AppointmentGate,
        control_ids: Iterator[str],
    ) -> None:
        self.config = config
        self.channels = channels
        self._store = store
        self._dispatcher = dispatcher
        self._clock = clock
        self._gate = gate
        self._control_ids = control_ids

    def now(self) -> float:
        return self._clock.now()

    # ------------------------------------------------------------------ reads

    async def read(self, appointment_id: str) -> FhirAnswer:
        row = await self._store.appointment_by_id(appointment_id)
        if row is None:
            return fail(404, "not-found", "no Appointment with this id")
        return _answer(200, row)

    # ------------------------------------------------------------------ writes

    async def submit(self, listener: ListenerConfig, request: FhirRequest) -> FhirAnswer:
        """One create or update, committed on its own."""
        now = self._clock.now()
        decoded = decode_fhir(request.resource, request.raw, update=request.method == "PUT")
        key = key_of(decoded)
        try:
            async with self._gate.hold(key):
                prepared = await self._prepare(listener, request, decoded, now)
                if isinstance(prepared, FhirAnswer):
                    return await self._refused(listener, request.raw, decoded, prepared, now)
                ingested = await self._store.ingest(prepared.ingest)
        except Exception as exc:
            return _not_stored(listener, exc)
        return self._committed(prepared, ingested, now)

    async def transaction(
        self, listener: ListenerConfig, raw: bytes, requests: list[FhirRequest]
    ) -> list[FhirAnswer] | FhirAnswer:
        """All entries or none: the answers in entry order, or the one failure."""
        now = self._clock.now()
        decoded = [
            decode_fhir(r.resource, r.raw, update=r.method == "PUT") for r in requests
        ]
        keys = [key_of(d) for d in decoded]
        seen: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key is not None and key in seen:
                outcome = fail(400, "duplicate", "a transaction may change each appointment "
                               f"once; entry {seen[key]} names the same one",
                               f"Bundle.entry[{i}].resource.identifier")
                return await self._refused(listener, raw, _bundle(raw), outcome, now)
            if key is not None:
                seen[key] = i
        try:
            async with AsyncExitStack() as stack:
                for key in sorted(seen):  # one order for every holder: no deadlock
                    await stack.enter_async_context(self._gate.hold(key))
                prepared: list[_Prepared] = []
                for request, one in zip(requests, decoded, strict=True):
                    found = await self._prepare(listener, request, one, now)
                    if isinstance(found, FhirAnswer):
                        return await self._refused(listener, raw, _bundle(raw), found, now)
                    prepared.append(found)
                ingested = await self._store.ingest_all([p.ingest for p in prepared])
        except Exception as exc:
            return _not_stored(listener, exc)
        return [self._committed(p, i, now) for p, i in zip(prepared, ingested, strict=True)]

    async def reject(self, listener: ListenerConfig, raw: bytes, invalid: Invalid) -> FhirAnswer:
        """A body that failed validation: stored as rejected, answered with its issues."""
        answer = FhirAnswer(invalid.status, outcome=invalid.outcome())
        return await self._refused(listener, raw, _bundle(raw), answer, self._clock.now())

    # ------------------------------------------------------------------ steps

    async def _prepare(
        self, listener: ListenerConfig, request: FhirRequest, decoded: Decoded, now: float
    ) -> _Prepared | FhirAnswer:
        """Preconditions, judgement and channels for one request, held on its key."""
        at = request.at
        if decoded.appointment is None:
            return fail(422, "required", "an identifier with a value is required",
                        f"{at}.identifier")
        accepted = route(decoded, self.config.routes.get(listener.name, ()), self.channels)
        if isinstance(accepted, Rejection):
            return fail(422, "not-supported", accepted.text, at)
        if request.method == "PUT":
            refused = await self._check_update(request, decoded)
            if refused is not None:
                return refused
        elif request.if_none_exist is not None:
            token = _identifier_token(request.if_none_exist)
            if token is None:
                return fail(400, "invalid",
                            "If-None-Exist must be identifier=<system>|<value>")
            existing = await self._store.appointment(token)
            if existing is not None:
                return _answer(200, existing)
        judged, outcomes = await self._gate.process(
            decoded, accepted, now=now, control_id=next(self._control_ids), source_time=now
        )
        assert judged is not None  # decoded.appointment is set
        refusals = [o for o in outcomes if o.status == "error" and o.error_step == CONFLICT_STEP]
        if refusals:
            issues = [Issue("error", "business-rule", w.text, (at,))
                      for w in judged.assessment.warnings]
            return FhirAnswer(422, outcome=operation_outcome(issues))
        failed = [o for o in outcomes if o.status == "error"]
        code = "422" if failed and listener.ack != "commit" else (
            "201" if judged.known is None else "200")
        status: MessageStatus = "error" if failed else "processed"
        ingest = Ingest(
            new_message(listener.name, request.raw, decoded, now, status, code, b""),
            tuple(stored_result(o) for o in outcomes),
            new_deliveries(outcomes, now),
            appointment=judged.version(),
        )
        return _Prepared(request, decoded, judged, outcomes, ingest)

    async def _check_update(self, request: FhirRequest, decoded: Decoded) -> FhirAnswer | None:
        at = request.at
        body_id = request.resource.get("id")
        if body_id is not None and body_id != request.target:
            return fail(400, "invalid", "the resource id differs from the id in the URL",
                        f"{at}.id")
        target = await self._store.appointment_by_id(request.target or "")
        if target is None:
            return fail(404, "not-found", "no Appointment with this id (create it with POST)")
        if decoded.appointment is not None and key_of(decoded) != target.key:
            return fail(422, "business-rule", "the identifier names another appointment than "
                        "the one at this id", f"{at}.identifier")
        if request.if_match is not None:
            match = _WEAK_ETAG.match(request.if_match)
            if match is None or int(match.group(1)) != target.version:
                return fail(412, "conflict", "If-Match does not name the current version "
                            f"({target.version})")
        return None

    def _committed(self, prepared: _Prepared, ingested: Ingested, now: float) -> FhirAnswer:
        judged = prepared.judged
        judged.alert(ingested.message_id)
        self._dispatcher.enqueue(
            ingested.message_id, ingested.delivery_ids, prepared.ingest.deliveries
        )
        failed = [o for o in prepared.outcomes if o.status == "error"]
        code = prepared.ingest.message.ack_code
        if code == "422":
            issues = [Issue("error", "processing", f"channel {o.channel}: {o.error}",
                            (prepared.request.at,)) for o in failed]
            return FhirAnswer(422, outcome=operation_outcome(issues))
        if judged.context.disposition == "current":
            resource = judged.context.resource
            updated = now
        else:  # unchanged, or stale: the state the engine holds is the one before
            assert judged.known is not None
            resource = json.loads(judged.known.resource)
            updated = judged.known.updated_at
        return FhirAnswer(
            int(code),
            resource=resource,
            id=ingested.appointment_id or "",
            version=ingested.appointment_version or 0,
            last_modified=updated,
        )

    async def _refused(
        self,
        listener: ListenerConfig,
        raw: bytes,
        decoded: Decoded,
        answer: FhirAnswer,
        now: float,
    ) -> FhirAnswer:
        """Store a refused request (not a 200 that changed nothing) and return the answer."""
        if answer.ok:
            return answer
        outcome = answer.outcome or {}
        texts = [i.get("diagnostics", "") for i in outcome.get("issue", ())]
        try:
            await self._store.ingest(
                Ingest(
                    new_message(
                        listener.name,
                        raw,
                        decoded,
                        now,
                        "rejected",
                        str(answer.status),
                        dump(outcome),
                        error="; ".join(t for t in texts if t),
                    )
                )
            )
        except Exception as exc:
            return _not_stored(listener, exc)
        return answer


def _answer(status: int, row: AppointmentRow) -> FhirAnswer:
    return FhirAnswer(
        status,
        resource=json.loads(row.resource),
        id=row.id,
        version=row.version,
        last_modified=row.updated_at,
    )


def _bundle(raw: bytes) -> Decoded:
    """A request stored as refused: no keys (it may not even be JSON)."""
    return replace(
        decode_fhir({}, raw), content_type="application/fhir+json", appointment=None
    )


def _identifier_token(header: str) -> str | None:
    """`identifier=<system>|<value>` (URL-encoded or not) → "system|value"; else None."""
    pairs = parse_qsl(header.strip(), keep_blank_values=True)
    if len(pairs) != 1 or pairs[0][0] != "identifier":
        return None
    system, bar, value = pairs[0][1].partition("|")
    return f"{system}|{value}" if bar and value else None


def _not_stored(listener: ListenerConfig, exc: Exception) -> FhirAnswer:
    log.error("listener %s: store failed: %s", listener.name, type(exc).__name__)
    return fail(503, "transient", "the request was not stored; retry later")
