"""The identity store's own SQLite file: users, API keys, API clients, access tokens and
sessions, used assertion ids, failed authentications and locks.

Rules kept here: the file is created private (0600; SQLite gives its WAL the same mode) and
lives apart from the message store and the audit trail (`<store>.identities.db`); it holds
password hashes and API-key hashes, never a password or a key; every write is fsynced before
it returns (WAL, synchronous=FULL), so a revocation is on disk, and seen by every other
connection, the moment `revoke_key` returns. The policy (who may have what, what a hash is)
lives in `identities`; this module stores rows and keeps the few invariants SQL can keep
(roles, one use per TOTP step, rotation in one transaction, a failure recorded and the lock
it brings taken in one transaction, so two racing refusals lock a credential once, one use
per assertion `jti` by a primary key). Tokens and sessions are stored as the SHA-256 of their
text, like API keys.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.security.private_db import open_private_db

SCHEMA_VERSION = 3  # 2: lockouts, 3: clients, tokens, used assertion ids
ROLES: tuple[str, ...] = ("admin", "operator", "viewer", "system", "auditor")
_ROLE_CHECK = "role IN ('admin', 'operator', 'viewer', 'system', 'auditor')"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK ({_ROLE_CHECK}),
    password TEXT NOT NULL,           -- scrypt$n$r$p$salt$hash
    totp_secret TEXT,                 -- base32; NULL when the user has no second factor
    totp_last_step INTEGER NOT NULL DEFAULT -1,
    created REAL NOT NULL,
    disabled REAL
);
CREATE TABLE IF NOT EXISTS api_keys (
    prefix TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,        -- SHA-256 hex of the whole key
    owner TEXT NOT NULL REFERENCES users (name),
    role TEXT NOT NULL CHECK ({_ROLE_CHECK} AND role != 'admin'),
    created REAL NOT NULL,
    expires REAL NOT NULL,
    revoked REAL,
    replaced_by TEXT REFERENCES api_keys (prefix)
);
CREATE TABLE IF NOT EXISTS auth_failures (
    id INTEGER PRIMARY KEY,
    credential TEXT NOT NULL,         -- "user:NAME" or "key:PREFIX"
    at REAL NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS auth_failures_credential ON auth_failures (credential, at);
CREATE TABLE IF NOT EXISTS lockouts (
    credential TEXT PRIMARY KEY,      -- "user:NAME" or "key:PREFIX"
    locked_at REAL,                   -- the failure that locked it; NULL if never locked
    until REAL NOT NULL,              -- locked while now < until
    failures INTEGER NOT NULL,        -- how many failures in the window locked it
    counted_after REAL NOT NULL       -- failures at or before this no longer count
);
CREATE TABLE IF NOT EXISTS clients (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK ({_ROLE_CHECK} AND role != 'admin'),
    secret_hash TEXT,                 -- SHA-256 hex of the client secret (client credentials)
    public_key TEXT,                  -- PEM of the key its assertions are signed with (SMART)
    created REAL NOT NULL,
    disabled REAL,
    CHECK ((secret_hash IS NULL) != (public_key IS NULL))
);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,            -- SHA-256 hex of the token or session text
    kind TEXT NOT NULL CHECK (kind IN ('access', 'session')),
    subject TEXT NOT NULL,            -- "client:NAME", "user:NAME"
    role TEXT NOT NULL CHECK ({_ROLE_CHECK}),
    issued REAL NOT NULL,
    expires REAL NOT NULL,            -- the absolute end
    idle REAL,                        -- a session ends this long after last_seen
    last_seen REAL NOT NULL,
    ended REAL
);
CREATE INDEX IF NOT EXISTS tokens_subject ON tokens (subject);
CREATE TABLE IF NOT EXISTS used_jtis (
    client TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires REAL NOT NULL,            -- kept until the assertion could no longer be used
    PRIMARY KEY (client, jti)
);
"""
_USER_COLUMNS = "name, role, password, totp_secret, totp_last_step, created, disabled"
_KEY_COLUMNS = "prefix, hash, owner, role, created, expires, revoked, replaced_by"
_LOCK_COLUMNS = "credential, locked_at, until, failures, counted_after"
_CLIENT_COLUMNS = "name, role, secret_hash, public_key, created, disabled"
_TOKEN_COLUMNS = "hash, kind, subject, role, issued, expires, idle, last_seen, ended"
# Recorded for the audit, never counted towards a lock: an attempt made while locked (else
# whoever keeps guessing would keep the real owner out for ever), and the right password sent
# without its TOTP code (the first step of a two-step login, which guesses nothing).
NOT_COUNTED = ("locked", "totp_required")


class _Rollback(Exception):
    """Raised inside `_immediate` to undo the transaction without an error."""


class IdentityStoreError(Exception):
    """The identity file cannot be opened, read or written. Never quotes a secret."""


@dataclass(frozen=True, repr=False)
class User:
    name: str
    role: str
    password: str  # the encoded hash, never the password
    totp_secret: str | None
    totp_last_step: int
    created: float
    disabled: float | None

    def __repr__(self) -> str:  # the hash and the TOTP secret stay out of logs
        return f"User({self.name!r}, role={self.role}, disabled={self.disabled is not None})"


@dataclass(frozen=True)
class ApiKey:
    """A stored key: its public prefix and the hash of the whole key, never the key."""

    prefix: str
    hash: str
    owner: str
    role: str
    created: float
    expires: float
    revoked: float | None
    replaced_by: str | None


@dataclass(frozen=True)
class Lock:
    """A credential's lock row: locked while `now < until`."""

    credential: str
    locked_at: float | None
    until: float
    failures: int
    counted_after: float


@dataclass(frozen=True, repr=False)
class Client:
    """An API client: authenticated by a secret (its hash kept) or by assertions signed with
    its registered public key."""

    name: str
    role: str
    secret_hash: str | None
    public_key: str | None
    created: float
    disabled: float | None

    def __repr__(self) -> str:
        return f"Client({self.name!r}, role={self.role}, disabled={self.disabled is not None})"


@dataclass(frozen=True)
class Token:
    """An access token or a session, by the hash of its text (never the text)."""

    hash: str
    kind: str  # access | session
    subject: str  # "client:NAME" | "user:NAME"
    role: str
    issued: float
    expires: float
    idle: float | None
    last_seen: float
    ended: float | None


class IdentityStore:
    """One identity file. Thread-safe: calls share one connection under one lock; other
    processes (the CLI beside a running engine) are serialised by SQLite's write lock."""

    def __init__(self, path: Path, *, busy_timeout: float = 30.0) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn = self._open(busy_timeout)

    def _open(self, busy_timeout: float) -> sqlite3.Connection:
        return open_private_db(
            self.path,
            schema=_SCHEMA,
            version=SCHEMA_VERSION,
            what="identity store",
            error=IdentityStoreError,
            busy_timeout=busy_timeout,
            foreign_keys=True,
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> IdentityStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction under the lock: committed when the block ends, rolled
        back when it raises (`_Rollback`: quietly, the block decided); SQLite errors become
        IdentityStoreError."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except _Rollback:
                    conn.execute("ROLLBACK")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise IdentityStoreError(f"identity store {self.path}: {exc}") from exc

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[list[Any], int]:
        """Rows and rowcount, both read under the lock (the connection is shared)."""
        with self._lock:
            try:
                cur = self._conn.execute(sql, params)
                return cur.fetchall(), cur.rowcount
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                raise IdentityStoreError(f"identity store {self.path}: {exc}") from exc

    # users

    def insert_user(self, user: User) -> None:
        """Raises sqlite3.IntegrityError when the name is taken."""
        self._run(
            f"INSERT INTO users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (user.name, user.role, user.password, user.totp_secret, user.totp_last_step,
             user.created, user.disabled),
        )  # fmt: skip

    def user(self, name: str) -> User | None:
        rows, _ = self._run(f"SELECT {_USER_COLUMNS} FROM users WHERE name = ?", (name,))
        return User(*rows[0]) if rows else None

    def users(self) -> list[User]:
        rows, _ = self._run(f"SELECT {_USER_COLUMNS} FROM users ORDER BY name")
        return [User(*r) for r in rows]

    def disable_user(self, name: str, at: float) -> bool:
        """True when the user existed and was enabled."""
        _, changed = self._run(
            "UPDATE users SET disabled = ? WHERE name = ? AND disabled IS NULL", (at, name)
        )
        return changed == 1

    def use_totp_step(self, name: str, step: int) -> bool:
        """Claim a TOTP step for `name`: true only if it is later than the last one claimed.
        One conditional UPDATE, so two logins racing with the same code cannot both win."""
        _, changed = self._run(
            "UPDATE users SET totp_last_step = ? WHERE name = ? AND totp_last_step < ?",
            (step, name, step),
        )
        return changed == 1

    # API keys

    def insert_key(self, key: ApiKey) -> None:
        self._run(f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  _key_row(key))  # fmt: skip

    def key(self, prefix: str) -> ApiKey | None:
        rows, _ = self._run(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE prefix = ?", (prefix,))
        return ApiKey(*rows[0]) if rows else None

    def keys(self) -> list[ApiKey]:
        sql = f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created, prefix"
        rows, _ = self._run(sql)
        return [ApiKey(*r) for r in rows]

    def rotate_key(self, old: str, new: ApiKey, old_expires: float) -> bool:
        """Insert `new` and shorten `old` to `old_expires`, in one transaction; false (and
        nothing changed) when `old` was revoked or rotated in the meantime."""
        with self._immediate() as conn:
            # The new row first: the old one's replaced_by refers to it.
            conn.execute(
                f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                _key_row(new),
            )
            cur = conn.execute(
                "UPDATE api_keys SET expires = MIN(expires, ?), replaced_by = ? "
                "WHERE prefix = ? AND revoked IS NULL AND replaced_by IS NULL",
                (old_expires, new.prefix, old),
            )
            if cur.rowcount == 1:
                return True
            raise _Rollback  # old was revoked or rotated meanwhile: undo the insert
        return False

    def revoke_key(self, prefix: str, at: float) -> bool:
        """True when the key existed and was not revoked already."""
        _, changed = self._run(
            "UPDATE api_keys SET revoked = ? WHERE prefix = ? AND revoked IS NULL", (at, prefix)
        )
        return changed == 1

    # failed authentications and locks

    def record_failure(self, credential: str, at: float, reason: str) -> None:
        self._run(
            "INSERT INTO auth_failures (credential, at, reason) VALUES (?, ?, ?)",
            (credential, at, reason),
        )

    def record_failure_and_lock(
        self,
        credential: str,
        at: float,
        reason: str,
        *,
        since: float,
        threshold: int,
        until: float,
    ) -> Lock | None:
        """Record a failure; then, if `threshold` counted failures of `credential` lie at or
        after `since` (and after the last lock or unlock) and it is not locked at `at`, lock
        it until `until`. One transaction: returns the new lock, or None (not locked now, or
        locked already), so exactly one caller learns that the credential became locked."""
        with self._immediate() as conn:
            conn.execute(
                "INSERT INTO auth_failures (credential, at, reason) VALUES (?, ?, ?)",
                (credential, at, reason),
            )
            row = conn.execute(
                f"SELECT {_LOCK_COLUMNS} FROM lockouts WHERE credential = ?",
                (credential,),
            ).fetchone()
            current = Lock(*row) if row else None
            if current is not None and at < current.until:
                return None  # locked already: the failure is recorded, nothing more
            after = current.counted_after if current else float("-inf")
            (count,) = conn.execute(
                "SELECT COUNT(*) FROM auth_failures WHERE credential = ? AND at >= ? "
                "AND at > ? AND reason NOT IN (?, ?)",
                (credential, since, after, *NOT_COUNTED),
            ).fetchone()
            lock = None
            if count >= threshold:
                # The lock takes the failures that made it: after it ends, locking
                # again needs `threshold` new ones.
                lock = Lock(credential, at, until, int(count), at)
                conn.execute(
                    f"INSERT OR REPLACE INTO lockouts ({_LOCK_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (lock.credential, lock.locked_at, lock.until, lock.failures,
                     lock.counted_after),
                )  # fmt: skip
            return lock

    def lock(self, credential: str) -> Lock | None:
        """The credential's lock row, current or past (compare `until` with the time)."""
        rows, _ = self._run(
            f"SELECT {_LOCK_COLUMNS} FROM lockouts WHERE credential = ?", (credential,)
        )
        return Lock(*rows[0]) if rows else None

    def locks(self, at: float) -> list[Lock]:
        """The locks in force at `at`, by credential."""
        rows, _ = self._run(
            f"SELECT {_LOCK_COLUMNS} FROM lockouts WHERE until > ? ORDER BY credential", (at,)
        )
        return [Lock(*r) for r in rows]

    def unlock(self, credential: str, at: float) -> bool:
        """End any lock at `at` and stop counting the failures before it; true when the
        credential was locked. The failure rows stay (they are history, not a counter)."""
        with self._immediate() as conn:
            row = conn.execute(
                "SELECT until FROM lockouts WHERE credential = ?", (credential,)
            ).fetchone()
            conn.execute(
                f"INSERT INTO lockouts ({_LOCK_COLUMNS}) VALUES (?, NULL, ?, 0, ?) "
                "ON CONFLICT (credential) DO UPDATE SET "
                "until = MIN(until, excluded.until), counted_after = excluded.until",
                (credential, at, at),
            )
        return row is not None and at < float(row[0])

    def failures(self, credential: str, since: float) -> list[tuple[float, str]]:
        """(time, reason) of each failure for `credential` at or after `since`, oldest first."""
        rows, _ = self._run(
            "SELECT at, reason FROM auth_failures WHERE credential = ? AND at >= ? ORDER BY at",
            (credential, since),
        )
        return [(float(at), str(reason)) for at, reason in rows]

    # API clients

    def insert_client(self, client: Client) -> None:
        """Raises sqlite3.IntegrityError when the name is taken."""
        self._run(f"INSERT INTO clients ({_CLIENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                  (client.name, client.role, client.secret_hash, client.public_key,
                   client.created, client.disabled))  # fmt: skip

    def client(self, name: str) -> Client | None:
        rows, _ = self._run(f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE name = ?", (name,))
        return Client(*rows[0]) if rows else None

    def clients(self) -> list[Client]:
        rows, _ = self._run(f"SELECT {_CLIENT_COLUMNS} FROM clients ORDER BY name")
        return [Client(*r) for r in rows]

    def disable_client(self, name: str, at: float) -> bool:
        """True when the client existed and was enabled; its tokens end with it."""
        with self._immediate() as conn:
            cur = conn.execute(
                "UPDATE clients SET disabled = ? WHERE name = ? AND disabled IS NULL", (at, name)
            )
            conn.execute("UPDATE tokens SET ended = ? WHERE subject = ? AND ended IS NULL",
                         (at, f"client:{name}"))  # fmt: skip
            return cur.rowcount == 1

    def use_jti(self, client: str, jti: str, expires: float, at: float) -> bool:
        """Claim an assertion id for `client`: false when it was used before. Ids whose
        assertions have expired are forgotten (they can no longer be replayed anyway)."""
        with self._immediate() as conn:
            conn.execute("DELETE FROM used_jtis WHERE expires < ?", (at,))
            cur = conn.execute(
                "INSERT OR IGNORE INTO used_jtis (client, jti, expires) VALUES (?, ?, ?)",
                (client, jti, expires),
            )
            return cur.rowcount == 1

    # access tokens and sessions

    def insert_token(self, token: Token) -> None:
        with self._immediate() as conn:
            # Ended and expired rows are no use to anyone: they go as new ones come.
            conn.execute("DELETE FROM tokens WHERE expires < ?", (token.issued - 86400,))
            conn.execute(f"INSERT INTO tokens ({_TOKEN_COLUMNS}) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (token.hash, token.kind, token.subject, token.role, token.issued,
                          token.expires, token.idle, token.last_seen, token.ended))  # fmt: skip

    def token(self, digest: str) -> Token | None:
        rows, _ = self._run(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE hash = ?", (digest,))
        return Token(*rows[0]) if rows else None

    def touch_token(self, digest: str, at: float) -> None:
        self._run("UPDATE tokens SET last_seen = MAX(last_seen, ?) WHERE hash = ?", (at, digest))

    def end_token(self, digest: str, at: float) -> bool:
        _, changed = self._run(
            "UPDATE tokens SET ended = ? WHERE hash = ? AND ended IS NULL", (at, digest)
        )
        return changed == 1

    def end_tokens_of(self, subject: str, at: float) -> int:
        """End every token and session of `subject` ("user:NAME"); how many were live."""
        _, changed = self._run(
            "UPDATE tokens SET ended = ? WHERE subject = ? AND ended IS NULL", (at, subject)
        )
        return changed


def _key_row(k: ApiKey) -> tuple[Any, ...]:
    return (k.prefix, k.hash, k.owner, k.role, k.created, k.expires, k.revoked, k.replaced_by)
