"""SQLite schema of the engine store: connection settings, DDL and ordered migrations.

Rule: `PRAGMA user_version` is the number of entries of `MIGRATIONS` applied to the file.
Opening runs the missing ones in order, each in its own IMMEDIATE transaction together with
its version bump (so a crash or a second process never sees half a migration); a file whose
version is newer than this code is refused and left untouched. Migrations are append-only:
never edit a released one, add the next.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from engine.security.atrest import CLEAR, RowSealer

Migration = tuple[str, ...]

# Version 1. Bodies are BLOBs so that at-rest encryption wraps them without a type change
# (engine.security.atrest; a sealed `patient_ids` or blind-indexed `message_keys.value` is a
# BLOB in its TEXT column, which SQLite keeps as written, so sealing needed no migration). Key
# lists are also kept joined (US-separated) on the message row so that listing
# messages needs no join; message_keys exists for searching them. A delivery's payload is
# NULL when it is byte for byte its channel result's output (the usual case: a destination
# never transforms), which saves a copy per destination and about a third of the bytes each
# ingest commits.
_V1: Migration = (
    """CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        received_at REAL NOT NULL,
        listener TEXT NOT NULL,
        content_type TEXT NOT NULL,
        charset TEXT NOT NULL,
        raw BLOB NOT NULL,
        size INTEGER NOT NULL,
        sender TEXT NOT NULL,
        facility TEXT NOT NULL,
        control_id TEXT NOT NULL,
        message_type TEXT NOT NULL,
        version TEXT NOT NULL,
        patient_ids TEXT NOT NULL,
        appointment_ids TEXT NOT NULL,
        status TEXT NOT NULL,
        ack_code TEXT NOT NULL,
        ack BLOB NOT NULL,
        error TEXT NOT NULL,
        replay_of INTEGER REFERENCES messages(id),
        duplicate_of INTEGER REFERENCES messages(id)
    )""",
    "CREATE INDEX messages_received_at ON messages(received_at)",
    "CREATE INDEX messages_status ON messages(status)",
    "CREATE INDEX messages_dedupe ON messages(sender, control_id, received_at)",
    "CREATE INDEX messages_control_id ON messages(control_id)",
    # Partial: most rows have neither, so these cost nothing on the hot insert.
    "CREATE INDEX messages_replay_of ON messages(replay_of) WHERE replay_of IS NOT NULL",
    "CREATE INDEX messages_duplicate_of ON messages(duplicate_of) WHERE duplicate_of IS NOT NULL",
    """CREATE TABLE message_keys (
        kind TEXT NOT NULL CHECK (kind IN ('patient', 'appointment')),
        value TEXT NOT NULL,
        message_id INTEGER NOT NULL REFERENCES messages(id),
        PRIMARY KEY (kind, value, message_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE channel_results (
        id INTEGER PRIMARY KEY,
        message_id INTEGER NOT NULL REFERENCES messages(id),
        channel TEXT NOT NULL,
        status TEXT NOT NULL,
        output BLOB NOT NULL,
        error TEXT NOT NULL,
        error_step TEXT NOT NULL,
        error_location TEXT NOT NULL
    )""",
    "CREATE INDEX channel_results_message ON channel_results(message_id, channel)",
    "CREATE INDEX channel_results_channel ON channel_results(channel, message_id)",
    """CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY,
        message_id INTEGER NOT NULL REFERENCES messages(id),
        channel TEXT NOT NULL,
        destination TEXT NOT NULL,
        lane TEXT NOT NULL,
        status TEXT NOT NULL,
        claimed INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        round_attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        payload BLOB,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        last_code TEXT NOT NULL DEFAULT '',
        last_error TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX deliveries_message ON deliveries(message_id)",
    "CREATE INDEX deliveries_destination ON deliveries(destination, status)",
    # Claim and release touch only queued rows; failed ones are what operators list and retry.
    "CREATE INDEX deliveries_queued ON deliveries(claimed, destination) WHERE status = 'queued'",
    "CREATE INDEX deliveries_failed ON deliveries(id) WHERE status = 'failed'",
    """CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
        number INTEGER NOT NULL,
        started_at REAL NOT NULL,
        latency REAL NOT NULL,
        outcome TEXT NOT NULL,
        code TEXT NOT NULL,
        response BLOB NOT NULL,
        error TEXT NOT NULL,
        next_attempt_at REAL
    )""",
    "CREATE INDEX attempts_delivery ON attempts(delivery_id)",
)

# Version 2: appointment state. `appointments` holds the current version of each appointment
# (by booking key; `id` is the engine's FHIR id), `appointment_versions` every version a message
# carried, whatever its disposition (`version` is set only on the ones that became current, and
# the partial unique index makes the store refuse to hand out one number twice), and
# `appointment_actors` who each current version holds over [start, end), for the double-booking
# lookup. That lookup reads (actor, end, start): for a recent or future interval the rows with
# end > :start are the few that have not ended yet, however long the history grows. `warnings`
# is NULL when there are none, so the partial index of flagged versions holds only those.
_V2: Migration = (
    """CREATE TABLE appointments (
        key TEXT PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        version INTEGER NOT NULL,
        resource BLOB NOT NULL,
        status TEXT NOT NULL,
        source_time REAL,
        start REAL,
        "end" REAL,
        updated_at REAL NOT NULL,
        message_id INTEGER NOT NULL REFERENCES messages(id)
    )""",
    """CREATE TABLE appointment_actors (
        actor TEXT NOT NULL,
        key TEXT NOT NULL REFERENCES appointments(key),
        start REAL NOT NULL,
        "end" REAL NOT NULL,
        PRIMARY KEY (key, actor)
    ) WITHOUT ROWID""",
    'CREATE INDEX appointment_actors_overlap ON appointment_actors(actor, "end", start)',
    """CREATE TABLE appointment_versions (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL,
        message_id INTEGER NOT NULL REFERENCES messages(id),
        recorded_at REAL NOT NULL,
        version INTEGER,
        disposition TEXT NOT NULL,
        change TEXT NOT NULL,
        status TEXT NOT NULL,
        source_time REAL,
        resource BLOB NOT NULL,
        warnings TEXT
    )""",
    "CREATE INDEX appointment_versions_key ON appointment_versions(key, id)",
    # One message carries at most one appointment version (Ingest.appointment).
    "CREATE UNIQUE INDEX appointment_versions_message ON appointment_versions(message_id)",
    """CREATE UNIQUE INDEX appointment_versions_current ON appointment_versions(key, version)
        WHERE version IS NOT NULL""",
    """CREATE INDEX appointment_versions_flagged ON appointment_versions(message_id)
        WHERE warnings IS NOT NULL""",
)

# Version 3: message search on millions of rows (engine.store.sqlite_search). A page is the
# newest 50 of a filter, so each filter needs an index that yields its messages by id, newest
# first, and stops after the page: messages by type and by ACK code; deliveries by destination
# then message (the delivery status rides along in the index, so "failed deliveries to X"
# needs no row reads; this replaces (destination, status), which kept the same entry count);
# deliveries not sent by status then message (a partial index: a delivery is in it from its
# ingest until it is sent).
# A time range becomes an id range through `message_hours`: per hour of received_at, the
# lowest and highest message id received in it. The writer widens the hour's row once per
# batch (sqlite_writes.ingest_many; a trigger would be simpler but cost ~15 us per message,
# a quarter of an ingest's SQL); this migration fills it from the messages already stored.
# received_at follows id closely but not exactly (ids are handed out at commit), so the range
# found is a superset of the ids in the time range, and received_at is still checked exactly.
_V3: Migration = (
    "CREATE INDEX messages_type ON messages(message_type)",
    "CREATE INDEX messages_ack_code ON messages(ack_code)",
    "DROP INDEX deliveries_destination",
    "CREATE INDEX deliveries_destination_message ON deliveries(destination, message_id, status)",
    # Deliveries not (yet) sent, by status then message: the few a status search looks for.
    # The literal condition is repeated by the search so SQLite may use it (sqlite_search).
    """CREATE INDEX deliveries_unsent ON deliveries(status, message_id)
        WHERE status <> 'sent'""",
    """CREATE TABLE message_hours (
        hour INTEGER PRIMARY KEY,
        first_id INTEGER NOT NULL,
        last_id INTEGER NOT NULL
    )""",
    """INSERT INTO message_hours (hour, first_id, last_id)
        SELECT CAST(received_at / 3600 AS INTEGER), min(id), max(id) FROM messages
        GROUP BY 1""",
)

# Version 4: a flagged appointment conflict resolved by a person (engine.api, the console):
# who, when and how (a fixed word, no free text: a note could carry PHI). One row per message,
# never updated: a resolution is a fact of the record, like the warning it answers.
_V4: Migration = (
    """CREATE TABLE conflict_resolutions (
        message_id INTEGER PRIMARY KEY REFERENCES messages(id),
        resolved_at REAL NOT NULL,
        resolved_by TEXT NOT NULL,
        outcome TEXT NOT NULL
    )""",
)

MIGRATIONS: tuple[Migration, ...] = (_V1, _V2, _V3, _V4)


class StoreSchemaError(RuntimeError):
    """The database cannot be used by this engine (too new, or not a usable SQLite file)."""


class StoreConnection(sqlite3.Connection):
    """A store connection and the `RowSealer` its reads and writes seal and open values with
    (engine.security.atrest): the store's functions all take the connection, so the keys
    travel with it instead of through every signature."""

    sealer: RowSealer = CLEAR
    hours: bool | None = None  # the file has message_hours (version 3); None: not asked yet


def keeps_hours(conn: sqlite3.Connection) -> bool:
    """Whether the file has `message_hours` to keep up. Always, once the store opened it (it
    migrates first); a file still at version 2 is one tests write as an older engine did."""
    cached = conn.hours if isinstance(conn, StoreConnection) else None
    if cached is None:
        cached = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'message_hours'"
        ).fetchone() is not None
        if isinstance(conn, StoreConnection):
            conn.hours = cached
    return cached


def sealer_of(conn: sqlite3.Connection | sqlite3.Cursor) -> RowSealer:
    """The sealer of `conn` (or of a cursor's connection); clear for a plain connection."""
    owner = conn.connection if isinstance(conn, sqlite3.Cursor) else conn
    return owner.sealer if isinstance(owner, StoreConnection) else CLEAR


def connect(
    path: str | os.PathLike[str],
    *,
    readonly: bool = False,
    check_same_thread: bool = True,
    busy_timeout: float = 5.0,
    sealer: RowSealer = CLEAR,
) -> StoreConnection:
    """A connection with the store's settings. Autocommit mode (isolation_level None): every
    transaction is explicit, and a reader never holds a snapshot between statements."""
    conn = sqlite3.connect(
        path,
        timeout=busy_timeout,  # busy_timeout: another process (the CLI) may hold the lock
        isolation_level=None,
        check_same_thread=check_same_thread,
        cached_statements=256,
        factory=StoreConnection,
    )
    conn.sealer = sealer
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        # FULL: the WAL is fsynced at every commit: an acknowledged message survives power loss.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA cache_size = -16000")
        conn.execute("PRAGMA temp_store = MEMORY")
        if readonly:
            conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def user_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def _refuse_newer(version: int, known: int) -> None:
    if version > known:
        raise StoreSchemaError(
            f"database schema version {version} is newer than this engine supports ({known});"
            " upgrade the engine, or point it at another database"
        )


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the missing migrations in order; returns the resulting version."""
    known = len(migrations)
    version = user_version(conn)
    _refuse_newer(version, known)
    while version < known:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            current = user_version(conn)
            _refuse_newer(current, known)
            if current == version:
                for statement in migrations[version]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        version = user_version(conn)
    return version


def prepare(
    path: str | os.PathLike[str],
    migrations: Sequence[Migration] = MIGRATIONS,
    busy_timeout: float = 5.0,
) -> int:
    """Create the file if needed (owner-only: it holds PHI), switch it to WAL and migrate it.
    Returns the schema version."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    if not file.exists():
        os.close(os.open(file, os.O_CREAT | os.O_WRONLY, 0o600))
    try:
        conn = connect(file, busy_timeout=busy_timeout)
    except sqlite3.DatabaseError as exc:
        raise StoreSchemaError(f"{file} is not a usable SQLite database: {exc}") from exc
    try:
        version = user_version(conn)
        # Refuse before switching journal modes: a newer database is left exactly as it was.
        _refuse_newer(version, len(migrations))
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreSchemaError(f"{file}: cannot switch to WAL journal mode (got {mode})")
        return migrate(conn, migrations)
    finally:
        conn.close()


def next_id(cur: sqlite3.Cursor, table: str) -> int:
    # Inside BEGIN IMMEDIATE no other process can insert, so max+1 is exactly the id SQLite
    # would assign itself (INTEGER PRIMARY KEY without AUTOINCREMENT).
    (top,) = cur.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()
    return int(top) + 1
