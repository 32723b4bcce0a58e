"""Schema creation, migration and refusal, and the settings every connection carries."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from engine.store.sqlite import SqliteStore
from engine.store.sqlite_schema import (
    MIGRATIONS,
    StoreSchemaError,
    connect,
    migrate,
    prepare,
    user_version,
)


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows}


def _indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    return {r[0] for r in rows}


def test_an_empty_file_is_created_at_the_latest_version(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    assert prepare(path) == len(MIGRATIONS)
    with sqlite3.connect(path) as conn:
        assert user_version(conn) == len(MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {
        "messages", "message_keys", "channel_results", "deliveries", "attempts",
        "appointments", "appointment_actors", "appointment_versions", "message_hours",
    } <= _tables(path)
    assert {
        "messages_received_at",
        "messages_status",
        "messages_dedupe",
        "messages_control_id",
        "channel_results_channel",
        "deliveries_destination_message",
        "deliveries_unsent",
        "messages_type",
        "messages_ack_code",
        "deliveries_message",
        "deliveries_queued",
        "attempts_delivery",
        "appointment_actors_overlap",
        "appointment_versions_key",
        "appointment_versions_message",
        "appointment_versions_current",
        "appointment_versions_flagged",
    } <= _indexes(path)


def test_a_new_file_and_its_directory_are_created_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "data" / "engine.db"
    prepare(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_older_database_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    prepare(path)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE probe (v TEXT)")
        conn.execute("INSERT INTO probe VALUES ('kept')")
    extra = ("ALTER TABLE probe ADD COLUMN w TEXT NOT NULL DEFAULT 'added'",)
    assert prepare(path, (*MIGRATIONS, extra)) == len(MIGRATIONS) + 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT v, w FROM probe").fetchall() == [("kept", "added")]
        assert user_version(conn) == len(MIGRATIONS) + 1


def test_a_failing_migration_leaves_the_previous_version_intact(tmp_path: Path) -> None:
    path = tmp_path / "half.db"
    prepare(path)
    broken = ("CREATE TABLE half_done (v TEXT)", "THIS IS NOT SQL")
    with pytest.raises(sqlite3.OperationalError):
        prepare(path, (*MIGRATIONS, broken))
    with sqlite3.connect(path) as conn:
        assert user_version(conn) == len(MIGRATIONS)
    assert "half_done" not in _tables(path)


async def test_a_newer_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    before = path.read_bytes()
    store = SqliteStore(path)
    supports = rf"version 99 is newer .* supports \({len(MIGRATIONS)}\)"
    with pytest.raises(StoreSchemaError, match=supports):
        await store.open()
    assert path.read_bytes() == before


def test_migrate_refuses_newer_on_an_open_connection(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StoreSchemaError, match="newer"):
        migrate(conn)
    conn.close()


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not a database, just some text " * 100)
    with pytest.raises(StoreSchemaError, match="not a usable SQLite database"):
        prepare(path)


def test_connections_carry_the_durability_settings(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    prepare(path)
    conn = connect(path, busy_timeout=2.5)
    try:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 2500
        assert not conn.in_transaction
    finally:
        conn.close()
    reader = connect(path, readonly=True)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.execute("DELETE FROM messages")
    finally:
        reader.close()
