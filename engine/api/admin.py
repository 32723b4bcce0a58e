"""The admin REST API: one handler per `api.*` route of engine.security.permissions.

The HTTP listener has already matched the route, authenticated the caller and checked its
role when a handler runs (engine.listeners.http); a handler parses the JSON body, does the
work against the running engine's store and configuration, records the audit event and
answers JSON.

Rules it keeps:
- What shows PHI (a search, a message, the failed queue, a replay) is audited before the
  answer is sent; when the audit cannot be written, nothing is shown (503).
- Searches take their filter in a POST body, never in the URL (a patient id is PHI).
- A body that is not what the endpoint expects is a 400 OperationOutcome naming the field;
  nothing quotes the body back.
- A replay takes at most `REPLAY_MAX` messages per request and one runs at a time (409 for
  a second): a bulk replay cannot flood a destination faster than one request's worth.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import typing
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from engine.api.bodies import (
    PAGE_MAX,
    BadRequest,
    ids_of,
    int_of,
    json_object,
    limit_of,
    message_filter,
    only,
    row_id,
    text_of,
    time_of,
)
from engine.api.console import console_handlers
from engine.api.openapi import document
from engine.api.stats import (
    STATS_BUCKETS_DEFAULT,
    STATS_BUCKETS_MAX,
    STATS_WINDOW_DEFAULT,
    STATS_WINDOW_MAX,
    activity_json,
)
from engine.fhir.rest import FhirAnswer, fail
from engine.listeners.http import json_response
from engine.listeners.http_auth import HttpAuth, actor
from engine.listeners.http_routes import Handler
from engine.runtime.health import live, ready
from engine.runtime.replay import Replayer, ReplayPlan
from engine.security.audit import ACTIONS, Action
from engine.security.identities import Identity
from engine.security.permissions import GRANTS
from engine.store.base import Resolution
from engine.store.views import detail_json, filter_query, message_json, search_entities

if TYPE_CHECKING:
    from engine.runtime.engine import Engine

log = logging.getLogger("engine.api")

REPLAY_MAX = 1000
RESOLUTIONS: tuple[Resolution, ...] = typing.get_args(Resolution)


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")


NO_STORE = {"Cache-Control": "no-store"}  # answers hold PHI: no cache keeps them


def answer(status: int, body: dict[str, Any] | None) -> web.Response:
    return json_response(status, body, NO_STORE, media="application/json")


def problem(result: FhirAnswer) -> web.Response:
    return answer(result.status, result.outcome)


class AdminApi:
    """The handlers of the admin routes, over one running engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.replaying = asyncio.Lock()  # one replay at a time

    def handlers(self, auth: HttpAuth) -> dict[str, Handler]:
        """The handlers of one listener (the admin API's and the console's), recording
        through its `auth` (whose audit records name that listener's caller and address)."""
        bound = _Bound(self, auth)
        return console_handlers() | {
            "api.openapi": bound.openapi,
            "api.me": bound.me,
            "api.stats": bound.stats,
            "api.channels": bound.channels,
            "api.listeners": bound.listeners,
            "api.messages.search": bound.search,
            "api.message": bound.message,
            "api.deliveries.failed": bound.failed,
            "api.deliveries.retry": bound.retry,
            "api.deliveries.discard": bound.discard,
            "api.replay": bound.replay,
            "api.conflicts.resolve": bound.resolve,
            "api.audit.search": bound.audit_search,
            "api.config.reload": bound.reload,
            "metrics": bound.metrics,
            "health.live": bound.live,
            "health.ready": bound.ready,
        }


class _Bound:
    def __init__(self, api: AdminApi, auth: HttpAuth) -> None:
        self.api = api
        self.engine = api.engine
        self.auth = auth

    async def _audit(
        self, request: web.Request, who: Identity | None, action: Action, what: str,
        outcome: int = 0, **entities: Any,
    ) -> web.Response | None:
        """Record; a 503 to answer instead when the record cannot be written."""
        try:
            await self.auth.record(request, who, action, what, outcome, **entities)
        except Exception as exc:
            log.error("admin API: audit failed: %s", type(exc).__name__)
            return problem(fail(503, "transient", "the action could not be audited"))
        return None

    # -- status ------------------------------------------------------------------------

    async def openapi(self, request: web.Request, _: Identity | None, __: str) -> web.Response:
        return answer(200, document(f"{request.scheme}://{request.host}"))

    async def me(self, request: web.Request, who: Identity | None, _: str) -> web.Response:
        """Who the caller is and what its role may do: the console shows only that."""
        assert who is not None
        may = sorted(GRANTS.get(who.role, frozenset()))
        return answer(200, {"name": who.name, "kind": who.kind, "role": who.role, "may": may})

    async def stats(self, request: web.Request, _: Identity | None, __: str) -> web.Response:
        """Counts per channel and destination over time buckets of a recent window (no PHI:
        names from the configuration and numbers)."""
        try:
            body = await json_object(request)
            only(body, {"window_minutes", "buckets"})
            minutes = int_of(body, "window_minutes", STATS_WINDOW_DEFAULT, 1, STATS_WINDOW_MAX)
            count = int_of(body, "buckets", STATS_BUCKETS_DEFAULT, 1, STATS_BUCKETS_MAX)
        except BadRequest as exc:
            return problem(fail(400, "invalid", str(exc)))
        until = self.engine.clock.now()
        since = until - minutes * 60
        bucket = minutes * 60 / count
        rows = await self.engine.store.activity(since, until, bucket)
        return answer(200, activity_json(self.engine.config, rows, since, bucket, count))

    async def channels(self, request: web.Request, _: Identity | None, __: str) -> web.Response:
        config = self.engine.config
        listeners_of: dict[str, list[str]] = {}
        for listener, names in config.routes.items():
            for name in names:
                listeners_of.setdefault(name, []).append(listener)
        body = [
            {
                "name": c.name,
                "listeners": listeners_of.get(c.name, []),
                "description": c.description,
                "accept": list(c.accept_types),
                "conflicts": c.conflicts,
                "destinations": [
                    {"name": d.name, "kind": d.kind} for d in c.destinations
                ],
            }
            for c in config.channels.values()
        ]
        return answer(200, {"channels": body})

    async def listeners(self, request: web.Request, _: Identity | None, __: str) -> web.Response:
        body = []
        for name, listener in self.engine.listeners.items():
            cfg = listener.config
            kind = "mllp" if cfg.mllp is not None else "http"
            settings = cfg.mllp or cfg.http
            assert settings is not None
            body.append({
                "name": name,
                "kind": kind,
                "host": settings.host,
                "port": settings.port,
                "tls": settings.tls is not None,
                "serve": list(cfg.http.serve) if cfg.http is not None else ["messages"],
                "stats": dataclasses.asdict(listener.stats),
            })
        return answer(200, {"listeners": body})

    async def metrics(self, request: web.Request, _: Identity | None, __: str) -> web.Response:
        body, content_type = self.engine.metrics.render()
        return web.Response(status=200, body=body, headers={
            **NO_STORE, "Content-Type": content_type, "Server": "engine"})

    async def live(self, request: web.Request, _: Identity | None, __: str) -> web.Response:
        ok, body = live()
        return answer(200 if ok else 503, body)

    async def ready(self, request: web.Request, _: Identity | None, __: str) -> web.Response:
        ok, body = await ready(self.engine)
        return answer(200 if ok else 503, body)

    # -- messages ----------------------------------------------------------------------

    async def search(self, request: web.Request, who: Identity | None, _: str) -> web.Response:
        try:
            body = await json_object(request)
            flt = message_filter(body)
        except BadRequest as exc:
            return problem(fail(400, "invalid", str(exc)))
        rows = await self.engine.store.search(flt)
        refused = await self._audit(request, who, "E", "POST api.messages.search",
                                    query=filter_query(flt), **search_entities(rows))
        if refused is not None:
            return refused
        more = len(rows) == flt.limit and rows
        return answer(200, {
            "messages": [message_json(r, iso) for r in rows],
            "next_before_id": rows[-1].id if more else None,
        })  # fmt: skip

    async def message(self, request: web.Request, who: Identity | None, id_: str) -> web.Response:
        message_id = row_id(id_)
        if message_id is None:
            return problem(fail(404, "not-found", "no such message"))
        detail = await self.engine.store.get(message_id)
        refused = await self._audit(
            request, who, "R", "GET api.message", 0 if detail else 4,
            message_ids=(message_id,),
            patient_ids=detail.message.keys.patient_ids if detail else (),
            appointment_ids=detail.message.keys.appointment_ids if detail else (),
        )  # fmt: skip
        if refused is not None:
            return refused
        if detail is None:
            return problem(fail(404, "not-found", "no such message"))
        return answer(200, detail_json(detail, iso))

    # -- the failed-sync queue ---------------------------------------------------------

    async def failed(self, request: web.Request, who: Identity | None, _: str) -> web.Response:
        destination = request.query.get("destination") or None
        found = await self.engine.store.deliveries(destination, "failed", PAGE_MAX)
        refused = await self._audit(
            request, who, "E", "GET api.deliveries.failed", count=len(found),
            message_ids=tuple(dict.fromkeys(d.message_id for d in found)),
            query={"destination": destination} if destination else None,
        )  # fmt: skip
        if refused is not None:
            return refused
        # Newest failure first; the payload stays on the message page (GET api.message).
        rows = sorted(found, key=lambda d: d.updated_at, reverse=True)
        return answer(200, {"deliveries": [
            {k: v for k, v in dataclasses.asdict(d).items() if k != "payload"}
            | {"failed_at": iso(d.updated_at)}
            for d in rows
        ]})  # fmt: skip

    async def retry(self, request: web.Request, who: Identity | None, _: str) -> web.Response:
        try:
            body = await json_object(request)
            only(body, {"delivery_ids", "destination"})
            ids = ids_of(body, "delivery_ids")
            destination = text_of(body, "destination")
            if bool(ids) == bool(destination):
                raise BadRequest("give delivery_ids or destination, one of them")
        except BadRequest as exc:
            return problem(fail(400, "invalid", str(exc)))
        store = self.engine.store
        count = await (store.requeue(ids) if ids else store.requeue_failed(str(destination)))
        selection = {"delivery_ids": ids} if ids else {"destination": destination}
        refused = await self._audit(request, who, "E", "POST api.deliveries.retry",
                                    0 if count else 4, query=selection, count=count)
        return refused or answer(200, {"requeued": count})

    async def discard(self, request: web.Request, who: Identity | None, _: str) -> web.Response:
        try:
            body = await json_object(request)
            only(body, {"delivery_ids"})
            ids = ids_of(body, "delivery_ids")
            if not ids:
                raise BadRequest("delivery_ids: expected a non-empty list of delivery ids")
        except BadRequest as exc:
            return problem(fail(400, "invalid", str(exc)))
        count = await self.engine.store.discard(ids)
        refused = await self._audit(request, who, "E", "POST api.deliveries.discard",
                                    0 if count else 4, query={"delivery_ids": ids}, count=count)
        return refused or answer(200, {"discarded": count})

    # -- flagged conflicts -------------------------------------------------------------

    async def resolve(self, request: web.Request, who: Identity | None, id_: str) -> web.Response:
        try:
            body = await json_object(request)
            only(body, {"outcome"})
            outcome = body.get("outcome")
            if outcome not in RESOLUTIONS:
                raise BadRequest(f"outcome: expected one of {', '.join(RESOLUTIONS)}")
        except BadRequest as exc:
            return problem(fail(400, "invalid", str(exc)))
        message_id = row_id(id_)
        result = "not_flagged" if message_id is None else await self.engine.store.resolve_conflict(
            message_id, who.subject if who is not None else "", outcome)
        refused = await self._audit(
            request, who, "U", "POST api.conflicts.resolve", 0 if result == "resolved" else 4,
            message_ids=(message_id,) if message_id is not None else (),
            query={"outcome": outcome})  # fmt: skip
        if refused is not None:
            return refused
        if result == "not_flagged":
            return problem(fail(404, "not-found", "no flagged conflict on this message"))
        if result == "already_resolved":
            return problem(fail(409, "conflict", "this conflict was already resolved"))
        return answer(200, {"message_id": message_id, "outcome": outcome})

    # -- replay ------------------------------------------------------------------------

    async def replay(self, request: web.Request, who: Identity | None, _: str) -> web.Response:
        try:
            body = await json_object(request)
            only(body, {"message_ids", "filter", "to", "dry_run"})
            ids = ids_of(body, "message_ids")
            to = _destinations(body)
            dry_run = body.get("dry_run", False)
            if not isinstance(dry_run, bool):
                raise BadRequest("dry_run: expected true or false")
            spec = body.get("filter")
            if bool(ids) == (spec is not None):
                raise BadRequest("give message_ids or filter, one of them")
            if spec is not None:
                if not isinstance(spec, dict) or not spec:
                    raise BadRequest("filter: expected an object with at least one field")
                flt = message_filter({**spec, "limit": REPLAY_MAX + 1})
        except BadRequest as exc:
            return problem(fail(400, "invalid", str(exc)))
        if self.api.replaying.locked():
            return problem(fail(409, "conflict", "a replay is running; try again when it ends"))
        async with self.api.replaying:
            if not ids:
                rows = await self.engine.store.search(flt)
                # A duplicate or a replay is a copy of an original the filter finds too.
                ids = sorted(r.id for r in rows if r.status != "duplicate" and not r.replay_of)
            if len(ids) > REPLAY_MAX:
                return problem(fail(400, "too-costly", f"at most {REPLAY_MAX} messages per "
                                    "replay: narrow the filter or send several requests"))
            engine = self.engine
            replayer = Replayer(engine.config, engine.channels, engine.store, engine.clock)
            try:
                plans = await replayer.replay(ids, to=to, dry_run=dry_run)
            except ValueError as exc:  # an unknown destination: the text names only config
                return problem(fail(400, "invalid", str(exc)))
        query = {"to": to, "dry_run": dry_run} | ({"filter": spec} if spec else {})
        refused = await self._audit(request, who, "E", "POST api.replay", message_ids=tuple(ids),
                                    query=query, count=len(plans))  # fmt: skip
        return refused or answer(200, {
            "dry_run": dry_run,
            "plans": [_plan_json(p) for p in plans],
            "deliveries": sum(len(p.sends) for p in plans),
        })  # fmt: skip

    # -- configuration -----------------------------------------------------------------

    async def reload(self, request: web.Request, who: Identity | None, _: str) -> web.Response:
        """Reload the configuration files (engine.runtime.reload), which records the audit
        event itself with this caller: 200 when swapped in, 422 with the problems as
        `engine check` prints them when refused (the running configuration stays)."""
        result = await self.engine.reload(actor(request, who), trigger="api")
        return answer(200 if result.accepted else 422, result.to_json())

    # -- audit -------------------------------------------------------------------------

    async def audit_search(
        self, request: web.Request, who: Identity | None, _: str
    ) -> web.Response:
        log_ = self.engine.security.audit_log
        if log_ is None:
            return problem(fail(503, "not-supported", "no audit trail is configured"))
        try:
            body = await json_object(request)
            only(body, {"patient", "user", "action", "since", "until", "limit"})
            action = text_of(body, "action")
            if action is not None and action not in ACTIONS:
                raise BadRequest(f"action: expected one of {', '.join(ACTIONS)}")
            filters = {
                "patient": text_of(body, "patient"), "who": text_of(body, "user"),
                "action": action, "since": time_of(body, "since"), "until": time_of(body, "until"),
                "limit": limit_of(body),
            }  # fmt: skip
        except BadRequest as exc:
            return problem(fail(400, "invalid", str(exc)))
        found = await log_.search(**filters)
        # Searching the trail is itself recorded (who looked at whose records).
        refused = await self._audit(request, who, "E", "POST api.audit.search",
                                    query={k: v for k, v in filters.items() if v is not None},
                                    count=len(found))  # fmt: skip
        return refused or answer(200, {"records": [
            r.body() | {"recorded_iso": iso(r.recorded), "hash": r.hash} for r in found]})


def _destinations(body: dict[str, Any]) -> list[str] | None:
    """A replay's `to`: one destination name or a list of them; None (absent): all."""
    value = body.get("to")
    names = [value] if isinstance(value, str) else value
    if names is None:
        return None
    if (not isinstance(names, list) or not names or len(names) > 100
            or not all(isinstance(n, str) and n for n in names)):
        raise BadRequest("to: expected a destination name or a list of 1 to 100 of them")
    return list(dict.fromkeys(names))


def _plan_json(plan: ReplayPlan) -> dict[str, Any]:
    return {
        "message_id": plan.original,
        "replay_id": plan.replay_id,
        "rejected": plan.rejection or None,
        "channels": [{"channel": o.channel, "status": o.status, "error": o.error or None}
                     for o in plan.outcomes],
        "sends": [{"channel": c, "destination": d, "lane": lane or None, "bytes": size}
                  for c, d, lane, size in plan.sends],
    }  # fmt: skip
