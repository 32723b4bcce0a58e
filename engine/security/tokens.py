"""API clients, the access tokens they are issued, and users' interactive sessions.

Rules kept here (issue 4 item 2; REFERENCE.md, "Security anchors"):
- An API client authenticates with OAuth 2.0 client credentials: either its secret
  (`cs_<43 random>`, shown once, stored as its SHA-256) or, for SMART Backend Services, a JWT
  assertion signed (RS384 or ES384) with the private half of its registered public key: `iss`
  and `sub` are the client's name, `aud` the token endpoint's URL, `exp` at most 5 minutes
  ahead, and `jti` never seen before for that client (the store keeps used ids until their
  assertions expire, so a replay is refused). A client never has the admin role.
- Access tokens (`et_<43 random>`) live 300 s (never more than 900 s); sessions
  (`es_<43 random>`) end after 15 minutes idle for admins and 30 minutes for other users, and
  after 12 hours whatever happens. Both are stored as SHA-256 hashes; nothing is cached, so
  disabling a client or a user, or logging out, ends them on the next request. A session's
  last use is written at most every `TOUCH_EVERY` seconds (a write per request would cost an
  fsync each), so idleness is measured to within that.
- Failures are recorded and counted for lockout like passwords and keys (`client:NAME`);
  junk that names no client, and unknown or ended tokens, are pooled and never locked. The
  refusal a caller sees is the same for every reason.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from engine.security.identities import (
    Identities,
    Identity,
    IdentityError,
    Refusal,
    check_name,
    key_hash,
)
from engine.security.identities_store import Client, Token

ACCESS_LIFETIME = 300.0
MAX_ACCESS_LIFETIME = 900.0
SESSION_IDLE: dict[str, float] = {"admin": 900.0}
DEFAULT_SESSION_IDLE = 1800.0
SESSION_MAX = 12 * 3600.0
TOUCH_EVERY = 15.0
MAX_ASSERTION_AHEAD = 300.0
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ("RS384", "ES384")
_POOLED_TOKEN = "token:(unknown)"


@dataclass(frozen=True)
class Issued:
    """A token or session at the one moment its text exists: hand `text` over, then drop it."""

    text: str
    token: Token

    @property
    def expires_in(self) -> int:
        return int(self.token.expires - self.token.issued)


def _new_text(tag: str) -> str:
    return f"{tag}_{secrets.token_urlsafe(32)}"


class Access:
    """API clients, access tokens and sessions over the identity store of `identities` (its
    clock and lockout policy too)."""

    def __init__(self, identities: Identities) -> None:
        self.identities = identities
        self.store = identities.store

    def now(self) -> float:
        return self.identities.now()

    # clients

    def add_client(self, name: str, role: str, *, public_key: str | None = None) -> str | None:
        """Register a client; returns its secret (to be shown once) unless it authenticates
        with assertions signed by `public_key` (PEM, RSA or EC P-384)."""
        check_name(name)
        if role not in ("operator", "viewer", "system", "auditor"):
            raise IdentityError("a client's role is operator, viewer, system or auditor "
                                "(admin requires a person with MFA)")
        secret = None
        if public_key is not None:
            _public_key(public_key)
        else:
            secret = _new_text("cs")
        client = Client(name, role, key_hash(secret) if secret else None, public_key,
                        self.now(), None)  # fmt: skip
        try:
            self.store.insert_client(client)
        except sqlite3.IntegrityError as exc:
            raise IdentityError(f"client {name!r} exists already") from exc
        return secret

    def clients(self) -> list[Client]:
        return self.store.clients()

    def disable_client(self, name: str) -> None:
        if not self.store.disable_client(name, self.now()):
            if self.store.client(name) is None:
                raise IdentityError(f"no client {name!r}")
            raise IdentityError(f"client {name!r} is disabled already")

    def authenticate_secret(self, name: str, secret: str) -> Identity | Refusal:
        credential = _client_credential(name)
        client = self.store.client(name) if credential != "client:(invalid name)" else None
        stored = client.secret_hash if client is not None else None
        ok = stored is not None and hmac.compare_digest(key_hash(secret), stored)
        return self._client(client, credential, None if ok else "bad_secret")

    def authenticate_assertion(self, assertion: str, audience: str) -> Identity | Refusal:
        """A SMART Backend Services client assertion for the token endpoint at `audience`."""
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
            name = unverified.get("iss")
        except jwt.PyJWTError:
            name = None
        if not isinstance(name, str):
            return self.identities.refuse("bad_assertion", "client:(invalid name)")
        credential = _client_credential(name)
        client = self.store.client(name) if credential != "client:(invalid name)" else None
        if client is None or client.public_key is None:
            return self._client(client, credential, "unknown_client")
        reason = self._check_assertion(assertion, audience, client)
        return self._client(client, credential, reason)

    def _check_assertion(
        self, assertion: str, audience: str, client: Client
    ) -> Literal["bad_assertion", "jti_replayed"] | None:
        assert client.public_key is not None
        try:
            claims: dict[str, Any] = jwt.decode(
                assertion,
                _public_key(client.public_key),
                algorithms=list(ASSERTION_ALGORITHMS),
                audience=audience,
                issuer=client.name,
                # exp and nbf are checked below against the engine's clock.
                options={"require": ["iss", "sub", "aud", "exp", "jti"],
                         "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )  # fmt: skip
        except (jwt.PyJWTError, IdentityError):
            return "bad_assertion"
        now = self.now()
        exp, jti = claims.get("exp"), claims.get("jti")
        if (
            claims.get("sub") != client.name
            or not isinstance(exp, int | float)
            or not now < exp <= now + MAX_ASSERTION_AHEAD
            or not isinstance(jti, str)
            or not 0 < len(jti) <= 256
            or (isinstance(claims.get("nbf"), int | float) and claims["nbf"] > now)
        ):
            return "bad_assertion"
        if not self.store.use_jti(client.name, jti, float(exp), now):
            return "jti_replayed"
        return None

    def _client(self, client: Client | None, credential: str, reason: Any) -> Identity | Refusal:
        locked = self.identities.locked(credential) is not None
        if locked:
            reason = "locked"
        elif client is None:
            reason = "unknown_client"
        elif reason is None and client.disabled is not None:
            reason = "client_disabled"
        if reason is not None or client is None:
            return self.identities.refuse(reason or "unknown_client", credential)
        return Identity(client.name, client.role, "client", kind="client")

    # access tokens and sessions

    def issue_access(self, identity: Identity, lifetime: float = ACCESS_LIFETIME) -> Issued:
        if not 0 < lifetime <= MAX_ACCESS_LIFETIME:
            raise IdentityError(f"an access token lives at most {int(MAX_ACCESS_LIFETIME)} s")
        return self._issue("et", "access", identity, lifetime, None)

    def login(self, name: str, password: str, code: str | None) -> Issued | Refusal:
        """A session for a user whose password (and TOTP code, when they have one) is right."""
        found = self.identities.authenticate_password(name, password, code)
        if isinstance(found, Refusal):
            return found
        idle = SESSION_IDLE.get(found.role, DEFAULT_SESSION_IDLE)
        return self._issue("es", "session", found, SESSION_MAX, idle)

    def _issue(
        self, tag: str, kind: str, identity: Identity, lifetime: float, idle: float | None
    ) -> Issued:
        now = self.now()
        text = _new_text(tag)
        token = Token(key_hash(text), kind, identity.subject, identity.role, now, now + lifetime,
                      idle, now, None)  # fmt: skip
        self.store.insert_token(token)
        return Issued(text, token)

    def check(self, text: str) -> Identity | Refusal:
        """The identity an access token or session speaks for, now."""
        if not text.startswith(("et_", "es_")) or len(text) > 64:
            return self.identities.refuse("unknown_token", _POOLED_TOKEN)
        digest = key_hash(text)
        token = self.store.token(digest)
        now = self.now()
        reason: Any = None
        if token is None:
            reason = "unknown_token"
        elif token.ended is not None:
            reason = "token_ended"
        elif now >= token.expires:
            reason = "token_expired"
        elif token.idle is not None and now >= token.last_seen + token.idle:
            reason = "session_idle"
        if reason is not None or token is None:
            return self.identities.refuse(reason or "unknown_token", _POOLED_TOKEN)
        kind, _, name = token.subject.partition(":")
        if not self._subject_enabled(kind, name):
            return self.identities.refuse("token_ended", _POOLED_TOKEN)
        if token.kind == "session" and now - token.last_seen >= TOUCH_EVERY:
            self.store.touch_token(digest, now)
        return Identity(name, token.role, "session" if token.kind == "session" else "token",
                        kind="client" if kind == "client" else "user")

    def end(self, text: str) -> bool:
        """Log out: the session or token stops working at once."""
        return self.store.end_token(key_hash(text), self.now())

    def _subject_enabled(self, kind: str, name: str) -> bool:
        if kind == "client":
            client = self.store.client(name)
            return client is not None and client.disabled is None
        user = self.store.user(name)
        return user is not None and user.disabled is None


def _client_credential(name: str) -> str:
    try:
        check_name(name)
    except IdentityError:
        return "client:(invalid name)"
    return f"client:{name}"


def _public_key(pem: str) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    """A registered key: RSA of 2048 bits or more, or EC P-384 (for RS384 / ES384)."""
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise IdentityError("not a PEM public key") from exc
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1):
        return key
    raise IdentityError("the public key must be RSA (2048 bits or more) or EC P-384")


def basic_credentials(header: str) -> tuple[str, str] | None:
    """`Authorization: Basic ...` (RFC 6749 2.3.1) → (client name, secret), else None."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        name, colon, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (name, secret) if colon else None

