"""The write operations of the SQLite store, run by the group-commit writer thread.

Rule: each function is `op(conn, arg) -> result`, runs inside a transaction the writer opened
and touches nothing but that connection (a failed batch is re-run op by op, so an op must be
safe to run twice). Times come in `arg` (taken on the event loop from the store's clock), never
from the writer thread, so a fake clock controls them. Values carrying PHI are sealed here with
the connection's sealer (`sealer_of`), bound to their row: so every row whose value is sealed
gets its id assigned here, before the insert.
"""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Final

from engine.store import sqlite_appointments as appointments
from engine.store.base import (
    Attempt,
    Delivery,
    Ingest,
    Ingested,
    NewAppointmentVersion,
    NewDelivery,
    ResolveOutcome,
)
from engine.store.sqlite_queries import DELIVERY_COLUMNS, delivery_from_row
from engine.store.sqlite_schema import keeps_hours, next_id, sealer_of

KEY_SEPARATOR: Final = "\x1f"  # ASCII unit separator: cannot occur in an HL7 or FHIR id

_INSERT_MESSAGE: Final = """INSERT INTO messages (id, received_at, listener,
    content_type, charset, raw, size, sender, facility, control_id, message_type, version,
    patient_ids, appointment_ids, status, ack_code, ack, error, replay_of, duplicate_of)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
# The hour expression is the search's (sqlite_search) and the version 3 migration's.
_UPSERT_HOUR: Final = """INSERT INTO message_hours (hour, first_id, last_id)
    VALUES (CAST(?1 / 3600 AS INTEGER), ?2, ?3)
    ON CONFLICT (hour) DO UPDATE SET
        first_id = min(first_id, excluded.first_id), last_id = max(last_id, excluded.last_id)"""
_INSERT_KEY: Final = "INSERT OR IGNORE INTO message_keys (kind, value, message_id) VALUES (?, ?, ?)"
_INSERT_RESULT: Final = """INSERT INTO channel_results (id, message_id, channel, status, output,
    error, error_step, error_location) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"""
_INSERT_DELIVERY: Final = """INSERT INTO deliveries (id, message_id, channel,
    destination, lane, status, claimed, next_attempt_at, payload, created_at, updated_at)
    VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)"""
_CHANNEL_OUTPUTS: Final = """SELECT channel, output, id FROM channel_results
    WHERE message_id = ? AND channel IN (SELECT value FROM json_each(?)) ORDER BY id"""
_INSERT_ATTEMPT: Final = """INSERT INTO attempts (id, delivery_id, number, started_at, latency,
    outcome, code, response, error, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
# A delivery discarded while its attempt was in flight stays discarded unless the attempt
# actually delivered it: the record must say what happened at the other side.
_UPDATE_AFTER_ATTEMPT: Final = """UPDATE deliveries SET
    attempts = attempts + 1,
    round_attempts = round_attempts + 1,
    status = CASE WHEN status = 'discarded' AND ?1 <> 'sent' THEN status ELSE ?1 END,
    next_attempt_at = COALESCE(?2, next_attempt_at),
    last_code = ?3, last_error = ?4, updated_at = ?5
    WHERE id = ?6"""
_STATUS_AFTER: Final = {"sent": "sent", "retry": "queued", "failed": "failed"}

_CLAIM: Final = f"""UPDATE deliveries SET claimed = 1 WHERE id IN (
    SELECT id FROM deliveries
    WHERE status = 'queued' AND claimed = 0
      AND destination IN (SELECT value FROM json_each(?))
    ORDER BY id LIMIT ?)
    RETURNING {DELIVERY_COLUMNS}"""
_RELEASE: Final = "UPDATE deliveries SET claimed = 0 WHERE status = 'queued' AND claimed = 1"
_RELEASE_OF: Final = f"{_RELEASE} AND destination IN (SELECT value FROM json_each(?))"
_REQUEUE_SET: Final = """UPDATE deliveries SET status = 'queued', claimed = 0,
    round_attempts = 0, next_attempt_at = ?, updated_at = ?"""
_REQUEUE: Final = f"""{_REQUEUE_SET}
    WHERE status = 'failed' AND id IN (SELECT value FROM json_each(?))"""
_REQUEUE_FAILED: Final = f"{_REQUEUE_SET} WHERE status = 'failed' AND destination = ?"
# Failed ones only: a queued delivery is held by a running engine's lane, which would go on
# sending it.
_DISCARD: Final = """UPDATE deliveries SET status = 'discarded', claimed = 0, updated_at = ?
    WHERE status = 'failed' AND id IN (SELECT value FROM json_each(?))"""


def ingest(conn: sqlite3.Connection, arg: tuple[Ingest, float]) -> Ingested:
    """Message, keys, channel results, deliveries and the appointment version it carries.
    Deliveries are born claimed when this process sends them itself (`Ingest.claimed`), else
    left for the running engine to claim. The writer runs these a batch at a time through
    `ingest_many`."""
    return ingest_many(conn, [arg])[0]


def ingest_all(conn: sqlite3.Connection, arg: tuple[list[Ingest], float]) -> list[Ingested]:
    """Several ingests as ONE op: the writer runs an ordinary op in its own savepoint, so when
    any item fails, all of them are rolled back and nothing else of the group commit is."""
    items, now = arg
    return ingest_many(conn, [(item, now) for item in items])


def _hour_of(received_at: float) -> float:
    """The message_hours row of a time, as SQLite's CAST(t / 3600 AS INTEGER) finds it: both
    truncate the same IEEE quotient (a time that is not finite is a group of its own)."""
    return float(int(received_at / 3600)) if math.isfinite(received_at) else received_at


def ingest_many(conn: sqlite3.Connection, args: list[tuple[Ingest, float]]) -> list[Ingested]:
    """`ingest` for a whole batch: ids assigned here, one executemany per table.

    The writer thread needs the GIL for every statement it issues; under load the event loop
    holds it most of the time, so a statement per row makes the writer wait between rows. A
    batch costs a handful of statements instead of several per message."""
    cur = conn.cursor()
    seal = sealer_of(conn)
    message_id = next_id(cur, "messages")
    delivery_id = next_id(cur, "deliveries")
    result_id = next_id(cur, "channel_results")
    messages: list[tuple[object, ...]] = []
    keys: list[tuple[str, str | bytes, int]] = []
    results: list[tuple[object, ...]] = []
    deliveries: list[tuple[object, ...]] = []
    # (position in out, message id, version, time): applied after the messages exist, in order
    versions: list[tuple[int, int, NewAppointmentVersion, float]] = []
    out: list[Ingested] = []
    # The message_hours rows to widen: hour -> [a received_at in it, lowest id, highest id]
    hours: dict[float, list[float]] = {}
    for item, now in args:
        m = item.message
        k = m.keys
        hour = _hour_of(m.received_at)
        if hour in hours:
            hours[hour][2] = message_id  # ids only grow within a batch
        else:
            hours[hour] = [m.received_at, message_id, message_id]
        messages.append(
            (
                message_id,
                m.received_at,
                m.listener,
                m.content_type,
                m.charset,
                seal.seal("messages", "raw", message_id, m.raw),
                len(m.raw),
                k.sender,
                k.facility,
                k.control_id,
                k.message_type,
                k.version,
                seal.seal_text("messages", "patient_ids", message_id,
                               KEY_SEPARATOR.join(k.patient_ids)),
                KEY_SEPARATOR.join(k.appointment_ids),
                m.status,
                m.ack_code,
                seal.seal("messages", "ack", message_id, m.ack),
                m.error,
                m.replay_of,
                m.duplicate_of,
            )
        )
        keys.extend(("patient", seal.index("patient", v), message_id) for v in k.patient_ids if v)
        keys.extend(("appointment", v, message_id) for v in k.appointment_ids if v)
        outputs: dict[str, bytes] = {}
        for r in item.results:
            sealed = seal.seal("channel_results", "output", result_id, r.output)
            results.append(
                (result_id, message_id, r.channel, r.status, sealed, r.error, r.error_step,
                 r.error_location)
            )
            result_id += 1
            outputs.setdefault(r.channel, r.output)
        claimed = 1 if item.claimed else 0
        ids = []
        for d in item.deliveries:
            output = outputs.get(d.channel)
            payload = (
                None if output is not None and output == d.payload
                else seal.seal("deliveries", "payload", delivery_id, d.payload)
            )
            deliveries.append(
                (
                    delivery_id,
                    message_id,
                    d.channel,
                    d.destination,
                    d.lane,
                    claimed,
                    d.next_attempt_at,
                    payload,
                    now,
                    now,
                )
            )
            ids.append(delivery_id)
            delivery_id += 1
        if item.appointment is not None:
            # Recorded at the message's arrival: the time intake answers with (Last-Modified).
            versions.append((len(out), message_id, item.appointment, m.received_at))
        out.append(Ingested(message_id, tuple(ids)))
        message_id += 1
    cur.executemany(_INSERT_MESSAGE, messages)
    if keeps_hours(conn):
        cur.executemany(_UPSERT_HOUR, list(hours.values()))
    if keys:
        cur.executemany(_INSERT_KEY, keys)
    if results:
        cur.executemany(_INSERT_RESULT, results)
    if deliveries:
        cur.executemany(_INSERT_DELIVERY, deliveries)
    # In list order: a later version of a key is numbered after an earlier one of the batch.
    for position, version_message, version, now in versions:
        ident, number = appointments.record(cur, version_message, version, now)
        out[position] = Ingested(version_message, out[position].delivery_ids, ident, number)
    return out


def add_deliveries(
    conn: sqlite3.Connection, arg: tuple[int, tuple[NewDelivery, ...], bool, float]
) -> tuple[int, ...]:
    """More queued deliveries for a stored message, as `ingest` queues them (born claimed
    when `claimed`; payload stored once when it is its channel's output)."""
    message_id, new, claimed, now = arg
    cur = conn.cursor()
    seal = sealer_of(conn)
    if cur.execute("SELECT 1 FROM messages WHERE id = ?", (message_id,)).fetchone() is None:
        raise LookupError(f"message {message_id} does not exist")
    outputs: dict[str, bytes] = {}
    channels = json.dumps(sorted({d.channel for d in new}))
    rows_found = cur.execute(_CHANNEL_OUTPUTS, (message_id, channels)).fetchall()
    for channel, output, result_id in rows_found:
        if channel not in outputs:  # the first result, as the read path picks it
            outputs[channel] = seal.open("channel_results", "output", result_id, output)
    first = next_id(cur, "deliveries")
    rows = []
    for offset, d in enumerate(new):
        output = outputs.get(d.channel)
        payload = (
            None if output is not None and output == d.payload
            else seal.seal("deliveries", "payload", first + offset, d.payload)
        )
        rows.append(
            (first + offset, message_id, d.channel, d.destination, d.lane, int(claimed),
             d.next_attempt_at, payload, now, now)
        )
    cur.executemany(_INSERT_DELIVERY, rows)
    return tuple(range(first, first + len(new)))


def record_attempt_many(conn: sqlite3.Connection, args: list[tuple[Attempt, float]]) -> list[None]:
    """`record_attempt` for a whole batch (see `ingest_many` for why)."""
    cur = conn.cursor()
    seal = sealer_of(conn)
    first = next_id(cur, "attempts")
    cur.executemany(
        _INSERT_ATTEMPT,
        [
            (
                first + offset,
                a.delivery_id,
                a.number,
                a.started_at,
                a.latency,
                a.outcome,
                a.code,
                seal.seal("attempts", "response", first + offset, a.response),
                a.error,
                a.next_attempt_at,
            )
            for offset, (a, _now) in enumerate(args)
        ],
    )
    cur.executemany(
        _UPDATE_AFTER_ATTEMPT,
        [
            (
                _STATUS_AFTER[a.outcome],
                a.next_attempt_at if a.outcome == "retry" else None,
                a.code,
                a.error,
                now,
                a.delivery_id,
            )
            for a, now in args
        ],
    )
    if cur.rowcount != len(args):
        # The writer re-runs the batch one op at a time, so the culprit fails alone.
        raise LookupError("an attempt names a delivery that does not exist")
    return [None] * len(args)


def record_attempt(conn: sqlite3.Connection, arg: tuple[Attempt, float]) -> None:
    """The attempt row and the delivery's new state commit together (see
    `record_attempt_many`, which the writer uses for a batch)."""
    record_attempt_many(conn, [arg])


def set_ack(conn: sqlite3.Connection, arg: tuple[int, str, bytes]) -> None:
    message_id, code, ack = arg
    sealed = sealer_of(conn).seal("messages", "ack", message_id, ack)
    conn.execute(
        "UPDATE messages SET ack_code = ?, ack = ? WHERE id = ?", (code, sealed, message_id)
    )


def claim_queued(conn: sqlite3.Connection, arg: tuple[list[str], int]) -> list[Delivery]:
    destinations, limit = arg
    rows = conn.execute(_CLAIM, (json.dumps(destinations), limit)).fetchall()
    seal = sealer_of(conn)
    # RETURNING gives no order guarantee; callers rely on oldest first.
    return sorted((delivery_from_row(r, seal) for r in rows), key=lambda d: d.id)


def release_claims(conn: sqlite3.Connection, destinations: list[str] | None) -> int:
    if destinations is None:
        return conn.execute(_RELEASE).rowcount
    return conn.execute(_RELEASE_OF, (json.dumps(destinations),)).rowcount


def requeue(conn: sqlite3.Connection, arg: tuple[list[int], float]) -> int:
    ids, now = arg
    return conn.execute(_REQUEUE, (now, now, json.dumps(ids))).rowcount


def requeue_failed(conn: sqlite3.Connection, arg: tuple[str, float]) -> int:
    destination, now = arg
    return conn.execute(_REQUEUE_FAILED, (now, now, destination)).rowcount


def discard(conn: sqlite3.Connection, arg: tuple[list[int], float]) -> int:
    ids, now = arg
    return conn.execute(_DISCARD, (now, json.dumps(ids))).rowcount


_FLAGGED: Final = (
    "SELECT 1 FROM appointment_versions WHERE message_id = ? AND warnings IS NOT NULL"
)
_RESOLVE: Final = """INSERT OR IGNORE INTO conflict_resolutions
    (message_id, resolved_at, resolved_by, outcome) VALUES (?, ?, ?, ?)"""


def resolve_conflict(
    conn: sqlite3.Connection, arg: tuple[int, str, str, float]
) -> ResolveOutcome:
    message_id, by, outcome, now = arg
    if conn.execute(_FLAGGED, (message_id,)).fetchone() is None:
        return "not_flagged"
    inserted = conn.execute(_RESOLVE, (message_id, now, by, outcome)).rowcount
    return "resolved" if inserted else "already_resolved"


def probe(conn: sqlite3.Connection, _: None) -> None:
    """Nothing: the readiness probe is the transaction around it (see SqliteStore.probe)."""


# Operations the writer may run for a whole batch at once. Their rows never depend on each
# other within one batch (an attempt's delivery was committed by an earlier batch), so the
# writer groups them by kind.
BATCHED: Final[dict[object, object]] = {ingest: ingest_many, record_attempt: record_attempt_many}
