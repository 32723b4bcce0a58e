"""OAuth 2.0 access tokens for outbound calls: client credentials with a shared secret
(RFC 6749 4.4, HTTP Basic per 2.3.1) or with a signed JWT client assertion (SMART Backend
Services, RFC 7523: RS384 or ES384, iss = sub = client_id, aud = token URL, exp <= 5 minutes,
a fresh random jti per request).

The rules it keeps: one token is cached per client and renewed before it expires (or after the
resource server said 401, through `invalidate`); concurrent callers share ONE in-flight request;
and no secret, assertion, key or token ever appears in an exception text or a repr.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Any, Literal
from urllib.parse import quote_plus, urlsplit

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME = 300  # SMART: a token server refuses exp more than 5 minutes ahead
# A minute less than allowed keeps an assertion acceptable to a token server whose clock is
# somewhat behind ours.
ASSERTION_LIFETIME = 240
MAX_TOKEN_LIFETIME = 86400.0  # an expires_in beyond a day is not believed
DEFAULT_EXPIRES_IN = 300  # when the server leaves expires_in out
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


@dataclass(frozen=True)
class ClientSecretAuth:
    """A confidential client that authenticates with a shared secret (HTTP Basic)."""

    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str = ""


@dataclass(frozen=True)
class SmartBackendAuth:
    """A SMART Backend Services client: authenticates with a JWT signed by its private key."""

    token_url: str
    client_id: str
    private_key_pem: bytes = field(repr=False)
    algorithm: Literal["RS384", "ES384"]
    key_id: str = ""
    scope: str = "system/Appointment.write"


class TokenError(Exception):
    """The token endpoint gave no token. `error` is the OAuth error code (or one of ours:
    server_error, timeout, connection_error, invalid_response); `retryable` says whether the
    same request may succeed later (5xx, 429, timeouts, dropped connections)."""

    def __init__(
        self, message: str, *, error: str, retryable: bool, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.error = error
        self.retryable = retryable
        self.status = status


@dataclass(frozen=True)
class _Token:
    value: str = field(repr=False)
    obtained_at: float
    expires_at: float


class TokenClient:
    """Hands out a valid bearer token for one client, fetching it only when needed."""

    def __init__(
        self,
        auth: ClientSecretAuth | SmartBackendAuth,
        *,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
        early: float = 30.0,
        timeout: float = 10.0,
        ssl: SSLContext | bool = True,
    ) -> None:
        self.auth = auth
        # TLS of the session it opens itself (engine.security.tls.client_context for https).
        self._ssl = ssl
        self._session = session
        self._own_session = session is None
        self._clock = clock
        self._early = early
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._key = _load_key(auth) if isinstance(auth, SmartBackendAuth) else None
        self._cached: _Token | None = None
        self._inflight: asyncio.Task[_Token] | None = None
        self._where = _safe_url(auth.token_url)

    async def token(self) -> str:
        """A bearer token valid for at least `early` more seconds (or half its lifetime, when
        the server issues tokens shorter than twice `early`)."""
        cached = self._cached
        if cached is not None and self._fresh(cached):
            return cached.value
        if self._inflight is None:
            self._inflight = asyncio.get_running_loop().create_task(self._refresh())
        # shield: a caller that gives up must not cancel the fetch the others are awaiting.
        return (await asyncio.shield(self._inflight)).value

    def invalidate(self, token: str | None = None) -> None:
        """Forget the cached token (the resource server answered 401). Given the token that
        was refused, forget it only if it is still the cached one: several requests refused
        with the same old token then cause one renewal, not one each."""
        if token is None or (self._cached is not None and self._cached.value == token):
            self._cached = None

    async def close(self) -> None:
        inflight, self._inflight = self._inflight, None
        if inflight is not None and not inflight.done():
            inflight.cancel()
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    def _fresh(self, token: _Token) -> bool:
        margin = min(self._early, (token.expires_at - token.obtained_at) / 2)
        return self._clock() < token.expires_at - margin

    async def _refresh(self) -> _Token:
        try:
            token = await self._request()
            self._cached = token
            return token
        finally:
            self._inflight = None

    async def _request(self) -> _Token:
        auth = self.auth
        form = {"grant_type": "client_credentials"}
        headers = {"Accept": "application/json"}
        if isinstance(auth, ClientSecretAuth):
            # RFC 6749 2.3.1: both parts are form-urlencoded before they go into Basic.
            pair = f"{quote_plus(auth.client_id)}:{quote_plus(auth.client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_assertion_type"] = ASSERTION_TYPE
            form["client_assertion"] = self._assertion(auth)
        if auth.scope:
            form["scope"] = auth.scope
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl))
        started = self._clock()
        try:
            async with self._session.post(
                auth.token_url,
                data=form,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                status = response.status
                body = await response.read()
        except TimeoutError:
            raise self._error("timed out", "timeout", retryable=True) from None
        except aiohttp.ClientError as exc:
            reason = type(exc).__name__
            raise self._error(f"failed ({reason})", "connection_error", retryable=True) from None
        return self._parse(status, body, started)

    def _assertion(self, auth: SmartBackendAuth) -> str:
        now = int(self._clock())
        claims = {
            "iss": auth.client_id,
            "sub": auth.client_id,
            "aud": auth.token_url,
            "exp": now + ASSERTION_LIFETIME,
            "jti": secrets.token_urlsafe(24),
        }
        headers = {"typ": "JWT", "kid": auth.key_id} if auth.key_id else {"typ": "JWT"}
        assert self._key is not None  # set in __init__ for every SmartBackendAuth
        return jwt.encode(claims, self._key, algorithm=auth.algorithm, headers=headers)

    def _parse(self, status: int, body: bytes, started: float) -> _Token:
        data = _json_object(body)
        if status >= 500 or status == 429:
            code = _error_code(data) or "server_error"
            raise self._error(f"answered HTTP {status}", code, retryable=True, status=status)
        if status >= 400:
            code = _error_code(data) or "invalid_request"
            raise self._error(f"refused: {code} (HTTP {status})", code, False, status=status)
        if status != 200 or data is None:
            raise self._error(f"gave no token (HTTP {status})", "invalid_response", True, status)
        value = data.get("access_token")
        kind = data.get("token_type")
        expires_in = data.get("expires_in", DEFAULT_EXPIRES_IN)
        if not isinstance(value, str) or not value:
            raise self._error("answered without access_token", "invalid_response", True, status)
        if not isinstance(kind, str) or kind.lower() != "bearer":
            raise self._error("answered a non-bearer token", "invalid_response", False, status)
        lifetime = _seconds(expires_in)
        if lifetime is None:
            raise self._error("answered a bad expires_in", "invalid_response", True, status)
        # Lifetime counts from when the request left: the clock ran while it was in flight.
        return _Token(value=value, obtained_at=started, expires_at=started + lifetime)

    def _error(
        self, what: str, code: str, retryable: bool, status: int | None = None
    ) -> TokenError:
        message = f"token request for client {self.auth.client_id!r} at {self._where} {what}"
        return TokenError(message, error=code, retryable=retryable, status=status)


def _load_key(
    auth: SmartBackendAuth,
) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """Load the private key once and check it fits the algorithm, so a misconfiguration shows
    at start-up rather than as a refused token later. Errors never quote the key."""
    try:
        key = serialization.load_pem_private_key(auth.private_key_pem, password=None)
    except (ValueError, TypeError):
        raise ValueError(
            f"SMART client {auth.client_id!r}: private_key_pem is not an unencrypted PEM key"
        ) from None
    if auth.algorithm == "RS384" and isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ValueError(f"SMART client {auth.client_id!r}: RS384 needs an RSA key >= 2048")
        return key
    if (
        auth.algorithm == "ES384"
        and isinstance(key, ec.EllipticCurvePrivateKey)
        and isinstance(key.curve, ec.SECP384R1)
    ):
        return key
    raise ValueError(
        f"SMART client {auth.client_id!r}: the key does not fit {auth.algorithm} "
        "(RS384 takes an RSA key, ES384 a P-384 EC key)"
    )


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _error_code(data: dict[str, Any] | None) -> str | None:
    """The OAuth `error` code, only if it looks like one: a hostile or broken server must not
    get arbitrary text into our messages (error_description is left out for the same reason)."""
    code = data.get("error") if data is not None else None
    return code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else None


def _seconds(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    # math.isfinite: json.loads accepts Infinity and NaN, which would cache a token forever.
    if isinstance(value, int | float) and math.isfinite(value) and value > 0:
        return min(float(value), MAX_TOKEN_LIFETIME)
    return None


def _safe_url(url: str) -> str:
    """The token URL without userinfo or query, which could carry credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
