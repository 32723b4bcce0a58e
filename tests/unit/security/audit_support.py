"""Audit-trail test support: a synthetic key, records to fill a trail with, and a way to tamper
with the file the way an attacker with shell access would (sqlite3, triggers dropped)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from engine.security.audit import Actor, AuditEvent, AuditKey
from engine.security.audit_store import AuditStore

KEY_TEXT = "k" * 8 + "synthetic-audit-key-for-tests-0123456789"


def fill(store: AuditStore, count: int, start: float = 1_750_000_000.0) -> None:
    """`count` records, one a minute, varied enough that every field is exercised."""
    for i in range(count):
        store.append(
            Actor(f"user{i % 3}", "viewer" if i % 2 else "operator", f"10.0.0.{i}", "test-agent"),
            AuditEvent(
                "R" if i % 2 == 0 else "E",
                "engine show" if i % 2 == 0 else "engine messages",
                outcome=0 if i % 4 else 4,
                message_ids=(100 + i,),
                patient_ids=(f"PAT{i % 5:03d}",),
                appointment_ids=(f"APT{i:03d}",),
                query={"patient_id": f"PAT{i % 5:03d}"} if i % 2 else None,
                count=i if i % 2 else None,
            ),
            recorded=start + 60 * i,
        )


def tamper(path: Path, *statements: str) -> None:
    """Run SQL directly on the audit file after dropping the append-only triggers."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER audit_events_no_update")
        conn.execute("DROP TRIGGER audit_events_no_delete")
        for sql in statements:
            conn.execute(sql)
    finally:
        conn.close()


def restore_triggers(path: Path, key: AuditKey) -> None:
    """Put the triggers back (as a careful attacker would), so that only the records tell."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA user_version = 0")  # the store recreates what is missing
    finally:
        conn.close()
    AuditStore(path, key).close()
