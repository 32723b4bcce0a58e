"""Message search on the SQLite store: the statement for a `MessageFilter`, built so that a
page of the newest matches reads about a page of index entries however large the store is.

Rule: the statement walks ONE index that yields candidate messages by id, newest first (the
driver), checks every other condition on each candidate and stops when the page is full; it
never sorts what a filter matches, except for the short lists of the few-message keys. The
driver is the filter expected to match the fewest messages:

1. control id, patient id, appointment id (a handful of messages each);
2. a destination: deliveries (destination, message_id, status) gives its messages in order,
   with the delivery status in the entry;
3. a delivery status other than sent: deliveries not sent (status, message_id), a partial index;
4. a channel: channel_results (channel, message_id);
5. the message's own columns (status, type, ACK code; a value other than the usual one first),
   or else the ids themselves.

The other conditions are written so SQLite cannot pick them as its driver instead (`+column`
turns an index off for one term; the other tables are asked per candidate with EXISTS).

A time range also bounds the driver's walk: `message_hours` (sqlite_schema, version 3) maps
each hour of received_at to the message ids received in it, so "failures last March" starts in
March instead of at the newest message. The ids it gives are a superset; `received_at` is
still checked exactly. Values from closed sets (statuses) are validated and inlined as
literals so the partial indexes apply. Paging: `before_id` (exclusive), newest first.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Final

from engine.security.atrest import CLEAR, RowSealer
from engine.store import sqlite_appointments as appointments
from engine.store.base import MessageFilter, MessageRow
from engine.store.sqlite_queries import (
    DELIVERY_STATUSES,
    MESSAGE_COLUMNS,
    MESSAGE_STATUSES,
    literal,
    message_from_row,
)
from engine.store.sqlite_schema import sealer_of

# Values most messages carry: a filter on one of them matches too much to drive the search.
_RESOLVED: Final = "SELECT message_id FROM conflict_resolutions"
_USUAL: Final = frozenset({("status", "processed"), ("ack_code", "AA")})
_HOUR: Final = "CAST(? / 3600 AS INTEGER)"  # the same expression as sqlite_writes._UPSERT_HOUR
_BY_DELIVERY: Final = ("deliveries d CROSS JOIN messages m ON m.id = d.message_id", "d.message_id")
_SELECT: Final = ", ".join(f"m.{c}" for c in MESSAGE_COLUMNS)


@dataclass
class _Terms:
    """WHERE terms with their parameters, in order."""

    sql: list[str] = field(default_factory=list)
    params: list[object] = field(default_factory=list)

    def add(self, term: str, *params: object) -> None:
        self.sql.append(term)
        self.params.extend(params)


def search(conn: sqlite3.Connection, flt: MessageFilter) -> list[MessageRow]:
    """The page of messages matching `flt`: newest (highest id) first, below `before_id`."""
    if flt.limit <= 0:
        return []
    seal = sealer_of(conn)
    sql, params = search_sql(flt, seal)
    return [message_from_row(r, seal) for r in conn.execute(sql, params).fetchall()]


def search_sql(flt: MessageFilter, seal: RowSealer = CLEAR) -> tuple[str, list[object]]:
    """The statement `search` runs for `flt`, with its parameters. A patient id is looked up
    as every form its entry may have (clear, or blind-indexed under each key)."""
    status = (
        None if flt.status is None
        else literal(flt.status, MESSAGE_STATUSES, "message status")
    )
    delivery_status = (
        None if flt.delivery_status is None
        else literal(flt.delivery_status, DELIVERY_STATUSES, "delivery status")
    )
    few = _few_keys(flt, seal)
    if few.sql:
        driver = "few"
    elif flt.destination is not None:
        driver = "destination"
    elif flt.delivery_status not in (None, "sent"):
        driver = "delivery_status"
    elif flt.channel is not None:
        driver = "channel"
    else:
        driver = "messages"

    terms = _Terms()
    if driver == "destination":
        source, key = _BY_DELIVERY
        terms.add("d.destination = ?", flt.destination)
        if delivery_status is not None:
            terms.add(f"d.status = {delivery_status}")
    elif driver == "delivery_status":
        # The partial index of deliveries not sent (sqlite_schema) applies only when its
        # condition is written out.
        source, key = _BY_DELIVERY
        terms.add(f"d.status = {delivery_status} AND d.status <> 'sent'")
    elif driver == "channel":
        source, key = "channel_results c CROSS JOIN messages m ON m.id = c.message_id", (
            "c.message_id"
        )
        terms.add("c.channel = ?", flt.channel)
    else:
        source, key = "messages m", "m.id"
    _id_range(terms, key, flt)

    # The message's own columns: indexed (unprefixed) only when they drive the search.
    chosen = _column_driver(flt) if driver == "messages" else None
    for name, value in _own_columns(flt).items():
        mark = "" if name == chosen else "+"
        if name == "status":
            terms.add(f"{mark}m.status = {status}")  # the validated literal
        else:
            terms.add(f"{mark}m.{name} = ?", value)
    if flt.since is not None:
        terms.add("+m.received_at >= ?", flt.since)
    if flt.until is not None:
        terms.add("+m.received_at < ?", flt.until)
    terms.sql.extend(few.sql)
    terms.params.extend(few.params)
    if flt.flagged is not None:
        terms.add(f"m.id {'IN' if flt.flagged else 'NOT IN'} ({appointments.FLAGGED_MESSAGES})")
    if flt.resolved is not None:
        terms.add(f"m.id {'IN' if flt.resolved else 'NOT IN'} ({_RESOLVED})")
    if flt.channel is not None and driver != "channel":
        terms.add(
            "EXISTS (SELECT 1 FROM channel_results c"
            " WHERE c.message_id = m.id AND c.channel = ?)",
            flt.channel,
        )
    by_delivery = driver in ("destination", "delivery_status")  # the driver checks it
    if not by_delivery and (flt.destination is not None or delivery_status is not None):
        probe = _Terms()
        if flt.destination is not None:
            probe.add("d.destination = ?", flt.destination)
        if delivery_status is not None:
            probe.add(f"d.status = {delivery_status}")
        terms.add(
            "EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id"
            f" AND {' AND '.join(probe.sql)})",
            *probe.params,
        )

    # A message with two deliveries to one destination (or two results of one channel) is
    # one row: GROUP BY the driver's key, which its index yields in order.
    group = f" GROUP BY {key}" if key != "m.id" else ""
    sql = (
        f"SELECT {_SELECT} FROM {source} WHERE {' AND '.join(terms.sql) or '1'}"
        f"{group} ORDER BY {key} DESC LIMIT ?"
    )
    return sql, [*terms.params, flt.limit]


def _few_keys(flt: MessageFilter, seal: RowSealer) -> _Terms:
    """Terms for the keys that name few messages, the first one indexed (it drives)."""
    terms = _Terms()
    if flt.control_id is not None:
        terms.add("m.control_id = ?", flt.control_id)
    for kind, value in (("patient", flt.patient_id), ("appointment", flt.appointment_id)):
        if value is None:
            continue
        values = seal.search_values(kind, value) if kind == "patient" else [value]
        marks = ", ".join("?" * len(values))
        mark = "+" if terms.sql else ""
        terms.add(
            f"{mark}m.id IN (SELECT message_id FROM message_keys"
            f" WHERE kind = '{kind}' AND value IN ({marks}))",
            *values,
        )
    return terms


def _own_columns(flt: MessageFilter) -> dict[str, str]:
    """The filter's conditions on the message's own indexed columns, by column."""
    given = {"status": flt.status, "ack_code": flt.ack_code, "message_type": flt.message_type}
    return {name: value for name, value in given.items() if value is not None}


def _column_driver(flt: MessageFilter) -> str | None:
    """Which of the message's own columns drives: a status or ACK code other than the usual
    one (errors, rejections: few), else the message type, else whichever is given."""
    given = _own_columns(flt)
    rare = [n for n, v in given.items() if n != "message_type" and (n, v) not in _USUAL]
    if rare:
        return rare[0]
    return "message_type" if "message_type" in given else next(iter(given), None)


def _id_range(terms: _Terms, key: str, flt: MessageFilter) -> None:
    """Bounds on the driver's message id: from the time range (through message_hours; NULL,
    so no rows, when no message was received in it) and from `before_id`."""
    if flt.since is not None:
        terms.add(
            f"{key} >= (SELECT min(first_id) FROM message_hours WHERE hour >= {_HOUR})",
            flt.since,
        )
    if flt.until is not None:
        terms.add(
            f"{key} <= (SELECT max(last_id) FROM message_hours WHERE hour <= {_HOUR})",
            flt.until,
        )
    if flt.before_id is not None:
        terms.add(f"{key} < ?", flt.before_id)
