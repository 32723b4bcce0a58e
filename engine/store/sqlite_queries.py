"""The reads of the SQLite store: SQL for show and listing, and row mapping (message search
has its own module, `sqlite_search`).

Rule: every function takes a connection it may use freely and only reads. Each statement's
rows are fetched completely before returning, so no statement stays open and holds a WAL
snapshot (which would hide later commits and block checkpoints). Values from the closed status
sets are validated and inlined as literals so SQLite can pick the partial indexes. Sealed
values are opened with the connection's sealer (`sealer_of`), at the row they were read from.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Final, cast, get_args

from engine.security.atrest import RowSealer
from engine.store import sqlite_appointments as appointments
from engine.store.base import (
    Attempt,
    AttemptOutcome,
    ChannelResultRow,
    Delivery,
    DeliveryStatus,
    DuplicateHit,
    MessageDetail,
    MessageKeys,
    MessageRow,
    MessageStatus,
    ResultStatus,
)
from engine.store.sqlite_schema import sealer_of

# A NULL payload means "the channel result's output" (see sqlite_schema); the last column is
# then that result's id, which a sealed output is bound to.
_OUTPUT_OF: Final = (
    "(SELECT c.{} FROM channel_results c"
    " WHERE c.message_id = deliveries.message_id AND c.channel = deliveries.channel"
    " ORDER BY c.id LIMIT 1)"
)
DELIVERY_COLUMNS: Final = (
    "id, message_id, channel, destination, lane, status, attempts, next_attempt_at,"
    f" COALESCE(payload, {_OUTPUT_OF.format('output')}),"
    " created_at, updated_at, last_code, last_error, round_attempts,"
    f" CASE WHEN payload IS NULL THEN {_OUTPUT_OF.format('id')} END"
)
MESSAGE_COLUMNS: Final = (
    "id", "received_at", "listener", "content_type", "charset", "sender", "facility",
    "control_id", "message_type", "version", "patient_ids", "appointment_ids", "status",
    "ack_code", "error", "replay_of", "duplicate_of", "size",
)
_MESSAGE_BY_ID: Final = f"SELECT {', '.join(MESSAGE_COLUMNS)}, raw, ack FROM messages WHERE id = ?"
_RESULT_COLUMNS: Final = (
    "id, message_id, channel, status, output, error, error_step, error_location"
)
_ATTEMPT_COLUMNS: Final = (
    "a.id, a.delivery_id, a.number, a.started_at, a.latency, a.outcome, a.code, a.response,"
    " a.error, a.next_attempt_at"
)
MESSAGE_STATUSES: Final = frozenset(get_args(MessageStatus))
DELIVERY_STATUSES: Final = frozenset(get_args(DeliveryStatus))
# A listing of deliveries in one of these statuses starts at its partial index (sqlite_schema):
# named, because SQLite would rather walk a covering index of every delivery and sort.
_STATUS_INDEXES: Final = {
    "queued": "deliveries_queued", "failed": "deliveries_failed", "discarded": "deliveries_unsent",
}
_SEPARATOR: Final = "\x1f"  # same as sqlite_writes.KEY_SEPARATOR

_FIND_DUPLICATE: Final = """SELECT id, received_at, ack FROM messages
    WHERE sender = ? AND control_id = ? AND received_at >= ?
      AND ack_code = 'AA' AND status IN ('processed', 'error') AND replay_of IS NULL
    ORDER BY received_at DESC, id DESC LIMIT 1"""


def _split(joined: str) -> tuple[str, ...]:
    return tuple(joined.split(_SEPARATOR)) if joined else ()


def delivery_from_row(r: Any, seal: RowSealer) -> Delivery:
    payload = (
        seal.open("deliveries", "payload", r[0], r[8]) if r[14] is None
        else seal.open("channel_results", "output", r[14], r[8])
    )
    return Delivery(
        id=r[0], message_id=r[1], channel=r[2], destination=r[3], lane=r[4],
        status=cast(DeliveryStatus, r[5]), attempts=r[6], next_attempt_at=r[7], payload=payload,
        created_at=r[9], updated_at=r[10], last_code=r[11], last_error=r[12],
        round_attempts=r[13],
    )


def message_from_row(r: Any, seal: RowSealer) -> MessageRow:
    keys = MessageKeys(
        sender=r[5], facility=r[6], control_id=r[7], message_type=r[8], version=r[9],
        patient_ids=_split(seal.open_text("messages", "patient_ids", r[0], r[10])),
        appointment_ids=_split(r[11]),
    )
    return MessageRow(
        id=r[0], received_at=r[1], listener=r[2], content_type=r[3], charset=r[4], keys=keys,
        status=cast(MessageStatus, r[12]), ack_code=r[13], error=r[14], replay_of=r[15],
        duplicate_of=r[16], size=r[17],
    )


def literal(value: str, allowed: frozenset[str], what: str) -> str:
    """`value` as an SQL literal, when it is one of `allowed` (ValueError otherwise)."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {sorted(allowed)}")
    return f"'{value}'"


def find_duplicate(
    conn: sqlite3.Connection, sender: str, control_id: str, since: float
) -> DuplicateHit | None:
    rows = conn.execute(_FIND_DUPLICATE, (sender, control_id, since)).fetchall()
    if not rows:
        return None
    message_id, received_at, ack = rows[0]
    ack = sealer_of(conn).open("messages", "ack", message_id, ack)
    return DuplicateHit(message_id=message_id, received_at=received_at, ack=ack)


def get(conn: sqlite3.Connection, message_id: int) -> MessageDetail | None:
    """The whole story of one message, read in one snapshot."""
    conn.execute("BEGIN")
    try:
        row = conn.execute(_MESSAGE_BY_ID, (message_id,)).fetchall()
        if not row:
            return None
        results = conn.execute(
            f"SELECT {_RESULT_COLUMNS} FROM channel_results WHERE message_id = ? ORDER BY id",
            (message_id,),
        ).fetchall()
        deliveries = conn.execute(
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE message_id = ? ORDER BY id",
            (message_id,),
        ).fetchall()
        attempts = conn.execute(
            f"SELECT {_ATTEMPT_COLUMNS} FROM attempts a JOIN deliveries d"
            " ON d.id = a.delivery_id WHERE d.message_id = ? ORDER BY a.delivery_id, a.id",
            (message_id,),
        ).fetchall()
        replays = conn.execute(
            "SELECT id FROM messages WHERE replay_of = ? ORDER BY id", (message_id,)
        ).fetchall()
        appointment = appointments.version_of_message(conn, message_id)
    finally:
        conn.execute("COMMIT")
    r = row[0]
    seal = sealer_of(conn)
    return MessageDetail(
        message=message_from_row(r, seal),
        raw=seal.open("messages", "raw", message_id, r[18]),
        ack=seal.open("messages", "ack", message_id, r[19]),
        results=tuple(
            ChannelResultRow(
                id=x[0], message_id=x[1], channel=x[2], status=cast(ResultStatus, x[3]),
                output=seal.open("channel_results", "output", x[0], x[4]), error=x[5],
                error_step=x[6], error_location=x[7],
            )
            for x in results
        ),
        deliveries=tuple(delivery_from_row(d, seal) for d in deliveries),
        attempts=tuple(
            Attempt(
                delivery_id=a[1], number=a[2], started_at=a[3], latency=a[4],
                outcome=cast(AttemptOutcome, a[5]), code=a[6],
                response=seal.open("attempts", "response", a[0], a[7]), error=a[8],
                next_attempt_at=a[9],
            )
            for a in attempts
        ),
        replays=tuple(x[0] for x in replays),
        appointment=appointment,
    )


def deliveries(
    conn: sqlite3.Connection, destination: str | None, status: str | None, limit: int
) -> list[Delivery]:
    """In id (= arrival) order."""
    if limit <= 0:
        return []
    where: list[str] = []
    params: list[object] = []
    if destination is not None:
        where.append("destination = ?")
        params.append(destination)
    if status is not None:
        where.append(f"status = {literal(status, DELIVERY_STATUSES, 'delivery status')}")
        if status == "discarded":
            where.append("status <> 'sent'")  # the partial index's condition, as written
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    index = f" INDEXED BY {_STATUS_INDEXES[status]}" if status in _STATUS_INDEXES else ""
    sql = f"SELECT {DELIVERY_COLUMNS} FROM deliveries{index} {clause} ORDER BY id LIMIT ?"
    params.append(limit)
    seal = sealer_of(conn)
    return [delivery_from_row(r, seal) for r in conn.execute(sql, params).fetchall()]
