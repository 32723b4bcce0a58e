"""Authentication on an HTTP listener: who a request speaks for, and the endpoints that hand
out credentials (`POST /auth/token`, `/auth/login`, `/auth/logout`, and the SMART
configuration that points clients at the token endpoint).

Rules kept here:
- A request carries one credential: `Authorization: Bearer <access token | API key>` or the
  session cookie a login set. No credential, or one refused → 401 with `WWW-Authenticate:
  Bearer` and an OperationOutcome (`login`) that says the same whatever was wrong; the
  reason goes to the identity store (lockout) and, for logins and token requests, to the
  audit trail.
- A session cookie is `HttpOnly`, `SameSite=Strict`, `Secure` over TLS, and a request it
  authenticates that changes something (any method but GET/HEAD) must also carry
  `X-CSRF-Token`, which the login answer gave (an HMAC of the session, so nothing more is
  stored): a page of another site cannot forge that header.
- The token endpoint speaks OAuth 2.0 (RFC 6749 §4.4, §5.2; RFC 7523 for assertions): form
  body, `grant_type=client_credentials`, the secret by HTTP Basic or in the form, or a
  `client_assertion` (SMART Backend Services); answers `Cache-Control: no-store`.
- Password checks (scrypt) and writes to the identity file run off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from engine.security.audit import Action, Actor, AuditEvent
from engine.security.identities import Identity, Refusal
from engine.security.tokens import ASSERTION_TYPE, Access, Issued, basic_credentials

log = logging.getLogger("engine.listener")

SESSION_COOKIE = "engine_session"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD"})
# A development listener with `auth: none` runs every request as this identity.
UNAUTHENTICATED = Identity("(auth: none)", "admin", "password")

AuditSink = Callable[[Actor, AuditEvent], Awaitable[None]]


def csrf_token(session: str) -> str:
    return hmac.new(session.encode(), b"engine csrf", hashlib.sha256).hexdigest()


def actor(request: web.Request, identity: Identity | None, who: str = "") -> Actor:
    return Actor(
        who=identity.subject if identity is not None else who,
        role=identity.role if identity is not None else "",
        address=request.remote or "",
        user_agent=request.headers.get("User-Agent", "")[:200],
    )


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Cache-Control": "no-store",
                 "Server": "engine", **(headers or {})},
    )  # fmt: skip


class HttpAuth:
    """Credentials on one listener; `access` None means `auth: none` (development)."""

    def __init__(self, listener: str, access: Access | None, audit: AuditSink | None) -> None:
        self.listener = listener
        self.access = access
        self.audit = audit

    @property
    def required(self) -> bool:
        return self.access is not None

    async def record(self, request: web.Request, identity: Identity | None, action: Action,
                     what: str, outcome: int = 0, who: str = "", **entities: Any) -> None:
        if self.audit is not None:
            event = AuditEvent(action, what, outcome, **entities)
            await self.audit(actor(request, identity, who), event)

    def identify(self, request: web.Request) -> Identity | Refusal | None:
        """The identity the request's credential speaks for; None without a credential."""
        if self.access is None:
            return UNAUTHENTICATED
        header = request.headers.get("Authorization", "")
        scheme, _, text = header.partition(" ")
        text = text.strip()
        if scheme.lower() == "bearer" and text:
            if text.startswith("ek"):
                return self.access.identities.authenticate_key(text)
            return self.access.check(text)
        session = request.cookies.get(SESSION_COOKIE)
        if session:
            found = self.access.check(session)
            if isinstance(found, Identity) and request.method not in _SAFE_METHODS:
                sent = request.headers.get(CSRF_HEADER, "")
                if not hmac.compare_digest(sent, csrf_token(session)):
                    return None  # a cookie without its header proves nothing
            return found
        return None

    # endpoints

    def smart_configuration(self, token_url: str) -> dict[str, Any]:
        return {
            "token_endpoint": token_url,
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic", "client_secret_post", "private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
            "scopes_supported": ["system/Appointment.read", "system/Appointment.write"],
            "capabilities": ["client-confidential-symmetric", "client-confidential-asymmetric"],
        }  # fmt: skip

    async def token(self, request: web.Request, token_url: str) -> web.Response:
        access = self.access
        if access is None:
            return _json(400, {"error": "unsupported_grant_type",
                               "error_description": "this listener has auth: none"})
        if request.content_type != "application/x-www-form-urlencoded":
            return _json(400, {"error": "invalid_request",
                               "error_description": "send a form (x-www-form-urlencoded)"})
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return _json(400, {"error": "unsupported_grant_type"})
        assertion = form.get("client_assertion")
        basic = basic_credentials(request.headers.get("Authorization", ""))
        if isinstance(assertion, str):
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                return _json(400, {"error": "invalid_request",
                                   "error_description": "unknown client_assertion_type"})
            found = await asyncio.to_thread(access.authenticate_assertion, assertion, token_url)
        elif basic is not None or isinstance(form.get("client_secret"), str):
            name, secret = basic or (str(form.get("client_id", "")),
                                     str(form.get("client_secret", "")))
            found = await asyncio.to_thread(access.authenticate_secret, name, secret)
        else:
            return _json(401, {"error": "invalid_client"},
                         {"WWW-Authenticate": 'Basic realm="engine"'})
        if isinstance(found, Refusal):
            await self.record(request, None, "E", "POST /auth/token", 4,
                              who=found.credential, query={"reason": found.reason})
            return _json(401, {"error": "invalid_client", "error_description": found.public})
        issued = await asyncio.to_thread(access.issue_access, found)
        await self.record(request, found, "E", "POST /auth/token")
        return _json(200, {"access_token": issued.text, "token_type": "bearer",
                           "expires_in": issued.expires_in,
                           "scope": _scope(found.role)})

    async def login(self, request: web.Request, secure: bool) -> web.Response:
        access = self.access
        if access is None:
            return _json(400, {"error": "this listener has auth: none"})
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict) or not all(
            isinstance(body.get(k), str) for k in ("user", "password")
        ):
            return _json(400, {"error": "send JSON {\"user\", \"password\", \"totp\"}"})
        code = body.get("totp") if isinstance(body.get("totp"), str) else None
        found = await asyncio.to_thread(access.login, body["user"], body["password"], code)
        if isinstance(found, Refusal):
            await self.record(request, None, "E", "POST /auth/login", 4,
                              who=found.credential, query={"reason": found.reason})
            return _json(401, {"error": found.public})
        identity = Identity(found.token.subject.partition(":")[2], found.token.role, "session")
        await self.record(request, identity, "E", "POST /auth/login")
        response = _json(200, {"role": found.token.role, "idle_timeout": found.token.idle,
                               "csrf_token": csrf_token(found.text)})
        _set_cookie(response, found, secure)
        return response

    async def logout(self, request: web.Request, identity: Identity) -> web.Response:
        assert self.access is not None
        header = request.headers.get("Authorization", "")
        scheme, _, text = header.partition(" ")
        token = text.strip() if scheme.lower() == "bearer" else request.cookies.get(SESSION_COOKIE)
        if token and not token.startswith("ek"):
            await asyncio.to_thread(self.access.end, token)
        await self.record(request, identity, "E", "POST /auth/logout")
        response = web.Response(status=204, headers={"Server": "engine"})
        response.del_cookie(SESSION_COOKIE, path="/")
        return response


def _set_cookie(response: web.Response, issued: Issued, secure: bool) -> None:
    response.set_cookie(SESSION_COOKIE, issued.text, path="/", httponly=True,
                        samesite="Strict", secure=secure)  # fmt: skip


def _scope(role: str) -> str:
    return {"system": "system/Appointment.write", "operator": "system/Appointment.read",
            "viewer": "system/Appointment.read"}.get(role, "")  # fmt: skip
