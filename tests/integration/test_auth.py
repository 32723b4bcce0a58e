"""Authentication and roles on the HTTP listener, over real HTTP against a running engine
with a real identity file and audit trail: every route of the permission table with every
role (allowed and refused), without a credential, the operator's cancel-only update, the
token endpoint (client secret and SMART assertion, jti replay), sessions with CSRF, and what
the audit trail records."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from engine.config import load
from engine.runtime.engine import Engine
from engine.runtime.security import SecurityServices
from engine.security import totp
from engine.security.audit import AuditKey
from engine.security.audit_store import AuditLog, AuditStore
from engine.security.identities import Identities
from engine.security.identities_store import ROLES, IdentityStore
from engine.security.permissions import HTTP_ROUTES
from engine.security.tokens import ASSERTION_TYPE, Access
from engine.store.base import MessageFilter
from tests.integration.conftest import free_port
from tests.integration.fhir_support import appointment, archive_channel, write_fhir_config

PASSWORD = "correct horse battery staple"

# What the issue asks, written out here rather than read from the table under test.
ALLOWED: dict[str, set[str]] = {
    "fhir.metadata": set(ROLES),
    "smart.configuration": set(ROLES),
    "auth.token": set(ROLES),
    "auth.login": set(ROLES),
    "auth.logout": set(ROLES),
    "fhir.bundle": {"admin", "system"},
    "fhir.create": {"admin", "system"},
    "fhir.update": {"admin", "system", "operator"},
    "fhir.read": {"admin", "operator", "viewer"},
    "api.openapi": set(ROLES),
    "api.me": set(ROLES),
    "api.stats": {"admin", "operator", "viewer"},
    "api.channels": {"admin", "operator", "viewer"},
    "api.listeners": {"admin", "operator", "viewer"},
    "api.messages.search": {"admin", "operator", "viewer"},
    "api.message": {"admin", "operator", "viewer"},
    "api.deliveries.failed": {"admin", "operator", "viewer"},
    "api.deliveries.retry": {"admin", "operator"},
    "api.deliveries.discard": {"admin", "operator"},
    "api.replay": {"admin"},
    "api.conflicts.resolve": {"admin", "operator"},
    "api.audit.search": {"admin", "auditor"},
    "api.config.reload": {"admin"},
    "metrics": {"admin", "operator", "viewer"},
    "health.live": set(ROLES),
    "health.ready": set(ROLES),
    "console.page": set(ROLES),
    "console.asset": set(ROLES),
}
# What each admin route is called with: (method, path, JSON body or None).
ADMIN_CALLS: dict[str, tuple[str, str, Any]] = {
    "api.openapi": ("GET", "/api/openapi.json", None),
    "api.me": ("GET", "/api/me", None),
    "api.stats": ("POST", "/api/stats", {"window_minutes": 10, "buckets": 5}),
    "api.channels": ("GET", "/api/channels", None),
    "api.listeners": ("GET", "/api/listeners", None),
    "api.messages.search": ("POST", "/api/messages/search", {"limit": 5}),
    "api.message": ("GET", "/api/messages/1", None),
    "api.deliveries.failed": ("GET", "/api/deliveries/failed", None),
    "api.deliveries.retry": ("POST", "/api/deliveries/retry", {"delivery_ids": [999999]}),
    "api.deliveries.discard": ("POST", "/api/deliveries/discard", {"delivery_ids": [999999]}),
    "api.replay": ("POST", "/api/replay", {"message_ids": [1], "dry_run": True}),
    # {id}: a message with an open conflict, made by `flagged` for each attempt.
    "api.conflicts.resolve": ("POST", "/api/conflicts/{id}/resolve", {"outcome": "accepted"}),
    "api.audit.search": ("POST", "/api/audit/search", {}),
    "api.config.reload": ("POST", "/api/config/reload", None),
    "metrics": ("GET", "/metrics", None),
    "health.live": ("GET", "/health/live", None),
    "health.ready": ("GET", "/health/ready", None),
    "console.page": ("GET", "/console/", None),
    "console.asset": ("GET", "/console/app.js", None),
}
JSON = {"Content-Type": "application/json"}


@dataclass
class Site:
    engine: Engine
    session: aiohttp.ClientSession
    origin: str  # http://127.0.0.1:PORT
    access: Access
    trail: AuditStore
    credentials: dict[str, dict[str, str]]  # role -> headers
    admin_secret: str
    flagged: list[str] = field(default_factory=list)  # tags of the conflicts made so far

    async def call(self, method: str, path: str, role: str | None, body: Any = None,
                   form: dict[str, str] | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        sent = dict(self.credentials[role]) if role else {}
        sent.update(headers or {})
        kwargs: dict[str, Any] = {"headers": sent}
        if form is not None:
            kwargs["data"] = form
        elif body is not None:
            kwargs["json"] = body
            sent.setdefault("Content-Type", "application/fhir+json")
        async with self.session.request(method, self.origin + path, **kwargs) as response:
            text = await response.read()
            try:
                return response.status, await response.json(content_type=None) if text else None
            except ValueError:
                return response.status, text


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    port = free_port()
    routes = write_fhir_config(tmp_path, port, {"fhir": archive_channel(tmp_path / "out")},
                               auth="required", serve=("fhir", "admin"))  # fmt: skip
    config = load(routes)
    store = IdentityStore(tmp_path / "identities.db")
    ids = Identities(store)
    admin_secret = ids.add_user("root1", "admin", PASSWORD)
    assert admin_secret is not None
    for role in ("operator", "viewer", "system", "auditor"):
        ids.add_user(f"{role}1", role, PASSWORD)
    key = AuditKey.from_bytes(secrets.token_hex(32).encode(), "test")
    trail = AuditStore(tmp_path / "audit.db", key)
    security = SecurityServices(config, identities=ids, audit=AuditLog(trail))
    engine = Engine(config, poll_interval=0.05, security=security)
    await engine.start()
    access = security.access
    assert access is not None
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            site = Site(engine, session, f"http://127.0.0.1:{port}", access, trail, {},
                        admin_secret)  # fmt: skip
            for role in ("operator", "viewer", "system", "auditor"):
                key = ids.create_key(f"{role}1", role, 3600).secret
                site.credentials[role] = {"Authorization": f"Bearer {key}"}
            site.credentials["admin"] = await login_admin(site)
            yield site
    finally:
        await engine.stop()
        store.close()


async def login_admin(site: Site) -> dict[str, str]:
    """An admin session: password + TOTP at /auth/login; the cookie and its CSRF header."""
    code = totp.code_at(site.admin_secret, site.access.now())
    async with site.session.post(site.origin + "/auth/login", json={
        "user": "root1", "password": PASSWORD, "totp": code}) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
        cookie = response.cookies["engine_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    assert body["idle_timeout"] == 900 and body["role"] == "admin"
    return {"Cookie": f"engine_session={cookie.value}", "X-CSRF-Token": body["csrf_token"]}


def booking(tag: str) -> dict[str, Any]:
    """The booked sample under a booking identifier of its own, at a time of its own."""
    resource = appointment("booked")
    resource["identifier"] = [{"system": "urn:test:booking", "value": f"B-{tag}"}]
    resource["start"], resource["end"] = f"2031-01-{1 + len(tag) % 27:02d}T09:00:00Z", (
        f"2031-01-{1 + len(tag) % 27:02d}T09:30:00Z")
    # The patient only: a practitioner in every booking would make them double-booked.
    resource["participant"] = [p for p in resource["participant"]
                               if p["actor"]["type"] == "Patient"]
    return resource


async def created(site: Site, tag: str) -> dict[str, Any]:
    status, body = await site.call("POST", "/fhir/Appointment", "system", booking(tag))
    assert status == 201, body
    return dict(body)


async def flagged(site: Site, tag: str) -> int:
    """A message whose appointment was flagged: a second booking of the sample's practitioner
    at the time of a first (a double booking); its id."""
    day = 1 + len(site.flagged) % 28
    site.flagged.append(tag)
    for n in (1, 2):
        resource = appointment("booked")
        resource["identifier"] = [{"system": "urn:test:booking", "value": f"F-{tag}-{n}"}]
        resource["start"], resource["end"] = f"2032-02-{day:02d}T09:00:00Z", (
            f"2032-02-{day:02d}T09:30:00Z")
        status, body = await site.call("POST", "/fhir/Appointment", "system", resource)
        assert status in (200, 201), body
    [row] = await site.engine.store.search(MessageFilter(flagged=True, resolved=False, limit=1))
    return row.id


def cancelled(resource: dict[str, Any]) -> dict[str, Any]:
    return {**{k: v for k, v in resource.items() if k != "meta"}, "status": "cancelled"}


async def attempt(site: Site, name: str, role: str | None) -> int:
    """One request to the route `name` as `role` (None: no credential); its status."""
    tag = f"{name}-{role}"
    if name in ADMIN_CALLS:
        if name == "api.message" or name == "api.replay":
            await created(site, tag)  # message 1 exists
        method, path, body = ADMIN_CALLS[name]
        if "{id}" in path:
            path = path.replace("{id}", str(await flagged(site, tag)))
        return (await site.call(method, path, role, body, headers=JSON))[0]
    if name == "fhir.metadata":
        return (await site.call("GET", "/fhir/metadata", role))[0]
    if name == "smart.configuration":
        return (await site.call("GET", "/fhir/.well-known/smart-configuration", role))[0]
    if name == "auth.token":
        client = f"app-{secrets.token_hex(4)}"
        secret = site.access.add_client(client, "system")
        basic = base64.b64encode(f"{client}:{secret}".encode()).decode()
        return (await site.call("POST", "/auth/token", role,
                                form={"grant_type": "client_credentials"},
                                headers={"Authorization": f"Basic {basic}"}))[0]  # fmt: skip
    if name == "auth.login":
        return (await site.call("POST", "/auth/login", role,
                                body={"user": "viewer1", "password": PASSWORD}))[0]
    if name == "auth.logout":
        return (await site.call("POST", "/auth/logout", role))[0]
    if name == "fhir.create":
        return (await site.call("POST", "/fhir/Appointment", role, booking(tag)))[0]
    if name == "fhir.bundle":
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": booking(tag), "request": {"method": "POST", "url": "Appointment"}}]}
        return (await site.call("POST", "/fhir", role, bundle))[0]
    target = await created(site, tag)
    if name == "fhir.update":
        return (await site.call("PUT", f"/fhir/Appointment/{target['id']}", role,
                                cancelled(target)))[0]  # fmt: skip
    assert name == "fhir.read"
    return (await site.call("GET", f"/fhir/Appointment/{target['id']}", role))[0]


def test_the_table_and_this_test_name_the_same_routes():
    assert {r.name for r in HTTP_ROUTES} == set(ALLOWED)


@pytest.mark.parametrize("name", sorted(ALLOWED))
async def test_every_role_on_every_route(site: Site, name: str):
    # logout last: it ends the admin's session that the other requests use.
    for role in sorted(ROLES, key=lambda r: r == "admin"):
        status = await attempt(site, name, role)
        if role in ALLOWED[name]:
            assert status < 400, (name, role, status)
        else:
            assert status == 403, (name, role, status)
    public = not any(r.needs for r in HTTP_ROUTES if r.name == name)
    status = await attempt(site, name, None)
    assert (status < 400 if public else status == 401), (name, "no credential", status)


async def test_an_operator_may_cancel_and_nothing_else(site: Site):
    target = await created(site, "op")
    moved = {**cancelled(target), "start": "2031-02-01T09:00:00Z", "end": "2031-02-01T09:30:00Z"}
    status, body = await site.call("PUT", f"/fhir/Appointment/{target['id']}", "operator", moved)
    assert status == 403 and body["issue"][0]["code"] == "forbidden", body
    rebooked = {**{k: v for k, v in target.items() if k != "meta"}, "status": "booked",
                "comment": "changed"}
    status, _ = await site.call("PUT", f"/fhir/Appointment/{target['id']}", "operator", rebooked)
    assert status == 403
    status, now = await site.call("GET", f"/fhir/Appointment/{target['id']}", "viewer")
    assert status == 200 and now["status"] == "booked" and now["meta"]["versionId"] == "1"
    status, body = await site.call("PUT", f"/fhir/Appointment/{target['id']}", "operator",
                                   cancelled(target))  # fmt: skip
    assert status == 200 and body["status"] == "cancelled"
    status, _ = await site.call("POST", "/fhir/Appointment", "operator", booking("op-new"))
    assert status == 403
    records = site.trail.search(action="U")
    assert [(r.actor.who, r.event.outcome) for r in records][:3] == [
        ("user:operator1", 0), ("user:operator1", 4), ("user:operator1", 4)]


async def test_a_smart_client_gets_a_token_once_per_assertion(site: Site):
    key = ec.generate_private_key(ec.SECP384R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    site.access.add_client("ehr-feed", "system", public_key=public)
    status, config = await site.call("GET", "/fhir/.well-known/smart-configuration", None)
    assert status == 200 and "private_key_jwt" in config["token_endpoint_auth_methods_supported"]
    token_url = config["token_endpoint"]
    assert token_url == site.origin + "/auth/token"
    claims = {"iss": "ehr-feed", "sub": "ehr-feed", "aud": token_url,
              "exp": int(site.access.now()) + 240, "jti": secrets.token_hex(8)}
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": jwt.encode(claims, key, algorithm="ES384")}
    status, body = await site.call("POST", "/auth/token", None, form=form)
    assert status == 200 and body["token_type"] == "bearer" and body["expires_in"] == 300, body
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    status, _ = await site.call("POST", "/fhir/Appointment", None, booking("smart"),
                                headers=bearer)  # fmt: skip
    assert status == 201
    status, body = await site.call("POST", "/auth/token", None, form=form)  # the same jti
    assert status == 401 and body["error"] == "invalid_client"
    reasons = [r.event.query for r in site.trail.search(who="client:ehr-feed")]
    assert {"reason": "jti_replayed"} in reasons


async def test_a_revoked_key_stops_at_once(site: Site):
    assert (await site.call("GET", "/fhir/Appointment/nope", "viewer"))[0] == 404
    prefix = site.credentials["viewer"]["Authorization"].split()[1].split("_")[0]
    site.access.identities.revoke_key(prefix)
    assert (await site.call("GET", "/fhir/Appointment/nope", "viewer"))[0] == 401


async def test_a_session_cookie_needs_its_csrf_header_to_change_anything(site: Site):
    cookie_only = {"Cookie": site.credentials["admin"]["Cookie"]}
    status, _ = await site.call("POST", "/fhir/Appointment", None, booking("csrf"),
                                headers=cookie_only)  # fmt: skip
    assert status == 401
    assert (await site.call("GET", "/fhir/metadata", None, headers=cookie_only))[0] == 200
    status, _ = await site.call("POST", "/fhir/Appointment", "admin", booking("csrf"))
    assert status == 201


async def test_reads_logins_and_refusals_are_audited(site: Site):
    target = await created(site, "audit")
    status, _ = await site.call("GET", f"/fhir/Appointment/{target['id']}", "viewer")
    assert status == 200
    status, _ = await site.call("POST", "/auth/login", None,
                                body={"user": "viewer1", "password": "wrong password!!"})
    assert status == 401
    assert (await site.call("GET", f"/fhir/Appointment/{target['id']}", "system"))[0] == 403
    [read] = site.trail.search(action="R")
    assert (read.actor.who, read.actor.role, read.event.appointment_ids) == (
        "user:viewer1", "viewer", (target["id"],))
    assert read.event.patient_ids == (target["participant"][0]["actor"]["identifier"]["value"],)
    logins = [(r.actor.who, r.event.outcome, r.event.query)
              for r in site.trail.search(action="E") if r.event.what == "POST /auth/login"]
    assert ("user:viewer1", 4, {"reason": "bad_password"}) in logins
    assert ("user:root1", 0, None) in [(w, o, None) for w, o, q in logins if q is None]
    refused = [r for r in site.trail.search(who="user:system1") if r.event.outcome == 4]
    assert [r.event.what for r in refused] == ["GET fhir.read"]
    assert site.trail.verify().ok
