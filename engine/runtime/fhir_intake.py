"""FHIR intake: a validated Appointment (create, update, or a Bundle of them) → channels → one
durable commit → the HTTP answer.

The promise is the MLLP intake's: the request, its channel results, its queued deliveries and
the appointment version it carries are committed together, and a 2xx is answered only after
that commit. What the answers mean:

- create (`POST Appointment`): 201 for an appointment the engine did not know; the engine
  keys appointments by identifier, so a POST of a known identifier is a new version of that
  appointment, answered 200 (a client resending after a lost answer changes nothing).
  `If-None-Exist: identifier=<system>|<value>` naming a known appointment (by its booking
  identifier, or by any identifier of the posted resource that the stored one also has):
  200 with it, nothing stored or sent.
- update (`PUT Appointment/<id>`): 404 for an unknown id (no update-as-create: ids are the
  engine's); 422 when the body's identifier names another appointment; `If-Match` naming an
  older version: 412.
- a conflict refused under `conflicts: reject`: 422 business-rule, the kind of conflict in
  words; a channel error under the `processed` policy: 422 processing. Both are stored with
  the channels' results and the version as `rejected`; nothing is queued and the
  appointment's state does not change, since the client was told it failed.
- the time a request speaks for is its arrival: `meta.lastUpdated` belongs to the server, and
  a client's clock is no reason to call its update stale.
- a transaction Bundle: every entry judged first, all committed in one transaction, or none
  (the first refused entry's answer, its issues pointing into the Bundle); an entry whose
  conditional create matched is answered 200 and the others go on. A batch: each on its own.
- the store failing: 503, nothing acknowledged. A version judged while another process (a
  replay) moved the same appointment on is judged again (`StaleJudgement`).

Every refused request is stored too (status rejected or error, the answer's status as its
ACK code), so it can be seen and replayed; a conditional create that matched and a read
store nothing.
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
from engine.fhir.rest import FhirAnswer, fail
from engine.pipeline.channel import ChannelOutcome, CompiledChannel
from engine.runtime.appointments import JUDGE_ATTEMPTS, AppointmentGate, Judged, dump, key_of
from engine.runtime.clock import Clock
from engine.runtime.dispatcher import Dispatcher
from engine.runtime.intake import new_message, stored_result
from engine.runtime.metrics import Metrics
from engine.runtime.processing import Decoded, Rejection, decode_fhir, new_deliveries, route
from engine.store.base import AppointmentRow, Ingest, Ingested, StaleJudgement, Store

log = logging.getLogger("engine.intake")

# A listener's channel names and the compiled channels they name.
Routing = tuple[tuple[str, ...], dict[str, CompiledChannel]]
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
    # The caller may only cancel (engine.security.permissions.only_cancel): an update that
    # changes anything but the status, or sets another status, is refused with 403.
    only_cancel: bool = False


def _refused(status: int, code: str, diagnostics: str, *expression: str) -> _Refused:
    return _Refused(fail(status, code, diagnostics, *expression))


@dataclass(frozen=True)
class _Prepared:
    """A request ready to commit."""

    judged: Judged
    ingest: Ingest


@dataclass(frozen=True)
class _Matched:
    """A conditional create that found its appointment: answered, nothing stored."""

    answer: FhirAnswer


@dataclass(frozen=True)
class _Refused:
    """A refused request: the error to answer, and what to store for it (None: the request
    as a plain rejected record)."""

    answer: FhirAnswer
    ingest: Ingest | None = None


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
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.channels = channels
        self._store = store
        self._dispatcher = dispatcher
        self._clock = clock
        self._metrics = metrics
        self._gate = gate
        self._control_ids = control_ids

    def use(self, config: EngineConfig, channels: dict[str, CompiledChannel]) -> None:
        """A reloaded configuration, for the next request (as `Intake.use`)."""
        self.config, self.channels = config, channels

    def now(self) -> float:
        return self._clock.now()

    # ------------------------------------------------------------------ reads

    async def read(self, appointment_id: str) -> FhirAnswer:
        row = await self._store.appointment_by_id(appointment_id)
        if row is None:
            return fail(404, "not-found", "no Appointment with this id")
        return _answer(200, row)

    # ------------------------------------------------------------------ writes

    def _routing(self, listener: ListenerConfig) -> Routing:
        """The listener's routes and the channels of the configuration running now."""
        return self.config.routes.get(listener.name, ()), self.channels

    async def submit(self, listener: ListenerConfig, request: FhirRequest) -> FhirAnswer:
        """One create or update, committed on its own."""
        now = self._clock.now()
        routing = self._routing(listener)
        decoded = decode_fhir(request.resource, request.raw, update=request.method == "PUT")
        for attempt in range(1, JUDGE_ATTEMPTS + 1):
            try:
                async with self._gate.hold(key_of(decoded)):
                    found = await self._prepare(listener, request, decoded, now, routing)
                    if isinstance(found, _Matched):
                        return found.answer
                    if isinstance(found, _Refused):
                        return await self._store_refusal(listener, request.raw, found, now)
                    ingested = await self._store.ingest(found.ingest)
                break
            except StaleJudgement as exc:  # another process moved the appointment on
                if attempt == JUDGE_ATTEMPTS:
                    return _not_stored(listener, exc)
            except Exception as exc:
                return _not_stored(listener, exc)
        assert isinstance(found, _Prepared)  # every other outcome returned above
        return self._committed(found, ingested)  # after the commit: errors are not "not stored"

    async def transaction(
        self, listener: ListenerConfig, raw: bytes, requests: list[FhirRequest]
    ) -> list[FhirAnswer] | FhirAnswer:
        """All entries or none: the answers in entry order, or the one failure."""
        now = self._clock.now()
        routing = self._routing(listener)
        decoded = [decode_fhir(r.resource, r.raw, update=r.method == "PUT") for r in requests]
        seen: dict[str, int] = {}
        for i, key in enumerate(key_of(d) for d in decoded):
            if key is not None and key in seen:
                duplicate = _refused(400, "duplicate", "a transaction may change each "
                                     f"appointment once; entry {seen[key]} names the same one",
                                     f"{requests[i].at}.identifier")
                return await self._store_refusal(listener, raw, duplicate, now)
            if key is not None:
                seen[key] = i
        for attempt in range(1, JUDGE_ATTEMPTS + 1):
            try:
                async with AsyncExitStack() as stack:
                    for key in sorted(seen):  # one order for every holder: no deadlock
                        await stack.enter_async_context(self._gate.hold(key))
                    found = [await self._prepare(listener, r, d, now, routing)
                             for r, d in zip(requests, decoded, strict=True)]
                    for one in found:
                        if isinstance(one, _Refused):  # the whole Bundle fails with it
                            return await self._store_refusal(
                                listener, raw, _Refused(one.answer), now)
                    ready = [one for one in found if isinstance(one, _Prepared)]
                    ingested = await self._store.ingest_all([p.ingest for p in ready])
                break
            except StaleJudgement as exc:
                if attempt == JUDGE_ATTEMPTS:
                    return _not_stored(listener, exc)
            except Exception as exc:
                return _not_stored(listener, exc)
        committed = iter(ingested)
        return [
            one.answer if isinstance(one, _Matched) else self._committed(one, next(committed))
            for one in found
            if isinstance(one, _Matched | _Prepared)
        ]

    async def reject(self, listener: ListenerConfig, raw: bytes, invalid: Invalid) -> FhirAnswer:
        """A body that failed validation: stored as rejected, answered with its issues."""
        refusal = _Refused(FhirAnswer(invalid.status, outcome=invalid.outcome()))
        return await self._store_refusal(listener, raw, refusal, self._clock.now())

    # ------------------------------------------------------------------ steps

    async def _prepare(
        self,
        listener: ListenerConfig,
        request: FhirRequest,
        decoded: Decoded,
        now: float,
        routing: Routing,
    ) -> _Prepared | _Matched | _Refused:
        """Preconditions, judgement and channels for one request, held on its key. `routing`
        was taken when the request arrived: a reload meanwhile changes nothing for it."""
        at = request.at
        if decoded.appointment is None:
            return _refused(422, "required", "an identifier with a value is required",
                            f"{at}.identifier")
        accepted = route(decoded, *routing)
        if isinstance(accepted, Rejection):
            return _refused(422, "not-supported", accepted.text, at)
        if request.method == "PUT":
            refused = await self._check_update(request, decoded)
            if refused is not None:
                return refused
        elif request.if_none_exist is not None:
            found = await self._existing(request, decoded)
            if found is not None:
                return found
        judged, outcomes = await self._gate.process(
            decoded, accepted, now=now, control_id=next(self._control_ids), source_time=now
        )
        assert judged is not None  # decoded.appointment is set
        failed = [o for o in outcomes if o.status == "error"]
        if judged.refused:
            issues = [Issue("error", "business-rule", text, (at,)) for text in judged.reasons()]
            return self._refusal(listener, request, decoded, now, judged, outcomes, issues)
        if failed and listener.ack != "commit":
            # Like an AE: stored with the channels' errors, nothing sent, not the state.
            issues = [Issue("error", "processing", f"channel {o.channel}: {o.error}", (at,))
                      for o in failed]
            return self._refusal(listener, request, decoded, now, judged, outcomes, issues)
        code = "201" if judged.known is None else "200"
        ingest = Ingest(
            new_message(listener.name, request.raw, decoded, now,
                        "error" if failed else "processed", code, b""),
            tuple(stored_result(o) for o in outcomes),
            new_deliveries(outcomes, now),
            appointment=judged.version(),
        )
        return _Prepared(judged, ingest)

    def _refusal(
        self,
        listener: ListenerConfig,
        request: FhirRequest,
        decoded: Decoded,
        now: float,
        judged: Judged,
        outcomes: list[ChannelOutcome],
        issues: list[Issue],
    ) -> _Refused:
        """A 422 after the channels ran: the request, the channels' results and the refused
        version are stored (so `engine show` tells why), nothing is queued."""
        outcome = operation_outcome(issues)
        row = new_message(listener.name, request.raw, decoded, now, "error", "422", dump(outcome),
                          error="; ".join(i.diagnostics for i in issues))
        ingest = Ingest(row, tuple(stored_result(o) for o in outcomes),
                        appointment=judged.version(rejected=True))
        return _Refused(FhirAnswer(422, outcome=outcome), ingest)

    async def _existing(self, request: FhirRequest, decoded: Decoded) -> _Matched | _Refused | None:
        """`If-None-Exist: identifier=<system>|<value>`: the appointment it names, if known.
        It names one by its booking identifier, or by any identifier the posted resource
        carries (then it is the posted appointment, if the engine holds it with that
        identifier). Keys are unique, so one matches at most."""
        token = _identifier_token(request.if_none_exist or "")
        if token is None:
            return _refused(400, "invalid", "If-None-Exist must be identifier=<system>|<value>",
                            request.at)
        keys = [token]
        if token in _tokens(request.resource):
            keys.insert(0, key_of(decoded) or token)
        for key in dict.fromkeys(keys):
            row = await self._store.appointment(key)
            if row is not None and token in _tokens(json.loads(row.resource)):
                return _Matched(_answer(200, row))
        return None

    async def _check_update(self, request: FhirRequest, decoded: Decoded) -> _Refused | None:
        at = request.at
        body_id = request.resource.get("id")
        if body_id is not None and body_id != request.target:
            return _refused(400, "invalid", "the resource id differs from the id in the URL",
                            f"{at}.id")
        target = await self._store.appointment_by_id(request.target or "")
        if target is None:
            return _refused(404, "not-found", "no Appointment with this id (create it with POST)",
                            at)
        if key_of(decoded) != target.key:
            return _refused(422, "business-rule", "the identifier names another appointment "
                            "than the one at this id", f"{at}.identifier")
        if request.if_match is not None:
            match = _WEAK_ETAG.match(request.if_match)
            if match is None or int(match.group(1)) != target.version:
                return _refused(412, "conflict", "If-Match does not name the current version "
                                f"({target.version})", at)
        if request.only_cancel and not _only_cancels(request.resource, target.resource):
            # Checked here, under the appointment's hold, against the version it replaces.
            return _refused(403, "forbidden", "this role may only cancel an appointment: "
                            "set status to cancelled and change nothing else", at)
        return None

    def _committed(self, prepared: _Prepared, ingested: Ingested) -> FhirAnswer:
        self._metrics.processed(prepared.ingest.results)
        judged = prepared.judged
        judged.alert(ingested.message_id)
        self._dispatcher.enqueue(
            ingested.message_id, ingested.delivery_ids, prepared.ingest.deliveries
        )
        if judged.context.disposition == "current":
            resource = judged.context.resource
            updated = prepared.ingest.message.received_at
        else:  # unchanged, or stale: the state the engine holds is the one before
            assert judged.known is not None
            resource = json.loads(judged.known.resource)
            updated = judged.known.updated_at
        return FhirAnswer(
            int(prepared.ingest.message.ack_code),
            resource=resource,
            id=ingested.appointment_id or "",
            version=ingested.appointment_version or 0,
            last_modified=updated,
        )

    async def _store_refusal(
        self, listener: ListenerConfig, raw: bytes, refusal: _Refused, now: float
    ) -> FhirAnswer:
        """Store a refused request and return its answer; a store failure is a 503."""
        answer = refusal.answer
        ingest = refusal.ingest
        if ingest is None:
            outcome = answer.outcome or {}
            texts = [i.get("diagnostics", "") for i in outcome.get("issue", ())]
            row = new_message(listener.name, raw, _unkeyed(raw), now, "rejected",
                              str(answer.status), dump(outcome),
                              error="; ".join(t for t in texts if t))
            ingest = Ingest(row)
        try:
            await self._store.ingest(ingest)
        except Exception as exc:
            return _not_stored(listener, exc)
        self._metrics.processed(ingest.results)
        return answer


def _answer(status: int, row: AppointmentRow) -> FhirAnswer:
    return FhirAnswer(
        status,
        resource=json.loads(row.resource),
        id=row.id,
        version=row.version,
        last_modified=row.updated_at,
    )


_SERVER_OWNED = ("id", "meta", "text")


def _only_cancels(resource: dict[str, Any], stored: bytes) -> bool:
    """True when `resource` is the stored version with its status set to cancelled."""
    before = {k: v for k, v in json.loads(stored).items() if k not in _SERVER_OWNED}
    after = {k: v for k, v in resource.items() if k not in _SERVER_OWNED}
    return after.get("status") == "cancelled" and {**before, "status": "cancelled"} == after


def _unkeyed(raw: bytes) -> Decoded:
    """A refused request as stored: no keys (it may not even be JSON)."""
    return replace(decode_fhir({}, raw), appointment=None)


def _tokens(resource: dict[str, Any]) -> set[str]:
    """"system|value" of every identifier of an Appointment."""
    identifiers = resource.get("identifier")
    return {
        f"{i.get('system') or ''}|{i['value']}"
        for i in (identifiers if isinstance(identifiers, list) else ())
        if isinstance(i, dict) and isinstance(i.get("value"), str)
    }


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
