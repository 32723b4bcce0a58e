"""The test kit's fake OAuth 2.0 token endpoint: client credentials with a shared secret (HTTP
Basic) or with a SMART Backend Services JWT assertion, for token client and FHIR destination
tests.

The rule it keeps: it checks what a strict authorization server checks and refuses with the
OAuth error JSON (RFC 6749 5.2) otherwise. A JWT assertion must be signed with the client's
registered key and algorithm, carry iss == sub == client_id and aud == this endpoint's URL,
expire in the future but no more than five minutes ahead, and bear a jti never seen before.
Client authentication failures are 401 `invalid_client` (SMART Backend Services says so for
every assertion problem); a malformed request is 400 `invalid_request` or
`unsupported_grant_type`. Issued tokens are opaque random strings that `valid(token)` checks
against expiry (by the injected clock) and `revoke(token)`, so a fake resource server can ask.

`fail_next(status)` queues failures the next requests get first; `hold()` keeps requests
waiting until `release()`, so tests can pile up concurrent callers or force a client timeout.
Tests wait on `wait_until(predicate)`, re-checked whenever a request arrives or is answered.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

import jwt
from aiohttp import web

from engine.auth.token_client import ASSERTION_TYPE, MAX_ASSERTION_LIFETIME
from engine.testing.http_fake import HttpFake

JWT_ALGORITHMS = ("RS384", "ES384")
_REQUIRED_CLAIMS = ["iss", "sub", "aud", "exp", "jti"]


@dataclass
class TokenRequest:
    """One request as the fake saw it (never the secret or the assertion itself)."""

    status: int
    error: str | None
    grant_type: str
    scope: str
    method: str | None  # "client_secret_basic" | "private_key_jwt" | None (no client auth)
    client_id: str | None
    jti: str | None = None
    kid: str | None = None


class _Refusal(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


class FakeTokenServer(HttpFake):
    route = "/token"
    method = "POST"

    """An OAuth token endpoint on aiohttp, served at `url` = http://host:port/token."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        expires_in: int | None = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(host, port)
        self.expires_in = expires_in  # None: leave expires_in out (tokens still live 300 s)
        self.clock = clock
        self.issued: list[str] = []
        self.requests: list[TokenRequest] = []
        self.held = 0  # requests waiting on hold()
        self._secrets: dict[str, str] = {}
        self._keys: dict[str, tuple[bytes, str]] = {}
        self._tokens: dict[str, float] = {}  # token -> expires at (clock seconds)
        self._jtis: set[tuple[str, str]] = set()
        self._failures: list[tuple[int, str]] = []
        self._gate: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/token"

    def add_secret_client(self, client_id: str, secret: str) -> None:
        self._secrets[client_id] = secret

    def add_jwt_client(self, client_id: str, public_key_pem: bytes, alg: str) -> None:
        if alg not in JWT_ALGORITHMS:
            raise ValueError(f"alg must be one of {JWT_ALGORITHMS}")
        self._keys[client_id] = (public_key_pem, alg)

    def fail_next(self, status: int, error: str = "server_error", times: int = 1) -> None:
        """Answer the next `times` requests with `status` and `{"error": error}`."""
        if not 400 <= status <= 599:
            raise ValueError("fail_next takes a 4xx or 5xx status")
        self._failures.extend([(status, error)] * times)

    def hold(self) -> None:
        """Keep every request from now on waiting until `release()`."""
        if self._gate is None:
            self._gate = asyncio.Event()

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.set()

    def revoke(self, token: str) -> None:
        self._tokens.pop(token, None)

    def valid(self, token: str) -> bool:
        expires_at = self._tokens.get(token)
        return expires_at is not None and self.clock() < expires_at

    async def stop(self) -> None:
        self.release()  # a held handler would otherwise stall the runner's shutdown
        await super().stop()

    async def _handle(self, request: web.Request) -> web.Response:
        gate = self._gate
        if gate is not None:
            self.held += 1
            self._changed()
            try:
                await gate.wait()
            finally:
                self.held -= 1
        form = await request.post() if request.content_type == _FORM else {}
        fields = {name: value for name, value in form.items() if isinstance(value, str)}
        seen = TokenRequest(
            status=200,
            error=None,
            grant_type=fields.get("grant_type", ""),
            scope=fields.get("scope", ""),
            method=None,
            client_id=None,
        )
        try:
            response = self._answer(request, fields, seen)
        except _Refusal as refusal:
            seen.status, seen.error = refusal.status, refusal.error
            response = _oauth_error(refusal)
        self.requests.append(seen)
        self._changed()
        return response

    def _answer(
        self, request: web.Request, fields: dict[str, str], seen: TokenRequest
    ) -> web.Response:
        if self._failures:
            status, error = self._failures.pop(0)
            raise _Refusal(status, error, "injected failure")
        if request.content_type != _FORM:
            raise _Refusal(400, "invalid_request", f"the body must be {_FORM}")
        if seen.grant_type != "client_credentials":
            raise _Refusal(400, "unsupported_grant_type", "only client_credentials is served")
        header = request.headers.get("Authorization", "")
        has_assertion = "client_assertion" in fields or "client_assertion_type" in fields
        if header and has_assertion:
            raise _Refusal(400, "invalid_request", "more than one client authentication method")
        if header:
            seen.method = "client_secret_basic"
            seen.client_id = self._check_basic(header)
        elif has_assertion:
            seen.method = "private_key_jwt"
            seen.client_id = self._check_assertion(fields, seen)
        else:
            raise _Refusal(401, "invalid_client", "no client authentication")
        return self._issue(seen.scope)

    def _check_basic(self, header: str) -> str:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            raise _Refusal(401, "invalid_client", "unsupported authentication scheme")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise _Refusal(401, "invalid_client", "malformed Basic credentials") from None
        raw_id, sep, raw_secret = decoded.partition(":")
        client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        expected = self._secrets.get(client_id)
        if not sep or expected is None or not hmac.compare_digest(
            secret.encode("utf-8"), expected.encode("utf-8")
        ):
            raise _Refusal(401, "invalid_client", "unknown client or wrong secret")
        return client_id

    def _check_assertion(self, fields: dict[str, str], seen: TokenRequest) -> str:
        if fields.get("client_assertion_type") != ASSERTION_TYPE:
            raise _Refusal(400, "invalid_request", "client_assertion_type must be jwt-bearer")
        assertion = fields.get("client_assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _Refusal(401, "invalid_client", "the assertion is not a JWT") from None
        kid = header.get("kid")
        seen.kid = kid if isinstance(kid, str) else None
        issuer = unverified.get("iss")
        if not isinstance(issuer, str) or issuer not in self._keys:
            raise _Refusal(401, "invalid_client", "unknown client")
        public_key, alg = self._keys[issuer]
        claims = self._verify(assertion, public_key, alg, issuer)
        jti = claims["jti"]
        seen.jti = jti if isinstance(jti, str) else None
        if claims["sub"] != issuer:
            raise _Refusal(401, "invalid_client", "sub must equal iss (the client id)")
        exp = claims["exp"]
        now = self.clock()
        if not isinstance(exp, int | float) or exp <= now:
            raise _Refusal(401, "invalid_client", "the assertion has expired")
        if exp > now + MAX_ASSERTION_LIFETIME:
            raise _Refusal(401, "invalid_client", "exp is more than five minutes ahead")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf > now:
            raise _Refusal(401, "invalid_client", "the assertion is not valid yet")
        if not isinstance(jti, str) or not jti or (issuer, jti) in self._jtis:
            raise _Refusal(401, "invalid_client", "jti missing or already used")
        # Only a fully checked assertion burns its jti: forged ones must not block the client.
        self._jtis.add((issuer, jti))
        return issuer

    def _verify(self, assertion: str, public_key: bytes, alg: str, issuer: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                assertion,
                public_key,
                algorithms=[alg],
                audience=self.url,
                issuer=issuer,
                # Time claims are checked against the injected clock below, not time.time().
                options={
                    "require": _REQUIRED_CLAIMS,
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise _Refusal(401, "invalid_client", "aud is not this token endpoint") from None
        except jwt.InvalidAlgorithmError:
            raise _Refusal(401, "invalid_client", f"the client is registered for {alg}") from None
        except jwt.InvalidSignatureError:
            raise _Refusal(401, "invalid_client", "bad signature for this client") from None
        except jwt.PyJWTError as exc:
            raise _Refusal(401, "invalid_client", f"invalid assertion: {exc}") from None

    def _issue(self, scope: str) -> web.Response:
        token = secrets.token_urlsafe(32)
        lifetime = self.expires_in if self.expires_in is not None else 300
        self._tokens[token] = self.clock() + lifetime
        self.issued.append(token)
        body: dict[str, Any] = {"access_token": token, "token_type": "bearer"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        if scope:
            body["scope"] = scope
        return web.json_response(body, headers=_NO_STORE)


_FORM = "application/x-www-form-urlencoded"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _oauth_error(refusal: _Refusal) -> web.Response:
    headers = dict(_NO_STORE)
    if refusal.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="token"'
    body = {"error": refusal.error, "error_description": refusal.description}
    return web.json_response(body, status=refusal.status, headers=headers)
