"""Who may use the engine: users (password + TOTP) and API keys, and how each is checked.

Rules kept here:
- Passwords are hashed with scrypt (n=2**15, r=8, p=1, 16-byte random salt per user); the
  parameters are stored with each hash so they can be raised later without breaking old ones.
  Hashes are compared in constant time, and an unknown user costs the same scrypt as a known
  one, so timing does not say which names exist.
- The admin role requires TOTP: an admin is always created with a secret, and an admin
  without one is refused. A TOTP step, once used, is never accepted again for that user.
- API keys are `<prefix>_<random>`: shown once by `create_key` / `rotate_key`, stored as the
  SHA-256 of the whole key beside the public prefix that finds the row. A key always expires;
  it never carries the admin role (a key is one factor, and admin requires two); it carries
  its owner's role, or any other non-admin role when the owner is an admin. Rotation issues a
  new key and leaves the old one valid for an overlap period only. Revocation, disabling a
  user and expiry take effect on the next check: nothing is cached.
- `authenticate_*` return an `Identity` or a `Refusal`. A refusal's `reason` is for the audit
  trail and the lockout counter; callers answer with `Refusal.public` (the same text for
  every reason), never saying which part was wrong. Every refusal is recorded per credential
  with its time.
- Lockout (issue 4 item 6): `LockoutPolicy.failures` refusals of one credential within
  `window` lock it until `lock_for` after the last of them, or until an admin unlocks it.
  The lock is a row taken from the stored failures in the transaction that records the last
  one (so it survives a restart and two processes lock it once), never an in-memory counter.
  While locked, every attempt is refused with the reason `locked` (the right password still
  costs its scrypt; a TOTP step is not spent), recorded, and not counted towards the next
  lock; nor is `totp_required` (the right password, its code still to come). Taking a lock
  logs one `ALERT credential locked` line on `engine.alerts`, naming the credential (a staff
  user name or a key prefix), never a password, code or key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from engine.config.model import LockoutConfig
from engine.security import totp
from engine.security.alerts import LOGGER, alert_extra
from engine.security.identities_store import ROLES, ApiKey, IdentityStore, Lock, User

alerts = logging.getLogger(LOGGER)

SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_MAXMEM = 128 * SCRYPT_N * SCRYPT_R * SCRYPT_P * 2  # scrypt needs 128*n*r*p bytes
SALT_BYTES = 16
HASH_BYTES = 32
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # scrypt runs on the whole text: a cap keeps a huge body from costing more
KEY_PREFIX_TAG = "ek"
MAX_KEY_LIFETIME = 365 * 86400.0
MFA_ROLES = frozenset({"admin"})
PUBLIC_REFUSAL = "authentication failed"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_KEY = re.compile(r"^(ek[0-9a-f]{12})_([A-Za-z0-9_-]{43})$")

Reason = Literal[
    "unknown_user", "disabled", "bad_password", "totp_required", "bad_totp", "totp_reused",
    "mfa_not_enrolled", "malformed_key", "unknown_key", "key_revoked", "key_expired",
    "owner_disabled", "locked", "unknown_client", "client_disabled", "bad_secret",
    "bad_assertion", "jti_replayed", "unknown_token", "token_expired", "session_idle",
    "token_ended",
]  # fmt: skip


class IdentityError(ValueError):
    """A request the identity rules refuse (bad name, weak password, unknown key, ...), said
    plainly for the operator. Never quotes a password, a key or a secret."""


@dataclass(frozen=True)
class LockoutPolicy:
    """`failures` refusals of one credential within `window` seconds lock it for `lock_for`
    seconds after the last of them (defaults: 5 within 15 minutes, locked 15 minutes)."""

    failures: int = 5
    window: float = 15 * 60.0
    lock_for: float = 15 * 60.0

    def __post_init__(self) -> None:
        if isinstance(self.failures, bool) or not isinstance(self.failures, int):
            raise IdentityError("lockout failures must be a whole number")
        if self.failures < 1:
            raise IdentityError("lockout failures must be at least 1")
        for name in ("window", "lock_for"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise IdentityError(f"lockout {name} must be a positive number of seconds")

    @classmethod
    def of(cls, config: LockoutConfig) -> LockoutPolicy:
        """The policy routes.yaml's `security.lockout` asks for."""
        return cls(config.failures, config.window, config.lock_for)


@dataclass(frozen=True)
class Identity:
    """Who was authenticated, and with what."""

    name: str  # the user, the key's owner, or the API client
    role: str
    via: Literal["password", "key", "client", "token", "session"]
    key_prefix: str | None = None
    kind: Literal["user", "client", "os"] = "user"  # os: the CLI's OS user (development)

    @property
    def subject(self) -> str:
        """"user:NAME", "client:NAME" or "os:NAME": what tokens and the audit trail name."""
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class Refusal:
    """Why authentication failed. `reason` is for the audit trail; callers show `public`."""

    reason: Reason
    credential: str  # "user:NAME", "key:PREFIX", "client:NAME": what the failure counts against

    @property
    def public(self) -> str:
        return PUBLIC_REFUSAL


@dataclass(frozen=True)
class IssuedKey:
    """A key at the one moment its full text exists: show `secret` once, then drop it."""

    secret: str
    key: ApiKey


# password hashing


def hash_password(password: str, salt: bytes | None = None) -> str:
    """`scrypt$n$r$p$salt$hash`, salt and hash in unpadded base64."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, HASH_BYTES)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        actual = _scrypt(password, _unb64(salt), int(n), int(r), int(p), len(expected))
    except ValueError:  # a damaged stored hash refuses, it does not crash a login
        return False
    return hmac.compare_digest(actual, expected)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length,
        maxmem=max(SCRYPT_MAXMEM, 256 * n * r * p),
    )  # fmt: skip


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


_DUMMY_HASH: str | None = None


def _dummy_hash() -> str:
    """Checked against when the user does not exist, so that costs one scrypt too."""
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_password(secrets.token_urlsafe(16))
    return _DUMMY_HASH


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


# the service


class Identities:
    """Users and API keys over one IdentityStore, with the time taken from `now`."""

    def __init__(
        self,
        store: IdentityStore,
        now: Callable[[], float] = time.time,
        lockout: LockoutPolicy | None = None,
    ) -> None:
        self.store = store
        self.now = now
        self.lockout = lockout or LockoutPolicy()

    # users

    def add_user(self, name: str, role: str, password: str, *, mfa: bool = False) -> str | None:
        """Create a user; returns the new TOTP secret (always for admin, else when `mfa`), to
        be shown once as a provisioning URI."""
        check_name(name)
        _check_role(role)
        if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise IdentityError(
                f"a password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long"
            )
        secret = totp.new_secret() if (mfa or role in MFA_ROLES) else None
        user = User(name, role, hash_password(password), secret, -1, self.now(), None)
        try:
            self.store.insert_user(user)
        except sqlite3.IntegrityError as exc:
            raise IdentityError(f"user {name!r} exists already") from exc
        return secret

    def disable_user(self, name: str) -> None:
        """The user can no longer log in, and the keys they own stop working at once."""
        if not self.store.disable_user(name, self.now()):
            if self.store.user(name) is None:
                raise IdentityError(f"no user {name!r}")
            raise IdentityError(f"user {name!r} is disabled already")

    def users(self) -> list[User]:
        return self.store.users()

    def authenticate_password(
        self, name: str, password: str, code: str | None
    ) -> Identity | Refusal:
        credential = f"user:{name}" if _NAME.match(name) else "user:(invalid name)"
        user = self.store.user(name) if _NAME.match(name) else None
        # The scrypt runs whatever happens next: refusals cost the same for every reason.
        fits = isinstance(password, str) and len(password) <= MAX_PASSWORD
        stored = user.password if user else _dummy_hash()
        ok = check_password(password if fits else "", stored) and fits
        reason: Reason | None = None
        if self.locked(credential) is not None:
            reason = "locked"  # checked after the scrypt, and before a TOTP step is spent
        elif user is None:
            reason = "unknown_user"
        elif not ok:
            reason = "bad_password"
        elif user.disabled is not None:
            reason = "disabled"
        elif user.totp_secret is None:
            reason = "mfa_not_enrolled" if user.role in MFA_ROLES else None
        elif not code:
            reason = "totp_required"
        else:
            step = totp.match(user.totp_secret, code, self.now(), after_step=user.totp_last_step)
            if step is None:
                used = totp.match(user.totp_secret, code, self.now())
                reason = "bad_totp" if used is None else "totp_reused"
            elif not self.store.use_totp_step(user.name, step):
                reason = "totp_reused"  # another login claimed this step first
        if reason is not None or user is None:
            return self.refuse(reason or "unknown_user", credential)
        return Identity(user.name, user.role, "password")

    # API keys

    def create_key(self, owner: str, role: str, lifetime: float) -> IssuedKey:
        user = self.store.user(owner)
        if user is None:
            raise IdentityError(f"no user {owner!r} to own the key")
        if user.disabled is not None:
            raise IdentityError(f"user {owner!r} is disabled")
        _check_role(role)
        if role == "admin":
            raise IdentityError("an API key cannot have the admin role (admin requires MFA)")
        if role != user.role and user.role != "admin":
            raise IdentityError(
                f"a key owned by {owner!r} carries their role ({user.role}); only an admin's "
                "keys may carry another role"
            )
        _check_lifetime(lifetime)
        now = self.now()
        issued = _new_key(owner, role, now, now + lifetime)
        self.store.insert_key(issued.key)
        return issued

    def keys(self) -> list[ApiKey]:
        return self.store.keys()

    def rotate_key(self, prefix: str, overlap: float) -> IssuedKey:
        """A new key for the same owner and role, with the old key's lifetime; the old key
        stays valid for `overlap` seconds more (or until it expires, if sooner)."""
        old = self._key(prefix)
        now = self.now()
        if old.revoked is not None:
            raise IdentityError(f"key {prefix} is revoked")
        if old.replaced_by is not None:
            raise IdentityError(f"key {prefix} was rotated already (to {old.replaced_by})")
        if now >= old.expires:
            raise IdentityError(f"key {prefix} has expired: create a new one")
        if overlap < 0 or overlap > MAX_KEY_LIFETIME:
            raise IdentityError("the overlap must be between 0 and 365 days")
        issued = _new_key(old.owner, old.role, now, now + (old.expires - old.created))
        if not self.store.rotate_key(prefix, issued.key, now + overlap):
            raise IdentityError(f"key {prefix} was revoked or rotated meanwhile")
        return issued

    def revoke_key(self, prefix: str) -> None:
        if not self.store.revoke_key(prefix, self.now()):
            self._key(prefix)
            raise IdentityError(f"key {prefix} is revoked already")

    def authenticate_key(self, secret: str) -> Identity | Refusal:
        found = _KEY.match(secret.strip()) if isinstance(secret, str) else None
        if found is None:
            return self.refuse("malformed_key", "key:(malformed)")
        prefix = found.group(1)
        credential = f"key:{prefix}"
        if self.locked(credential) is not None:
            return self.refuse("locked", credential)
        key = self.store.key(prefix)
        digest = key_hash(found.group(0))
        if key is None or not hmac.compare_digest(digest, key.hash):
            return self.refuse("unknown_key", credential)
        if key.revoked is not None:
            return self.refuse("key_revoked", credential)
        if self.now() >= key.expires:
            return self.refuse("key_expired", credential)
        owner = self.store.user(key.owner)
        if owner is None or owner.disabled is not None:
            return self.refuse("owner_disabled", credential)
        return Identity(key.owner, key.role, "key", prefix)

    def failures(self, credential: str, window: float) -> list[tuple[float, str]]:
        """Refusals counted against `credential` in the last `window` seconds."""
        return self.store.failures(credential, self.now() - window)

    # lockout

    def locked(self, credential: str) -> Lock | None:
        """The lock on `credential` ("user:NAME" or "key:PREFIX") if it is locked now."""
        lock = self.store.lock(credential)
        return lock if lock is not None and self.now() < lock.until else None

    def locks(self) -> list[Lock]:
        """Every lock in force now."""
        return self.store.locks(self.now())

    def unlock_user(self, name: str) -> bool:
        """Lift the user's lock and clear their failure window; true when it was locked."""
        if self.store.user(name) is None:
            raise IdentityError(f"no user {name!r}")
        return self.store.unlock(f"user:{name}", self.now())

    def unlock_key(self, prefix: str) -> bool:
        """Lift the key's lock and clear its failure window; true when it was locked."""
        self._key(prefix)
        return self.store.unlock(f"key:{prefix}", self.now())

    def refuse(self, reason: Reason, credential: str) -> Refusal:
        """Record a refusal of `credential` (and lock it when the policy says so)."""
        now = self.now()
        if reason == "locked" or credential.endswith(")"):
            # "user:(invalid name)" and "key:(malformed)" pool everyone's junk: locking them
            # would lock nothing real and only raise false alerts.
            self.store.record_failure(credential, now, reason)
            return Refusal(reason, credential)
        policy = self.lockout
        lock = self.store.record_failure_and_lock(
            credential, now, reason, since=now - policy.window, threshold=policy.failures,
            until=now + policy.lock_for,
        )  # fmt: skip
        if lock is not None:
            alerts.warning(
                "ALERT credential locked: %s after %d failed attempts in %s",
                credential, lock.failures, _span(policy.window),
                extra=alert_extra("credential_locked", credential=credential,
                                  failures=lock.failures, window=policy.window),
            )  # fmt: skip
        return Refusal(reason, credential)

    def _key(self, prefix: str) -> ApiKey:
        key = self.store.key(prefix)
        if key is None:
            raise IdentityError(f"no API key with prefix {prefix!r}")
        return key


def _new_key(owner: str, role: str, created: float, expires: float) -> IssuedKey:
    prefix = KEY_PREFIX_TAG + secrets.token_hex(6)
    secret = f"{prefix}_{secrets.token_urlsafe(32)}"
    return IssuedKey(secret, ApiKey(prefix, key_hash(secret), owner, role, created, expires,
                                    None, None))  # fmt: skip


def _span(seconds: float) -> str:
    """15 min, 1 h, 90 s: the window as the alert states it."""
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise IdentityError(
            "a user name is 1 to 64 characters: letters, digits and . _ @ -, starting with a "
            "letter or digit"
        )


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise IdentityError(f"role must be one of {', '.join(ROLES)}")


def _check_lifetime(lifetime: float) -> None:
    if not 0 < lifetime <= MAX_KEY_LIFETIME:
        raise IdentityError("a key's lifetime must be more than 0 and at most 365 days")
