"""Appointment state in the SQLite store: numbering and recording versions, and reading them.

Rules kept:
- A version is numbered inside the write transaction that records it, from what the file holds
  at that moment. The writer's `BEGIN IMMEDIATE` shuts out every other writer (in this process
  or another), so two writers never hand out one number twice; the partial unique index on
  (key, version) refuses it should that ever break.
- Every version a message carries gets a history row, whatever its disposition. Only a
  `current` one changes `appointments` and the key's `appointment_actors` (replaced whole: the
  new version's actors, over its [start, end) when that is a non-empty interval).
- An appointment keeps its id for life: the first current version sets it (16 random hex
  digits, a FHIR-legal id) and later versions never change it.
- `check` runs on the event loop before a write is queued, so bad input fails its own caller
  with a clear error instead of costing the whole group commit a rollback. Its texts name the
  field, never the value (keys and ids may be patient-linked).
- A resource is sealed with the connection's sealer at its row: `appointments` by the
  appointment's id (it keeps it for life), `appointment_versions` by the version row's id,
  assigned here before the insert.
"""

from __future__ import annotations

import json
import math
import secrets
import sqlite3
from typing import Any, Final, cast, get_args

from engine.security.atrest import RowSealer
from engine.store.base import (
    AppointmentDisposition,
    AppointmentRow,
    AppointmentVersionRow,
    AppointmentWarning,
    NewAppointmentVersion,
    StaleJudgement,
)
from engine.store.sqlite_schema import next_id, sealer_of

_DISPOSITIONS: Final = frozenset(get_args(AppointmentDisposition))

APPOINTMENT_COLUMNS: Final = (
    'key, id, version, resource, status, source_time, start, "end", updated_at, message_id'
)
_VERSION_COLUMNS: Final = (
    "key, message_id, recorded_at, version, disposition, change, status, source_time,"
    " resource, warnings"
)
# What `MessageFilter.flagged` selects; answered from the partial index of flagged versions.
FLAGGED_MESSAGES: Final = (
    "SELECT message_id FROM appointment_versions WHERE warnings IS NOT NULL"
)

_CURRENT: Final = "SELECT id, version FROM appointments WHERE key = ?"
_ID_TAKEN: Final = "SELECT 1 FROM appointments WHERE id = ?"
_INSERT_APPOINTMENT: Final = f"""INSERT INTO appointments ({APPOINTMENT_COLUMNS})
    VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?, ?)"""
_UPDATE_APPOINTMENT: Final = """UPDATE appointments SET version = ?, resource = ?, status = ?,
    source_time = ?, start = ?, "end" = ?, updated_at = ?, message_id = ? WHERE key = ?"""
_DELETE_ACTORS: Final = "DELETE FROM appointment_actors WHERE key = ?"
_INSERT_ACTOR: Final = (
    'INSERT INTO appointment_actors (actor, key, start, "end") VALUES (?, ?, ?, ?)'
)
_INSERT_VERSION: Final = f"""INSERT INTO appointment_versions (id, {_VERSION_COLUMNS})
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
# Half-open overlap: [s, e) and [start, end) overlap iff s < end and e > start.
_OVERLAPPING: Final = f"""SELECT {APPOINTMENT_COLUMNS} FROM appointments WHERE key IN (
    SELECT key FROM appointment_actors
    WHERE actor IN (SELECT value FROM json_each(?)) AND "end" > ? AND start < ?)
    AND key != ? AND status NOT IN (SELECT value FROM json_each(?))
    ORDER BY start, key LIMIT ?"""


# --------------------------------------------------------------------------- validation


def check(version: NewAppointmentVersion) -> None:
    """Raise ValueError naming the first field of `version` the store cannot keep."""
    v = version
    if not isinstance(v.key, str) or not v.key:
        _invalid("key must be a non-empty string")
    if not isinstance(v.resource, bytes) or not v.resource:
        _invalid("resource must be non-empty bytes (the canonical JSON)")
    for name in ("status", "change"):
        if not isinstance(getattr(v, name), str):
            _invalid(f"{name} must be a string")
    if v.disposition not in _DISPOSITIONS:
        _invalid(f"disposition must be one of {sorted(_DISPOSITIONS)}")
    for name in ("source_time", "start", "end"):
        value = getattr(v, name)
        if value is not None and not _finite(value):
            _invalid(f"{name} must be a finite number of unix seconds, or None")
    if not isinstance(v.actors, tuple) or not all(isinstance(a, str) and a for a in v.actors):
        _invalid("actors must be a tuple of non-empty strings")
    if not isinstance(v.warnings, tuple) or not all(
        isinstance(w, AppointmentWarning)
        and isinstance(w.kind, str)
        and isinstance(w.text, str)
        and isinstance(w.related, tuple)
        and all(isinstance(r, str) for r in w.related)
        for w in v.warnings
    ):
        _invalid("warnings must be a tuple of AppointmentWarning with string fields")
    if v.base_version is not None and (
        not isinstance(v.base_version, int) or isinstance(v.base_version, bool)
        or v.base_version < 0
    ):
        _invalid("base_version must be a version number (0: none), or None")


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _invalid(why: str) -> None:
    raise ValueError(f"invalid appointment version: {why}")


# --------------------------------------------------------------------------- writes


def record(
    cur: sqlite3.Cursor, message_id: int, v: NewAppointmentVersion, now: float
) -> tuple[str | None, int | None]:
    """Record the version `message_id` carries (the message row exists already); returns the
    appointment's id and current version afterwards ((None, None): still unknown)."""
    row = cur.execute(_CURRENT, (v.key,)).fetchone()
    seal = sealer_of(cur)
    number: int | None = None
    if v.disposition != "rejected" and v.base_version is not None \
            and v.base_version != (row[1] if row is not None else 0):
        raise StaleJudgement(f"appointment moved on since version {v.base_version}")
    if v.disposition != "current":
        ident, current = (row[0], row[1]) if row is not None else (None, None)
    elif row is None:
        ident, current = _first_id(cur), 1
        number = current
        resource = seal.seal("appointments", "resource", ident, v.resource)
        cur.execute(
            _INSERT_APPOINTMENT,
            (v.key, ident, resource, v.status, v.source_time, v.start, v.end, now, message_id),
        )
        _insert_actors(cur, v)
    else:
        ident, current = row[0], row[1] + 1
        number = current
        resource = seal.seal("appointments", "resource", ident, v.resource)
        cur.execute(
            _UPDATE_APPOINTMENT,
            (current, resource, v.status, v.source_time, v.start, v.end, now, message_id,
             v.key),
        )
        cur.execute(_DELETE_ACTORS, (v.key,))
        _insert_actors(cur, v)
    # Inside the writer's transaction no one else inserts: this is the id SQLite would pick.
    version_id = next_id(cur, "appointment_versions")
    cur.execute(
        _INSERT_VERSION,
        (version_id, v.key, message_id, now, number, v.disposition, v.change, v.status,
         v.source_time, seal.seal("appointment_versions", "resource", version_id, v.resource),
         _warnings_json(v.warnings)),
    )
    return ident, current


def _first_id(cur: sqlite3.Cursor) -> str:
    while True:  # 64 random bits: a repeat is astronomically unlikely, but never fatal
        candidate = secrets.token_hex(8)
        if cur.execute(_ID_TAKEN, (candidate,)).fetchone() is None:
            return candidate


def _insert_actors(cur: sqlite3.Cursor, v: NewAppointmentVersion) -> None:
    # An empty or reversed interval holds nobody's time (and would match wrongly below).
    if v.start is None or v.end is None or v.end <= v.start or not v.actors:
        return
    cur.executemany(
        _INSERT_ACTOR, [(actor, v.key, v.start, v.end) for actor in dict.fromkeys(v.actors)]
    )


def _warnings_json(warnings: tuple[AppointmentWarning, ...]) -> str | None:
    if not warnings:
        return None  # keeps the version out of the partial index of flagged ones
    return json.dumps(
        [{"kind": w.kind, "text": w.text, "related": list(w.related)} for w in warnings],
        ensure_ascii=False,
        separators=(",", ":"),
    )


# --------------------------------------------------------------------------- reads


def _appointment_from_row(r: Any, seal: RowSealer) -> AppointmentRow:
    return AppointmentRow(
        key=r[0], id=r[1], version=r[2],
        resource=seal.open("appointments", "resource", r[1], r[3]), status=r[4],
        source_time=r[5], start=r[6], end=r[7], updated_at=r[8], message_id=r[9],
    )


def _version_from_row(r: Any, seal: RowSealer) -> AppointmentVersionRow:
    warnings = tuple(
        AppointmentWarning(kind=w["kind"], text=w["text"], related=tuple(w["related"]))
        for w in (json.loads(r[9]) if r[9] is not None else ())
    )
    return AppointmentVersionRow(
        key=r[0], message_id=r[1], recorded_at=r[2], version=r[3],
        disposition=cast(AppointmentDisposition, r[4]), change=r[5], status=r[6],
        source_time=r[7], resource=seal.open("appointment_versions", "resource", r[10], r[8]),
        warnings=warnings,
    )


def appointment(conn: sqlite3.Connection, key: str) -> AppointmentRow | None:
    rows = conn.execute(
        f"SELECT {APPOINTMENT_COLUMNS} FROM appointments WHERE key = ?", (key,)
    ).fetchall()
    return _appointment_from_row(rows[0], sealer_of(conn)) if rows else None


def appointment_by_id(conn: sqlite3.Connection, appointment_id: str) -> AppointmentRow | None:
    rows = conn.execute(
        f"SELECT {APPOINTMENT_COLUMNS} FROM appointments WHERE id = ?", (appointment_id,)
    ).fetchall()
    return _appointment_from_row(rows[0], sealer_of(conn)) if rows else None


def overlapping(
    conn: sqlite3.Connection,
    actors: tuple[str, ...],
    start: float,
    end: float,
    exclude_key: str = "",
    exclude_statuses: frozenset[str] = frozenset(),
    limit: int = 1000,
) -> list[AppointmentRow]:
    """Current versions holding one of `actors` over a time overlapping [start, end), each
    once, by start then key, at most `limit`, without `exclude_key` and the statuses in
    `exclude_statuses`. An empty interval overlaps nothing."""
    if not actors or not end > start or limit <= 0:
        return []
    args = (json.dumps(list(actors)), start, end, exclude_key,
            json.dumps(sorted(exclude_statuses)), limit)
    rows = conn.execute(_OVERLAPPING, args).fetchall()
    seal = sealer_of(conn)
    return [_appointment_from_row(r, seal) for r in rows]


def history(conn: sqlite3.Connection, key: str) -> list[AppointmentVersionRow]:
    """Every recorded version of `key`, in the order the store recorded them."""
    rows = conn.execute(
        f"SELECT {_VERSION_COLUMNS}, id FROM appointment_versions WHERE key = ? ORDER BY id",
        (key,),
    ).fetchall()
    seal = sealer_of(conn)
    return [_version_from_row(r, seal) for r in rows]


def version_of_message(conn: sqlite3.Connection, message_id: int) -> AppointmentVersionRow | None:
    rows = conn.execute(
        f"SELECT {_VERSION_COLUMNS}, id FROM appointment_versions WHERE message_id = ?",
        (message_id,),
    ).fetchall()
    return _version_from_row(rows[0], sealer_of(conn)) if rows else None
