"""Key rotation and key usage of the SQLite store's sealed values (`engine keys rotate | status`).

Rotation walks each table holding sealed values in rowid order, a batch at a time, each batch
in its own short IMMEDIATE transaction: it reads the batch, re-seals every value not under the
current key (clear ones included) and re-indexes the patient ids of messages whose blind
index entries are not under the current key, then commits. So:
- a running engine keeps writing between batches (its writer waits at most one batch), and a
  row it writes meanwhile is sealed with whatever key is current in *its* configuration;
- nothing is lost or half-done: a row is read and rewritten under the write lock;
- rotation is resumable: killed midway, a second run skips what is already current.
Usage counts read only each value's header.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from engine.security.atrest import KeyRing, RowSealer, index_key_id, sealed_key_id
from engine.store.sqlite_writes import KEY_SEPARATOR

CLEAR_ID: Final = "(clear)"

# table -> (the row id values are bound to, sealed columns); TEXT columns hold a sealed value
# as a BLOB. `appointments` is walked by rowid but bound to the appointment's id.
SEALED: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    "messages": ("id", ("raw", "ack", "patient_ids")),
    "channel_results": ("id", ("output",)),
    "deliveries": ("id", ("payload",)),
    "attempts": ("id", ("response",)),
    "appointments": ("id", ("resource",)),
    "appointment_versions": ("id", ("resource",)),
}
_TEXT_COLUMNS: Final = frozenset({("messages", "patient_ids")})
_HEADER: Final = 40  # bytes: enough for the mark, version, length and the longest key id


@dataclass
class KeyUsage:
    """How many stored values each key id protects (`CLEAR_ID`: values stored in clear)."""

    values: Counter[str] = field(default_factory=Counter)
    index_entries: Counter[str] = field(default_factory=Counter)

    def total(self, key_id: str) -> int:
        return self.values[key_id] + self.index_entries[key_id]


@dataclass
class Rotation:
    rows: int = 0  # rows read
    resealed: Counter[str] = field(default_factory=Counter)  # by the key they were under
    reindexed: int = 0  # messages whose patient ids were indexed again


Progress = Callable[[str, int, Rotation], None]  # (table, rows of it done so far, totals)


def _key_of(value: object) -> str | None:
    """The key id of a stored value, CLEAR_ID for a clear one, None for nothing stored."""
    if value is None or value == b"" or value == "":
        return None
    if isinstance(value, str):
        return CLEAR_ID
    assert isinstance(value, bytes)
    return sealed_key_id(value) or CLEAR_ID


def usage(conn: sqlite3.Connection) -> KeyUsage:
    found = KeyUsage()
    for table, (_ident, columns) in SEALED.items():
        for column in columns:
            # substr of a TEXT value is text, of a BLOB a blob: the type survives.
            for (head,) in conn.execute(f"SELECT substr({column}, 1, {_HEADER}) FROM {table}"):
                key_id = _key_of(head)
                if key_id is not None:
                    found.values[key_id] += 1
    for (head,) in conn.execute(
        f"SELECT substr(value, 1, {_HEADER}) FROM message_keys WHERE kind = 'patient'"
    ):
        found.index_entries[index_key_id(head) or CLEAR_ID] += 1
    return found


def rotate(
    conn: sqlite3.Connection, ring: KeyRing, batch: int = 500, progress: Progress | None = None
) -> Rotation:
    """Re-seal everything not under `ring.current`; `conn` must be in autocommit mode."""
    seal = RowSealer(ring)
    done = Rotation()
    # Overwrite what an UPDATE or DELETE frees: a value rotated out of clear must not linger
    # in free space of the file.
    conn.execute("PRAGMA secure_delete = ON")
    for table, (ident, columns) in SEALED.items():
        last = 0
        table_rows = 0
        while True:
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = conn.execute(
                    f"SELECT rowid, {ident}, {', '.join(columns)} FROM {table}"
                    " WHERE rowid > ? ORDER BY rowid LIMIT ?",
                    (last, batch),
                ).fetchall()
                for row in rows:
                    _reseal_row(conn, seal, table, columns, row, done)
                if table == "messages" and rows:
                    _reindex(conn, seal, rows, done)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            if not rows:
                break
            last = rows[-1][0]
            table_rows += len(rows)
            done.rows += len(rows)
            if progress is not None:
                progress(table, table_rows, done)
    return done


def _reseal_row(
    conn: sqlite3.Connection,
    seal: RowSealer,
    table: str,
    columns: tuple[str, ...],
    row: tuple[object, ...],
    done: Rotation,
) -> None:
    assert seal.ring is not None
    rowid, ident = row[0], row[1]
    changes: dict[str, object] = {}
    for column, value in zip(columns, row[2:], strict=True):
        key_id = _key_of(value)
        if key_id is None or key_id == seal.ring.current:
            continue
        if (table, column) in _TEXT_COLUMNS:
            assert isinstance(value, str | bytes)
            text = seal.open_text(table, column, ident, value)
            changes[column] = seal.seal_text(table, column, ident, text)
        else:
            assert isinstance(value, bytes)
            changes[column] = seal.seal(table, column, ident, seal.open(table, column, ident,
                                                                         value))
        done.resealed[key_id] += 1
    if changes:
        sets = ", ".join(f"{c} = ?" for c in changes)
        conn.execute(f"UPDATE {table} SET {sets} WHERE rowid = ?", (*changes.values(), rowid))


def _reindex(
    conn: sqlite3.Connection, seal: RowSealer, rows: list[tuple[object, ...]], done: Rotation
) -> None:
    """Patient index entries of the batch's messages, made again under the current key where
    any is not (their clear ids come from the message row, re-sealed just before)."""
    assert seal.ring is not None
    first, last = rows[0][1], rows[-1][1]
    stale = {
        message_id
        for message_id, value in conn.execute(
            "SELECT message_id, value FROM message_keys WHERE kind = 'patient'"
            " AND message_id BETWEEN ? AND ?",
            (first, last),
        )
        if index_key_id(value) != seal.ring.current
    }
    for message_id in sorted(stale):
        (stored,) = conn.execute(
            "SELECT patient_ids FROM messages WHERE id = ?", (message_id,)
        ).fetchone()
        ids = seal.open_text("messages", "patient_ids", message_id, stored)
        conn.execute(
            "DELETE FROM message_keys WHERE kind = 'patient' AND message_id = ?", (message_id,)
        )
        conn.executemany(
            "INSERT OR IGNORE INTO message_keys (kind, value, message_id) VALUES (?, ?, ?)",
            [("patient", seal.index("patient", v), message_id)
             for v in ids.split(KEY_SEPARATOR) if v],
        )
        done.reindexed += 1
