"""The test kit's fake FHIR server: Appointment REST on aiohttp that records every request and
fails on demand, for FHIR destination tests and `engine fake-fhir`.

The rule it keeps: it answers like a real R4 server on the wire (versionId, `ETag: W/"<vid>"`,
`Location: <base>/Appointment/<id>/_history/<vid>`, OperationOutcome bodies, status codes of
the FHIR REST conventions) and it never guesses: an ambiguous conditional request is 412, a
failed transaction stores nothing. Only Appointments are kept, current version only; an
update that changes nothing keeps the version (no new version for a no-op).

Served under `<url>` = http://host:port/fhir:

- `POST /Appointment` (`If-None-Exist: identifier=<system>|<value>`: 200 exists / 412 several)
- `PUT /Appointment/{id}` (update, or create with that id; `If-Match` stale → 412)
- `PUT /Appointment?identifier=<system>|<value>` (conditional update: 201 / 200 / 412)
- `GET /Appointment/{id}`, `GET /Appointment?identifier=...` (searchset Bundle)
- `POST /` with a `batch` or `transaction` Bundle of the requests above
- `GET /metadata` (CapabilityStatement; open even when a token is required, as SMART says)

`fail_next(...)` queues answers each request takes before anything else happens;
`required_token` makes every other request need `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web

from engine.testing.http_fake import HttpFake

FHIR_JSON = "application/fhir+json"
_JSON_TYPES = frozenset({FHIR_JSON, "application/json", ""})
_ENTRY_HEADERS = frozenset({"Location", "ETag"})  # what a Bundle entry response repeats

Json = dict[str, Any]


# Tells the truth about what this fake does: Appointments only, no history, no delete.
CAPABILITIES: Json = {
    "resourceType": "CapabilityStatement",
    "status": "active",
    "date": "2026-11-21",
    "kind": "instance",
    "fhirVersion": "4.0.1",
    "format": [FHIR_JSON],
    "rest": [
        {
            "mode": "server",
            "interaction": [{"code": "batch"}, {"code": "transaction"}],
            "resource": [
                {
                    "type": "Appointment",
                    "interaction": [
                        {"code": c} for c in ("read", "create", "update", "search-type")
                    ],
                    "versioning": "versioned-update",
                    "conditionalCreate": True,
                    "conditionalUpdate": True,
                    "searchParam": [{"name": "identifier", "type": "token"}],
                }
            ],
        }
    ],
}


@dataclass(frozen=True)
class Recorded:
    """One HTTP request as received (header names lowercased) and the status it got."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    status: int
    body: bytes = b""


@dataclass
class _Answer:
    status: int
    body: Json | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _outcome(code: str, diagnostics: str, severity: str = "error") -> Json:
    """An OperationOutcome with one issue."""
    issue = {"severity": severity, "code": code, "diagnostics": diagnostics}
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def _error(status: int, code: str, diagnostics: str) -> _Answer:
    return _Answer(status, _outcome(code, diagnostics))


def _content(resource: Json) -> Json:
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}


def matches(resource: Json, token: str) -> bool:
    """FHIR token search on `identifier`: `system|value`, `value` (any system), `|value` (no
    system), `system|` (any value in that system)."""
    head, bar, value = token.partition("|")
    system, value = (head, value) if bar else (None, head)
    return any(
        isinstance(ident, dict)
        and (system is None or (ident.get("system") or "") == system)
        and (not value or ident.get("value") == value)
        for ident in resource.get("identifier") or []
    )


class FakeFhir(HttpFake):
    route = "/fhir{tail:(/.*)?}"
    method = "*"

    """A FHIR server on host:port (0 = any free port; read `port` or `url` after `start`)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        required_token: str | None = None,
        on_request: Callable[[Recorded], None] | None = None,
    ) -> None:
        super().__init__(host, port)
        self.required_token = required_token
        self.on_request = on_request
        self.resources: dict[str, Json] = {}  # id -> current version, meta.versionId set
        self.requests: list[Recorded] = []
        self.tokens_seen: list[str] = []
        self._failures: list[_Answer] = []
        self._next_id = 1

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/fhir"

    def find(self, token: str) -> list[Json]:
        """Current Appointments whose identifier matches `token` (`system|value`)."""
        return [r for r in self.resources.values() if matches(r, token)]

    def fail_next(
        self,
        status: int,
        *,
        retry_after: int | str | None = None,
        outcome: Json | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` requests with `status` (Retry-After and body as given; an
        OperationOutcome is made up when none is given; 401 carries WWW-Authenticate)."""
        if not 400 <= status <= 599:
            raise ValueError("fail_next takes a 4xx or 5xx status")
        for _ in range(times):
            code = "transient" if status >= 500 else "processing"
            phrase = HTTPStatus(status).phrase
            failure = _Answer(status, outcome or _outcome(code, f"injected {status} {phrase}"))
            if retry_after is not None:
                failure.headers["Retry-After"] = str(retry_after)
            if status == 401:
                failure.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            self._failures.append(failure)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {name.lower(): value for name, value in request.headers.items()}
        parsed: Any = None
        answer: _Answer | None = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                answer = _error(400, "structure", "request body is not valid JSON")
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token:
            self.tokens_seen.append(token)
        rel = request.match_info["tail"].strip("/")
        if self._failures:
            answer = self._failures.pop(0)
        elif (
            self.required_token is not None
            and rel != "metadata"
            and (scheme.lower() != "bearer" or token != self.required_token)
        ):
            answer = _error(401, "login", "a valid bearer token is required")
            challenge = 'Bearer error="invalid_token"' if token else 'Bearer realm="fhir"'
            answer.headers["WWW-Authenticate"] = challenge
        elif request.content_type not in _JSON_TYPES and body:
            answer = _error(415, "not-supported", f"use {FHIR_JSON}")
        elif answer is None:
            answer = self._route(request.method, rel, dict(request.query), parsed, headers)
        prefer = headers.get("prefer", "")
        if "return=minimal" in prefer and answer.status < 300:
            # For a Bundle, Prefer applies to the entries' resources: the response Bundle
            # with each entry's status stays (that is what the client reads).
            shown = answer.body
            if isinstance(shown, dict) and shown.get("resourceType") == "Bundle":
                answer.body = {**shown, "entry": [
                    {k: v for k, v in e.items() if k != "resource"} for e in shown["entry"]
                ]}
            else:
                answer.body = None
        elif "return=OperationOutcome" in prefer and answer.status < 300:
            answer.body = _outcome("informational", "ok", "information")
        recorded = Recorded(
            request.method, request.path, dict(request.query), headers, parsed, answer.status, body
        )
        self.requests.append(recorded)
        if self.on_request is not None:
            self.on_request(recorded)
        self._changed()
        out_headers = dict(answer.headers)
        payload = b""
        if answer.body is not None:
            out_headers["Content-Type"] = f"{FHIR_JSON}; charset=utf-8"
            payload = json.dumps(answer.body).encode()
        return web.Response(status=answer.status, body=payload, headers=out_headers)

    def _route(
        self, method: str, rel: str, query: dict[str, str], body: Any, headers: dict[str, str]
    ) -> _Answer:
        """One FHIR interaction; `rel` is the path below the base, headers lowercased."""
        parts = rel.split("/") if rel else []
        if method == "GET" and parts == ["metadata"]:
            return _Answer(200, CAPABILITIES)
        if method == "POST" and not parts:
            return self._bundle(body)
        if not parts or parts[0] != "Appointment" or len(parts) > 2:
            return _error(404, "not-supported", f"no {method} interaction at this path")
        rid = parts[1] if len(parts) == 2 else None
        token = query.get("identifier")
        if method == "GET":
            if rid is not None:
                current = self.resources.get(rid)
                if current is None:
                    return _error(404, "not-found", f"Appointment/{rid} is not known")
                return _Answer(200, current, self._version_headers(current))
            return _Answer(200, self._searchset(token))
        if method not in ("PUT", "POST"):
            return _error(405, "not-supported", f"{method} is not supported")
        resource = body if isinstance(body, dict) else None
        if resource is None or resource.get("resourceType") != "Appointment":
            return _error(400, "invalid", "the body must be an Appointment resource")
        if method == "POST":
            if rid is not None:
                return _error(405, "not-supported", "POST goes to Appointment, not an id")
            exist = headers.get("if-none-exist", "")
            if exist:
                found = self.find(dict(parse_qsl(exist)).get("identifier", ""))
                if len(found) > 1:
                    return _error(412, "duplicate", "If-None-Exist matches several")
                if found:
                    return _Answer(200, found[0], self._version_headers(found[0]))
            return self._store(self._new_id(), resource)
        if rid is None:
            if not token:
                return _error(400, "required", "PUT needs an id or an identifier search")
            found = self.find(token)
            if len(found) > 1:
                return _error(412, "multiple-matches", "identifier matches several")
            rid = found[0]["id"] if found else str(resource.get("id") or self._new_id())
        if resource.get("id") not in (None, rid):
            return _error(400, "invalid", "resource id does not match the URL")
        if_match = headers.get("if-match")
        if if_match is not None:
            current = self.resources.get(rid)
            if current is None or self._etag(current) != if_match:
                return _error(412, "conflict", "If-Match does not name the current version")
        return self._store(rid, resource)

    def _new_id(self) -> str:
        rid = f"appt-{self._next_id}"
        self._next_id += 1
        return rid

    def _store(self, rid: str, resource: Json) -> _Answer:
        previous = self.resources.get(rid)
        if previous is not None and _content(previous) == _content(resource):
            # A no-op update keeps the version, as HAPI and most servers do: what a replay
            # of the current state must look like downstream.
            return _Answer(200, previous, self._version_headers(previous))
        version = int(previous["meta"]["versionId"]) + 1 if previous else 1
        now = datetime.now(UTC)
        meta = dict(resource.get("meta") or {})
        meta.update(versionId=str(version), lastUpdated=now.isoformat(timespec="milliseconds"))
        stored = {**copy.deepcopy(resource), "id": rid, "meta": meta}
        self.resources[rid] = stored
        headers = self._version_headers(stored)
        headers["Location"] = f"{self.url}/Appointment/{rid}/_history/{version}"
        return _Answer(200 if previous else 201, stored, headers)

    @staticmethod
    def _etag(resource: Json) -> str:
        return f'W/"{resource["meta"]["versionId"]}"'

    def _version_headers(self, resource: Json) -> dict[str, str]:
        updated = datetime.fromisoformat(resource["meta"]["lastUpdated"])
        return {"ETag": self._etag(resource), "Last-Modified": format_datetime(updated, True)}

    def _searchset(self, token: str | None) -> Json:
        found = list(self.resources.values()) if token is None else self.find(token)
        match = {"mode": "match"}
        entries = [{"fullUrl": f"{self.url}/Appointment/{r['id']}", "resource": r} for r in found]
        for entry in entries:
            entry["search"] = match
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": entries,
        }

    def _bundle(self, body: Any) -> _Answer:
        """A batch (each entry on its own) or transaction (all or nothing) of Appointment
        interactions; the answer is the matching `*-response` Bundle."""
        kind = body.get("type") if isinstance(body, dict) else None
        if (
            not isinstance(body, dict)
            or body.get("resourceType") != "Bundle"
            or kind not in ("batch", "transaction")
        ):
            return _error(400, "invalid", "POST to the base takes a batch or transaction Bundle")
        saved = copy.deepcopy(self.resources), self._next_id
        entries: list[Json] = []
        for index, entry in enumerate(body.get("entry") or []):
            answer = self._entry(entry)
            if kind == "transaction" and answer.status >= 400:
                self.resources.clear()
                self.resources.update(saved[0])
                self._next_id = saved[1]
                problem = (answer.body or {}).get("issue", [{}])[0].get("diagnostics", "")
                return _error(answer.status, "processing", f"entry {index}: {problem}")
            response: Json = {"status": f"{answer.status} {HTTPStatus(answer.status).phrase}"}
            response |= {k.lower(): v for k, v in answer.headers.items() if k in _ENTRY_HEADERS}
            if answer.status >= 400:
                response["outcome"] = answer.body
                entries.append({"response": response})
            else:
                entries.append({"resource": answer.body, "response": response})
        return _Answer(
            200, {"resourceType": "Bundle", "type": f"{kind}-response", "entry": entries}
        )

    def _entry(self, entry: Any) -> _Answer:
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict) or not isinstance(request.get("url"), str):
            return _error(400, "required", "entry.request with method and url is required")
        method = str(request.get("method", "")).upper()
        url = urlsplit(request["url"])
        rel = url.path.strip("/")
        if not rel:
            return _error(400, "not-supported", "a Bundle entry cannot post another Bundle")
        headers = {
            name: request[key]
            for key, name in (("ifMatch", "if-match"), ("ifNoneExist", "if-none-exist"))
            if isinstance(request.get(key), str)
        }
        return self._route(method, rel, dict(parse_qsl(url.query)), entry.get("resource"), headers)


def format_request(recorded: Recorded) -> str:
    """One console line per request. Query values are left out: identifiers can be PHI."""
    keys = ",".join(recorded.query)
    query = f"?{keys}=…" if keys else ""
    return f"{recorded.method} {recorded.path}{query} -> {recorded.status}"


async def run(port: int, host: str = "127.0.0.1", write: Callable[[str], Any] = print) -> None:
    """`engine fake-fhir`: listen, print one line per request, serve until cancelled."""
    server = FakeFhir(host, port, on_request=lambda r: write(format_request(r)))
    await server.start()
    write(f"fake FHIR server listening on {server.url}")
    await server.serve_forever()
