"""The OpenAPI 3.1 document of the admin API, served at GET /api/openapi.json.

Rule kept: the document describes exactly the `admin` routes of the permission table
(engine.security.permissions.HTTP_ROUTES): each has an entry in `OPERATIONS`, checked at
import, so a route cannot exist undocumented nor a documented path go unserved. The roles
that may call each operation are written into its description from the same table.
"""

from __future__ import annotations

import functools
import typing
from typing import Any

from engine import __version__
from engine.api.bodies import MAX_IDS, MAX_ROW_ID, PAGE_DEFAULT, PAGE_MAX, filter_fields
from engine.api.stats import (
    STATS_BUCKETS_DEFAULT,
    STATS_BUCKETS_MAX,
    STATS_WINDOW_DEFAULT,
    STATS_WINDOW_MAX,
)
from engine.security.audit import ACTIONS
from engine.security.permissions import GRANTS, HTTP_ROUTES, Permission, Route
from engine.store.base import Resolution

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}
_ID: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": MAX_ROW_ID}
_IDS: dict[str, Any] = {"type": "array", "items": _ID, "maxItems": MAX_IDS}
_TIME: dict[str, Any] = {
    "oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}],
    "description": "epoch seconds, or an ISO 8601 time with its offset",
}


def _filter_schema() -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for name, kind in filter_fields().items():
        if name in ("since", "until"):
            properties[name] = _TIME
        elif name == "before_id":
            properties[name] = _ID
        elif name == "limit":
            properties[name] = {"type": "integer", "minimum": 1, "maximum": PAGE_MAX,
                                "default": PAGE_DEFAULT}  # fmt: skip
        elif typing.get_origin(kind) is typing.Literal:
            properties[name] = {"enum": list(typing.get_args(kind))}
        else:
            properties[name] = {"type": _JSON_TYPES.get(kind, "string")}
    return {"type": "object", "additionalProperties": False, "properties": properties}


def _object(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties}


_ANY_OBJECT: dict[str, Any] = {"type": "object"}

# route name -> (summary, request body schema or None, answer schema)
OPERATIONS: dict[str, tuple[str, dict[str, Any] | None, dict[str, Any]]] = {
    "api.openapi": ("This document", None, _ANY_OBJECT),
    "api.me": ("The caller: name, role and the permissions the role holds", None,
               _object(name={"type": "string"}, kind={"type": "string"},
                       role={"type": "string"},
                       may={"type": "array", "items": {"enum": [p.value for p in Permission]}})),
    "api.stats": (
        "Per channel (received, filtered, errors) and destination (queued, sent, failed, mean "
        "delivery latency in ms) counts of the messages received in each time bucket of the "
        "last window_minutes",
        _object(window_minutes={"type": "integer", "minimum": 1, "maximum": STATS_WINDOW_MAX,
                                "default": STATS_WINDOW_DEFAULT},
                buckets={"type": "integer", "minimum": 1, "maximum": STATS_BUCKETS_MAX,
                         "default": STATS_BUCKETS_DEFAULT}),
        _ANY_OBJECT),
    "api.channels": ("Channels: their listeners, accepted types and destinations", None,
                     _ANY_OBJECT),
    "api.listeners": ("Listeners: address, TLS, what they serve, their counters", None,
                      _ANY_OBJECT),
    "api.messages.search": (
        "Search stored messages, newest first; page with before_id = next_before_id",
        _filter_schema(), _ANY_OBJECT),
    "api.message": ("One message: raw, ACK, channel outputs, deliveries with their attempts "
                    "and responses, replays, appointment version", None, _ANY_OBJECT),
    "api.deliveries.failed": ("The failed-sync queue: failed deliveries, newest failure first, "
                              "with their last code and error", None, _ANY_OBJECT),
    "api.deliveries.retry": (
        "Requeue failed deliveries (by id, or every failed one of a destination)",
        _object(delivery_ids=_IDS, destination={"type": "string", "minLength": 1}),
        _object(requeued={"type": "integer"})),
    "api.deliveries.discard": ("Give up on failed deliveries", _object(delivery_ids=_IDS),
                               _object(discarded={"type": "integer"})),
    "api.replay": (
        "Replay messages through today's channels (by id, or a filter); dry_run plans only",
        _object(message_ids=_IDS, filter=_filter_schema(), to={"oneOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "minItems": 1, "maxItems": 100,
                     "items": {"type": "string", "minLength": 1}}]},
                dry_run={"type": "boolean"}),
        _ANY_OBJECT),
    "api.config.reload": (
        "Reload the configuration files; refused (422) with file:line:column problems, the "
        "running configuration kept", None,
        _object(accepted={"type": "boolean"}, outcome={"type": "integer"},
                summary={"type": "string"},
                problems={"type": "array", "items": {"type": "string"}})),
    "metrics": ("Prometheus metrics (text exposition 0.0.4): counters and histograms by "
                "listener, channel and destination name", None, {"type": "string"}),
    "health.live": ("The process answers", None, _object(status={"type": "string"})),
    "health.ready": ("Ready: the store takes a write and every listener is bound (503 "
                     "otherwise, naming the failed check)", None, _ANY_OBJECT),
    "api.conflicts.resolve": (
        "Resolve a flagged appointment conflict (once): accepted, corrected or dismissed; "
        "open ones are a search with flagged: true, resolved: false",
        _object(outcome={"enum": list(typing.get_args(Resolution))}),
        _object(message_id={"type": "integer"}, outcome={"type": "string"})),
    "api.audit.search": (
        "Search the audit trail, newest first",
        _object(patient={"type": "string"}, user={"type": "string"},
                action={"enum": list(ACTIONS)}, since=_TIME, until=_TIME,
                limit={"type": "integer", "minimum": 1, "maximum": PAGE_MAX}),
        _ANY_OBJECT),
}  # fmt: skip

ADMIN_ROUTES: tuple[Route, ...] = tuple(r for r in HTTP_ROUTES if r.service == "admin")
assert {r.name for r in ADMIN_ROUTES} == set(OPERATIONS), "every admin route is documented"

_ERRORS = {
    "400": "the body is not what the operation takes (an OperationOutcome names the field)",
    "401": "no valid credential",
    "403": "the caller's role may not do this",
    "404": "no such thing",
    "409": "a replay is already running",
    "422": "a reload refused: the body lists the problems",
    "429": "over the listener's rate limit",
    "503": "the action could not be audited, so it was not done (for /health/ready: not "
           "ready)",
}


def _roles(route: Route) -> str:
    if route.public:
        return "Anyone (no credential)."
    roles = [role for role, held in GRANTS.items() if any(p in held for p in route.needs)]
    return "Roles: " + ", ".join(roles) + "."


def _operation(route: Route) -> dict[str, Any]:
    summary, request, response = OPERATIONS[route.name]
    operation: dict[str, Any] = {
        "operationId": route.name,
        "summary": summary,
        "description": _roles(route),
        "responses": {
            "200": {"description": "OK", "content": {
                "text/plain" if route.name == "metrics" else "application/json":
                {"schema": response}}},
            **{code: {"description": text} for code, text in _ERRORS.items()},
        },
    }  # fmt: skip
    if "{id}" in route.path:  # a message id on every route that has one
        operation["parameters"] = [{"name": "id", "in": "path", "required": True,
                                    "schema": _ID}]  # fmt: skip
    if route.name == "api.deliveries.failed":
        operation["parameters"] = [{"name": "destination", "in": "query", "required": False,
                                    "schema": {"type": "string"}}]  # fmt: skip
    if request is not None:
        operation["requestBody"] = {"required": True,
                                    "content": {"application/json": {"schema": request}}}
    if not route.public:
        operation["security"] = [{"bearer": []}, {"session": []}]
    return operation


@functools.cache  # the routes are fixed: built once, not on every (public) request
def _paths() -> dict[str, dict[str, Any]]:
    paths: dict[str, dict[str, Any]] = {}
    for route in ADMIN_ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return paths


def document(server: str) -> dict[str, Any]:
    """The document; only its `servers` entry depends on the request."""
    paths = _paths()
    return {
        "openapi": "3.1.0",
        "info": {"title": "engine admin API", "version": __version__},
        "servers": [{"url": server}],
        "paths": paths,
        "components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "an API key (ek...) or an access token from /auth/token"},
            "session": {"type": "apiKey", "in": "cookie", "name": "engine_session",
                        "description": "from POST /auth/login; changes need X-CSRF-Token"},
        }},
    }  # fmt: skip
