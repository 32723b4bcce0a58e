"""The audit trail's record shape, its key and its HMAC chain (the store is `audit_store`).

A record follows the FHIR AuditEvent / IHE BALP shape in plain fields: when (`recorded`), who
(`Actor`: user or client id, role, network address, user agent), the action (C/R/U/D/E),
what (endpoint or command, message / patient / appointment ids, a search filter and its
result count) and the outcome (0 success, 4 minor, 8 serious, 12 major failure).

The rule kept here: record n carries `hash = HMAC-SHA256(key, hash(n-1) || canonical JSON of
record n)`, with the sequence number inside the JSON, so an edited, removed, inserted or
renumbered record breaks the chain at a place `verify_chain` can name. The key never goes
into the audit database: only a key id (an HMAC of a fixed label, which reveals nothing of
the key) is stored so that verifying with the wrong key says so instead of "edited".
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Action = Literal["C", "R", "U", "D", "E"]
ACTIONS: tuple[str, ...] = ("C", "R", "U", "D", "E")
OUTCOMES: tuple[int, ...] = (0, 4, 8, 12)  # AuditEvent.outcome: success, minor, serious, major
GENESIS = "0" * 64  # the "previous hash" of record 1
KEY_ENV = "ENGINE_AUDIT_KEY"
KEY_FILE_ENV = "ENGINE_AUDIT_KEY_FILE"
MIN_KEY_BYTES = 32


class AuditKeyError(Exception):
    """No usable audit key. The text names where a key was looked for, never its value."""


class AuditError(Exception):
    """The audit trail cannot be opened, read or written."""


@dataclass(frozen=True, repr=False)
class AuditKey:
    """The HMAC key of the chain. `repr` hides the secret so it cannot leak into a log."""

    secret: bytes
    source: str  # where it came from ("file /etc/engine/audit.key", "$ENGINE_AUDIT_KEY")

    def __repr__(self) -> str:
        return f"AuditKey(id={self.key_id}, from {self.source})"

    @property
    def key_id(self) -> str:
        return hmac.new(self.secret, b"engine audit key id", hashlib.sha256).hexdigest()[:16]

    @classmethod
    def from_bytes(cls, secret: bytes, source: str) -> AuditKey:
        secret = secret.strip()
        if len(secret) < MIN_KEY_BYTES:
            raise AuditKeyError(
                f"audit key from {source} is too short ({len(secret)} bytes; at least "
                f"{MIN_KEY_BYTES}: `python -c 'import secrets; print(secrets.token_hex(32))'`)"
            )
        return cls(secret, source)

    @classmethod
    def from_file(cls, path: Path) -> AuditKey:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise AuditKeyError(f"cannot read the audit key file {path}: {exc.strerror}") from exc
        return cls.from_bytes(data, f"file {path}")

    @classmethod
    def from_env(cls, name: str, environ: Mapping[str, str] | None = None) -> AuditKey:
        env = os.environ if environ is None else environ
        value = env.get(name, "")
        if not value:
            raise AuditKeyError(f"${name} is not set")
        return cls.from_bytes(value.encode("utf-8"), f"${name}")

    @classmethod
    def configured(cls, environ: Mapping[str, str] | None = None) -> bool:
        env = os.environ if environ is None else environ
        return bool(env.get(KEY_FILE_ENV) or env.get(KEY_ENV))

    @classmethod
    def load(
        cls, key_file: Path | None = None, environ: Mapping[str, str] | None = None
    ) -> AuditKey:
        """`key_file` if given, else the file named by $ENGINE_AUDIT_KEY_FILE, else the key in
        $ENGINE_AUDIT_KEY. A missing key is an AuditKeyError saying how to provide one."""
        env = os.environ if environ is None else environ
        if key_file is not None:
            return cls.from_file(key_file)
        if env.get(KEY_FILE_ENV):
            return cls.from_file(Path(env[KEY_FILE_ENV]))
        if env.get(KEY_ENV):
            return cls.from_env(KEY_ENV, env)
        raise AuditKeyError(
            f"no audit key: pass --key-file PATH, or set ${KEY_FILE_ENV} (a file holding the "
            f"key) or ${KEY_ENV} (the key itself)"
        )


@dataclass(frozen=True)
class Actor:
    """AuditEvent.agent and .source: who acted and from where."""

    who: str  # user name or client id
    role: str = ""
    address: str = ""  # network address, or "cli"
    user_agent: str = ""


@dataclass(frozen=True)
class AuditEvent:
    """What happened, as the code that did it knows it; `Actor` and time are added on append."""

    action: Action
    what: str  # endpoint ("POST /fhir/Appointment") or command ("engine show")
    outcome: int = 0
    message_ids: tuple[int, ...] = ()
    patient_ids: tuple[str, ...] = ()
    appointment_ids: tuple[str, ...] = ()
    query: Mapping[str, Any] | None = None  # a search filter, or a command's selection
    count: int | None = None  # how many results a search returned, or items an action touched

    def check(self) -> None:
        """Refuse what the store's CHECK constraints would; done at append, not construction,
        so that a tampered stored value still loads and reaches the verifier."""
        if self.action not in ACTIONS:
            raise ValueError(f"audit action must be one of {'/'.join(ACTIONS)}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"audit outcome must be one of {OUTCOMES}")


@dataclass(frozen=True)
class AuditRecord:
    """One stored record: the event, who and when, and its place in the chain."""

    seq: int
    recorded: float
    actor: Actor
    event: AuditEvent
    key_id: str
    prev_hash: str
    hash: str

    def body(self) -> dict[str, Any]:
        """Everything the HMAC covers except the previous hash (which is prefixed)."""
        e, a = self.event, self.actor
        return {
            "seq": self.seq,
            "recorded": self.recorded,
            "key_id": self.key_id,
            "who": a.who,
            "role": a.role,
            "address": a.address,
            "user_agent": a.user_agent,
            "action": e.action,
            "what": e.what,
            "outcome": e.outcome,
            "message_ids": list(e.message_ids),
            "patient_ids": list(e.patient_ids),
            "appointment_ids": list(e.appointment_ids),
            "query": dict(e.query) if e.query is not None else None,
            "count": e.count,
        }


AuditHook = Callable[[AuditEvent], None]  # how a command records what it did, as whoever runs it

SEARCH_COMMANDS = frozenset({"engine messages"})


def is_access(action: str, what: str) -> bool:
    """Whether a record is a PHI read or search (what the access watch counts): every `R`,
    and an `E` that is a search (BALP records a query as an execute): `engine messages`, a
    `GET` endpoint (a GET changes nothing, so its execute is a search) or a `.../_search`."""
    if action == "R":
        return True
    return action == "E" and (
        what in SEARCH_COMMANDS or what.startswith("GET ") or what.endswith("/_search")
    )


def canonical(value: Any) -> bytes:
    """One byte string per value: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(key: AuditKey, prev_hash: str, body: Mapping[str, Any]) -> str:
    return hmac.new(key.secret, prev_hash.encode("ascii") + canonical(body), "sha256").hexdigest()


BreakKind = Literal["edited", "deleted", "inserted", "broken", "wrong key"]


@dataclass(frozen=True)
class ChainBreak:
    """The first record that does not verify, and what is wrong with it."""

    seq: int
    kind: BreakKind
    detail: str

    def __str__(self) -> str:
        return f"record {self.seq}: {self.kind}: {self.detail}"


@dataclass(frozen=True)
class Verification:
    records: int  # how many records verified before the first break (all when intact)
    head_seq: int  # the last verified sequence number (0 when empty)
    head_hash: str
    first_break: ChainBreak | None
    triggers_missing: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.first_break is None and not self.triggers_missing


def _matches(key: AuditKey, prev_hash: str, record: AuditRecord) -> bool:
    return hmac.compare_digest(chain_hash(key, prev_hash, record.body()), record.hash)


def verify_chain(key: AuditKey, records: Iterable[AuditRecord]) -> Verification:
    """Walk the records in sequence order; stop at the first one that does not verify.

    Which kind of tampering is named comes from what still holds: a gap in the sequence is a
    deletion; a record whose successor is chained to the record before it was inserted; a
    record that links to its predecessor but fails its own HMAC was edited. Removing the
    newest records leaves no gap, so the head (sequence and hash) is reported for keeping
    elsewhere and comparing later.
    """
    prev_seq, prev_hash, count = 0, GENESIS, 0
    pending: AuditRecord | None = None  # a record that failed, waiting for its successor
    for record in records:
        if pending is not None:
            return _verdict(count, prev_seq, prev_hash, _diagnose(key, pending, prev_hash, record))
        expected = prev_seq + 1
        if record.seq != expected:
            missing = (
                f"record {expected} is missing"
                if record.seq == expected + 1
                else f"records {expected} to {record.seq - 1} are missing"
            )
            return _verdict(
                count,
                prev_seq,
                prev_hash,
                ChainBreak(
                    expected,
                    "deleted",
                    f"{missing}: the sequence jumps from {prev_seq} to {record.seq}",
                ),
            )
        if record.key_id != key.key_id:
            return _verdict(
                count,
                prev_seq,
                prev_hash,
                ChainBreak(
                    record.seq,
                    "wrong key",
                    f"written with key id {record.key_id}, verifying with key id {key.key_id}",
                ),
            )
        if record.prev_hash == prev_hash and _matches(key, prev_hash, record):
            prev_seq, prev_hash, count = record.seq, record.hash, count + 1
            continue
        pending = record
    if pending is not None:
        return _verdict(count, prev_seq, prev_hash, _diagnose(key, pending, prev_hash, None))
    return _verdict(count, prev_seq, prev_hash, None)


def _verdict(count: int, seq: int, hash_: str, brk: ChainBreak | None) -> Verification:
    return Verification(records=count, head_seq=seq, head_hash=hash_, first_break=brk)


def _diagnose(
    key: AuditKey, bad: AuditRecord, prev_hash: str, after: AuditRecord | None
) -> ChainBreak:
    linked = bad.prev_hash == prev_hash
    self_ok = _matches(key, bad.prev_hash, bad)
    prev = f"record {bad.seq - 1}" if bad.seq > 1 else "the start of the trail"
    if after is not None and after.prev_hash == prev_hash:
        return ChainBreak(
            bad.seq,
            "inserted",
            f"not written by the engine: record {after.seq} is chained directly to {prev}",
        )
    if linked and not self_ok:
        tail = "" if after is not None else " (or it was added at the end without the key)"
        return ChainBreak(
            bad.seq, "edited", f"its fields no longer match its HMAC: a value was changed{tail}"
        )
    if self_ok:
        return ChainBreak(
            bad.seq,
            "deleted",
            f"it is intact but was chained to a record that is no longer before it: a record "
            f"between {prev} and it was removed",
        )
    return ChainBreak(
        bad.seq,
        "broken",
        f"neither its HMAC nor its link to {prev} holds: records were removed and the rest "
        "renumbered, or this record was inserted",
    )
