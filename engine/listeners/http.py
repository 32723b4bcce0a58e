"""The HTTP listener: FHIR REST for Appointments on aiohttp, feeding `FhirIntake`.

Served under the listener's base path (`/fhir` by default):

- `GET  [base]/metadata`            the CapabilityStatement (engine.fhir.capability)
- `POST [base]/Appointment`         create (`If-None-Exist` for a conditional create)
- `PUT  [base]/Appointment/{id}`    update (`If-Match` for a version-aware one)
- `GET  [base]/Appointment/{id}`    the latest version the engine holds
- `POST [base]`                     a `batch` or `transaction` Bundle of the two writes

At most `max_connections` connections are open at once: one past the limit is closed as it is
accepted, before TLS and before a byte is read (engine.listeners.http_gate).

Rules it keeps: a 2xx only after the durable commit (intake's); every error is an
OperationOutcome, never an HTML page or a stack trace; a body over `max_body_bytes` is
refused with 413 while it streams in, before it is held in memory whole; nothing logged or
returned quotes the body; the access log is off (URLs carry ids). `Prefer: return=minimal`
and `return=OperationOutcome` are honoured on success.

With `tls:` it serves HTTPS (engine.security.tls). A client certificate not on the listener's
`allow` list gets a 403 OperationOutcome (`forbidden`) for every request on that connection:
an HTTP client sees why, which a closed connection would not tell it; the log line names the
certificate's fingerprint only.

With `rate_limit:` (off by default) every request to the listener is charged to its peer
address and, over mutual TLS, to its client certificate (engine.security.ratelimit); one
over the limit gets 429 with `Retry-After` (whole seconds) and an OperationOutcome
(`throttled`) before its body is read. The peer address is the socket's: `X-Forwarded-For`
and the like are not trusted, as any client can write them; behind a proxy, limit there.
Refusals are counted in `stats.throttled` and logged once per key and period, naming the
network and a per-run tag of the address, not the address (an IP address identifies a
person as much as a machine on a public booking endpoint).
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from engine.config.model import ListenerConfig
from engine.fhir.capability import capability_statement
from engine.fhir.outcome import Invalid, Issue, operation_outcome
from engine.fhir.rest import FhirAnswer, answer_headers, fail, presented
from engine.fhir.validation import parse_appointment
from engine.listeners.fhir_bundles import handle_bundle
from engine.listeners.http_auth import HttpAuth
from engine.listeners.http_gate import Door
from engine.listeners.http_routes import Handler, RouteTable
from engine.runtime.fhir_intake import FhirIntake, FhirRequest
from engine.runtime.metrics import ListenerMetrics
from engine.security.identities import Identity
from engine.security.permissions import allowed, only_cancel, served_routes
from engine.security.ratelimit import RequestLimits, Throttled
from engine.security.tls import AllowList, fingerprint, peer_refusal, server_context

if TYPE_CHECKING:
    from engine.api.admin import AdminApi

log = logging.getLogger("engine.listener")

FHIR_JSON = "application/fhir+json"
_JSON_TYPES = frozenset({FHIR_JSON, "application/json"})
# What is kept of an oversized body, as the MLLP listener keeps an oversized frame's head.
HEAD_BYTES = 64 * 1024
_CHUNK = 64 * 1024


def json_response(
    status: int, body: dict[str, Any] | None, headers: dict[str, str], media: str = FHIR_JSON
) -> web.Response:
    # The default Server header names the Python and aiohttp versions: no help to clients,
    # some to an attacker.
    headers = {**headers, "Server": "engine"}
    if body is None:
        return web.Response(status=status, headers=headers)
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return web.Response(
        status=status,
        body=data,
        headers={**headers, "Content-Type": f"{media}; charset=utf-8"},
    )


def respond(request: web.Request, base_url: str, answer: FhirAnswer) -> web.Response:
    headers = answer_headers(base_url, answer)
    if not answer.ok:
        return json_response(answer.status, answer.outcome, headers)
    prefer = request.headers.get("Prefer", "")
    if "return=minimal" in prefer:
        return json_response(answer.status, None, headers)
    if "return=OperationOutcome" in prefer:
        return json_response(answer.status, operation_outcome([]), headers)
    return json_response(answer.status, presented(answer), headers)


@dataclass
class HttpListenerStats:
    connections: int = 0  # open now
    connections_total: int = 0  # admitted since start
    refused: int = 0  # closed at accept, over max_connections (engine.listeners.http_gate)
    requests: int = 0  # every request that reached the listener
    tls_refused: int = 0  # client certificate not on the allow-list (403)
    throttled: int = 0  # over a rate limit (429)
    unauthenticated: int = 0  # no credential, or one refused (401)
    forbidden: int = 0  # a role without the route's permission (403)


class HttpListener:
    def __init__(
        self,
        config: ListenerConfig,
        intake: FhirIntake,
        metrics: ListenerMetrics,
        version: str = "",
        auth: HttpAuth | None = None,
        admin: AdminApi | None = None,
    ) -> None:
        assert config.http is not None
        self.config = config
        self.http = config.http
        self.intake = intake
        self.metrics = metrics
        self._version = version
        self._base = "/" + self.http.path.strip("/") if self.http.path.strip("/") else ""
        self._runner: web.AppRunner | None = None
        tls = self.http.tls
        self.ssl = server_context(tls) if tls is not None else None
        self.allow = AllowList(tls.allow if tls is not None else ())
        self.stats = HttpListenerStats()
        self.door = Door(config.name, self.http.max_connections, self.stats)
        # Replaceable before or while serving (a test injects one with a fake clock).
        self.limits = RequestLimits(self.http.rate_limit)
        self.auth = auth or HttpAuth(config.name, None, None)
        routes = served_routes(self.http.serve)
        self.routes = RouteTable(routes, self._base)
        self._handlers: dict[str, Handler] = {
            "auth.token": self._token,
            "auth.login": self._login,
            "auth.logout": self._logout,
        }
        if self.http.fhir:
            self._handlers |= {
                "fhir.metadata": self._metadata,
                "smart.configuration": self._smart,
                "fhir.bundle": self._bundle,
                "fhir.create": self._create,
                "fhir.update": self._update,
                "fhir.read": self._read,
            }
        if "admin" in self.http.serve:
            assert admin is not None, "a listener serving admin needs the engine's admin API"
            self._handlers |= admin.handlers(self.auth)
        # A route without its handler, or a handler without a route (and so without a
        # permission), is a bug to catch at start, not on the first request.
        assert set(self._handlers) == {r.name for r in routes}

    @property
    def port(self) -> int:
        return int(self.door.sockets[0].getsockname()[1])

    @property
    def bound(self) -> bool:
        """Started and accepting connections (readiness)."""
        return self.door.bound

    def base_url(self, request: web.Request) -> str:
        return f"{request.scheme}://{request.host}{self._base}"

    async def start(self) -> None:
        # The body limit is enforced while reading (`_body`), where the answer can be an
        # OperationOutcome; aiohttp's own limit is only a backstop above it.
        app = web.Application(client_max_size=self.http.max_body_bytes + _CHUNK)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        handler = self._runner.server
        assert handler is not None
        # The door accepts, not a TCPSite: the connection limit must act before the TLS
        # handshake (engine.listeners.http_gate says why).
        await self.door.open(self.http.host, self.http.port, handler, self.ssl)
        scheme = "http" if self.ssl is None else "https"
        log.info("listener %s: %s on %s://%s:%d%s", self.config.name,
                 " and ".join(s.upper() if s == "fhir" else s for s in self.http.serve), scheme,
                 self.http.host, self.port, self._base if self.http.fhir else "")

    async def stop(self) -> None:
        """Stop accepting; requests in progress finish (and get their answer) first."""
        await self.door.close()
        if self._runner is not None:
            # Shuts down the handlers of admitted connections (aiohttp tracks them).
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.stats.requests += 1
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport else None
        if self.allow:
            refusal = peer_refusal(self.allow, ssl_object)
            if refusal is not None:
                self.stats.tls_refused += 1
                log.warning("listener %s: request refused, %s", self.config.name, refusal)
                return self._error(fail(403, "forbidden",
                                        "client certificate is not allowed on this listener"))
        if self.limits.enabled:
            # request.remote is the socket's peer: no forwarded-for header is consulted.
            throttled = self.limits.check(request.remote, _client_identity(ssl_object))
            if throttled is not None:
                return self._throttled(throttled)
        try:
            return await self._route(request)
        except Exception as exc:  # a bug must cost one request, never the listener
            log.error("listener %s: %s handling a request", self.config.name,
                      type(exc).__name__)
            return json_response(500, fail(500, "exception", "internal error").outcome, {})

    async def _route(self, request: web.Request) -> web.Response:
        found = self.routes.match(request.method, request.path)
        if found is None:
            return self._error(fail(404, "not-found", "no such endpoint on this listener"))
        if isinstance(found, str):
            return self._not_allowed(found)
        route, target = found
        identity: Identity | None = None
        if not route.public:
            known = self.auth.identify(request)
            if not isinstance(known, Identity):
                self.stats.unauthenticated += 1
                answer = fail(401, "login", "authentication required: a bearer token, an API "
                              "key or a session, valid now")  # fmt: skip
                return json_response(401, answer.outcome,
                                     {"WWW-Authenticate": 'Bearer realm="engine"'})
            if not allowed(known.role, route.needs):
                self.stats.forbidden += 1
                await self.auth.record(request, known, "E", f"{route.method} {route.name}", 4)
                return self._error(fail(403, "forbidden", f"the {known.role} role may not "
                                        f"{route.method} here"))
            identity = known
        handler = self._handlers[route.name]
        return await handler(request, identity, target)

    # handlers, one per route of engine.security.permissions.HTTP_ROUTES

    async def _metadata(self, request: web.Request, _: Identity | None, __: str) -> web.Response:
        statement = capability_statement(self.base_url(request), self._version,
                                         self.intake.now())  # fmt: skip
        return json_response(200, statement, {})

    async def _smart(self, request: web.Request, _: Identity | None, __: str) -> web.Response:
        return json_response(200, self.auth.smart_configuration(self._token_url(request)), {})

    async def _token(self, request: web.Request, _: Identity | None, __: str) -> web.Response:
        return await self.auth.token(request, self._token_url(request))

    async def _login(self, request: web.Request, _: Identity | None, __: str) -> web.Response:
        return await self.auth.login(request, secure=self.ssl is not None)

    async def _logout(self, request: web.Request, who: Identity | None, _: str) -> web.Response:
        assert who is not None
        return await self.auth.logout(request, who)

    async def _bundle(self, request: web.Request, _: Identity | None, __: str) -> web.Response:
        return await self._write(request, self.base_url(request), bundle=True)

    async def _create(self, request: web.Request, _: Identity | None, __: str) -> web.Response:
        return await self._write(request, self.base_url(request))

    async def _update(self, request: web.Request, who: Identity | None, id_: str) -> web.Response:
        assert who is not None
        limited = only_cancel(who.role)
        response = await self._write(request, self.base_url(request), target=id_,
                                     only_cancel=limited)  # fmt: skip
        if limited:  # a person's change (a machine's are the message store's record)
            await self.auth.record(request, who, "U", "PUT Appointment",
                                   0 if response.status < 400 else 4, appointment_ids=(id_,))
        return response

    async def _read(self, request: web.Request, who: Identity | None, id_: str) -> web.Response:
        answer = await self.intake.read(id_)
        try:  # recorded before anything is shown; if it cannot be, nothing is
            await self.auth.record(
                request, who, "R", "GET Appointment", 0 if answer.ok else 4,
                appointment_ids=(id_,), patient_ids=patients_of(answer.resource),
            )  # fmt: skip
        except Exception as exc:
            log.error("listener %s: audit failed: %s", self.config.name, type(exc).__name__)
            return self._error(fail(503, "transient", "the read could not be audited"))
        return respond(request, self.base_url(request), answer)

    def _token_url(self, request: web.Request) -> str:
        return f"{request.scheme}://{request.host}/auth/token"

    async def _write(
        self, request: web.Request, base_url: str, *, target: str | None = None,
        bundle: bool = False, only_cancel: bool = False,
    ) -> web.Response:
        """A message (create, update or Bundle) received: counted, and timed from here (its
        headers read, the caller authorised) until its answer is handed to the server."""
        started = time.monotonic()
        self.metrics.received.inc()
        response = await self._write_message(request, base_url, target=target, bundle=bundle,
                                             only_cancel=only_cancel)  # fmt: skip
        self.metrics.ack_seconds.observe(time.monotonic() - started)
        return response

    async def _write_message(
        self, request: web.Request, base_url: str, *, target: str | None,
        bundle: bool, only_cancel: bool,
    ) -> web.Response:
        if request.content_type not in _JSON_TYPES:
            return self._error(fail(415, "not-supported",
                                    f"send {FHIR_JSON} (or application/json)"))
        raw = await self._body(request)
        if isinstance(raw, FhirAnswer):
            return self._error(raw)
        if bundle:
            answer = await handle_bundle(self.config, self.intake, raw, self.http.max_body_bytes)
            return json_response(answer.status, answer.body, {})
        try:
            resource = parse_appointment(raw, max_bytes=self.http.max_body_bytes)
        except Invalid as invalid:
            return self._error(await self.intake.reject(self.config, raw, invalid))
        fhir_request = FhirRequest(
            "PUT" if target is not None else "POST",
            resource,
            raw,
            target=target,
            if_match=request.headers.get("If-Match"),
            if_none_exist=request.headers.get("If-None-Exist"),
            only_cancel=only_cancel,
        )
        return respond(request, base_url, await self.intake.submit(self.config, fhir_request))

    async def _body(self, request: web.Request) -> bytes | FhirAnswer:
        """The body, or a 413 (stored with the body's head) once it passes the limit."""
        limit = self.http.max_body_bytes
        data = bytearray()
        too_big = request.content_length is not None and request.content_length > limit
        if not too_big:
            async for chunk in request.content.iter_chunked(_CHUNK):
                data += chunk
                if len(data) > limit:
                    too_big = True
                    break
        if not too_big:
            return bytes(data)
        if not data:
            data += await request.content.read(HEAD_BYTES)
        invalid = Invalid(413, [Issue("error", "too-long",
                                      f"request body is over the limit of {limit} bytes")])
        return await self.intake.reject(self.config, bytes(data[:HEAD_BYTES]), invalid)

    def _throttled(self, throttled: Throttled) -> web.Response:
        """429 before the body is read: what the client still sends is discarded in chunks by
        aiohttp (for its lingering time, then the connection closes), never held."""
        self.stats.throttled += 1
        if throttled.report:
            log.warning("listener %s: %s over its rate limit of %s; refusing its requests "
                        "with 429 (logged once per period)", self.config.name,
                        self.limits.label(throttled), throttled.rate.text)
        seconds = throttled.retry_after_header
        answer = fail(429, "throttled", f"too many requests: the limit is {throttled.rate.text} "
                                        f"per {'address' if throttled.scope == 'ip' else 'client'}"
                                        f"; retry after {seconds} s")
        return json_response(429, answer.outcome, {"Retry-After": seconds})

    @staticmethod
    def _error(answer: FhirAnswer) -> web.Response:
        return json_response(answer.status, answer.outcome, {})

    def _not_allowed(self, allowed: str) -> web.Response:
        answer = fail(405, "not-supported", f"this path accepts {allowed}")
        return json_response(405, answer.outcome, {"Allow": allowed})


def patients_of(resource: dict[str, Any] | None) -> tuple[str, ...]:
    """The patients an Appointment names, for the audit trail: the identifier of a Patient
    actor (as the engine's conversions write it), else the id of a `Patient/<id>` reference."""
    found = []
    for p in (resource or {}).get("participant", ()):
        actor = p.get("actor") if isinstance(p, dict) else None
        if not isinstance(actor, dict):
            continue
        reference = actor.get("reference")
        identifier = actor.get("identifier")
        if actor.get("type") == "Patient" and isinstance(identifier, dict):
            found.append(str(identifier.get("value", "")))
        elif isinstance(reference, str) and reference.startswith("Patient/"):
            found.append(reference.removeprefix("Patient/"))
    return tuple(v for v in found if v)


def _client_identity(ssl_object: object) -> str | None:
    """The client's identity for `per_client`: the SHA-256 fingerprint of the certificate it
    presented (verified against `client_ca` by the handshake), None without one."""
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return fingerprint(der) if der else None
