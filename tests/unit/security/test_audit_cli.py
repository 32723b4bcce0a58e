"""`engine audit verify | search`, and the audit records `engine messages | show | retry` leave
(who = the OS user, from = "cli"): the real command in a subprocess, on real SQLite files."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from engine.commands.credentials import os_user
from engine.security.audit import Actor, AuditEvent, AuditKey
from engine.security.audit_store import AuditStore
from engine.store.sqlite import SqliteStore
from tests.unit.security.audit_support import KEY_TEXT, tamper
from tests.unit.store.helpers import make_ingest


@pytest.fixture
def routes(tmp_path: Path) -> Path:
    path = tmp_path / "routes.yaml"
    # Development: the commands run as the OS user (test_cli_roles.py tests credentials).
    path.write_text("store: sqlite:engine.db\nsecurity: {profile: development}\n")

    async def one_message() -> None:
        store = SqliteStore(tmp_path / "engine.db")
        await store.open()
        try:
            await store.ingest(make_ingest("CTRL777", patients=("PAT777",), appointments=("APT7",)))
        finally:
            await store.close()

    asyncio.run(one_message())
    return path


AUDIT_VARIABLES = ("ENGINE_AUDIT_KEY", "ENGINE_AUDIT_KEY_FILE", "ENGINE_AUDIT_DB")
KEYED = {"ENGINE_AUDIT_KEY": KEY_TEXT}


def engine(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`engine ARGS` with only the given audit variables set (none from the caller's shell)."""
    environ = {k: v for k, v in os.environ.items() if k not in AUDIT_VARIABLES}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def audit_json(routes: Path, *args: str) -> list[dict]:
    done = engine("audit", "search", "--config", str(routes), "--json", *args, env=KEYED)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_show_and_messages_are_recorded_as_the_os_user(routes: Path):
    config = ("--config", str(routes))
    shown = engine("show", "1", *config, env=KEYED)
    assert shown.returncode == 0 and "CTRL777" in shown.stdout and shown.stderr == ""
    assert engine("messages", *config, "--patient-id", "PAT777", env=KEYED).returncode == 0
    assert engine("show", "99", *config, env=KEYED).returncode == 1
    missing, search, read = audit_json(routes)
    assert read["action"] == "R" and read["what"] == "engine show"
    assert (read["message_ids"], read["patient_ids"], read["appointment_ids"]) == (
        [1],
        ["PAT777"],
        ["APT7"],
    )
    assert (read["who"], read["address"], read["outcome"]) == (f"os:{os_user()}", "cli", 0)
    assert search["action"] == "E" and search["what"] == "engine messages"
    assert search["query"] == {"patient_id": "PAT777", "limit": 100} and search["count"] == 1
    assert search["patient_ids"] == ["PAT777"] and search["message_ids"] == [1]
    assert (missing["message_ids"], missing["outcome"]) == ([99], 4)
    by_patient = audit_json(routes, "--patient", "PAT777", "--action", "R")
    assert [r["seq"] for r in by_patient] == [read["seq"]]
    assert audit_json(routes, "--user", "nobody-else") == []
    table = engine("audit", "search", *config, "--patient", "PAT777", env=KEYED).stdout
    assert table.splitlines()[0].split() == [
        "SEQ", "RECORDED", "WHO", "ROLE", "FROM", "ACTION", "WHAT", "OUTCOME", "ENTITIES"
    ]  # fmt: skip
    assert len(table.splitlines()) == 3  # the read and the search name the patient


def test_a_retry_that_finds_nothing_is_recorded_as_a_minor_failure(routes: Path):
    assert engine("retry", "424242", "--config", str(routes), env=KEYED).returncode == 1
    [record] = audit_json(routes, "--action", "E")
    assert record["what"] == "engine retry" and record["outcome"] == 4
    assert record["query"] == {"delivery_ids": [424242]} and record["count"] == 0


def test_verify_exits_0_on_an_intact_trail_and_1_naming_the_first_bad_record(routes: Path):
    config = ("--config", str(routes))
    for _ in range(3):
        assert engine("show", "1", *config, env=KEYED).returncode == 0
    intact = engine("audit", "verify", *config, env=KEYED)
    assert intact.returncode == 0 and intact.stdout.startswith("OK: 3 record(s) verify\n")

    tamper(routes.parent / "engine.db.audit.db", "UPDATE audit_events SET who = 'x' WHERE seq = 2")
    broken = engine("audit", "verify", *config, env=KEYED)
    assert broken.returncode == 1
    assert broken.stdout.startswith("BROKEN at record 2 (edited):")
    assert "append-only triggers missing" in broken.stdout
    as_json = engine("audit", "verify", *config, "--json", env=KEYED)
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 1
    assert report["first_bad"]["seq"] == 2 and report["records"] == 1 and not report["ok"]


def test_verify_with_a_key_file_and_an_explicit_audit_file(tmp_path: Path):
    key_file, trail = tmp_path / "audit.key", tmp_path / "elsewhere.db"
    key_file.write_text(KEY_TEXT)
    with AuditStore(trail, AuditKey.from_file(key_file)) as store:
        store.append(Actor("alice"), AuditEvent("R", "GET /messages/1", message_ids=(1,)))
    args = ("audit", "verify", "--audit-db", str(trail))
    assert engine(*args, "--key-file", str(key_file)).returncode == 0
    no_key = engine(*args)  # a clear error, not a traceback and not "broken"
    assert no_key.returncode == 2 and no_key.stderr.startswith("engine: no audit key")
    absent = engine("audit", "verify", "--audit-db", str(tmp_path / "absent.db"), env=KEYED)
    assert absent.returncode == 2 and "no audit trail at" in absent.stderr


def test_without_a_key_the_commands_work_and_warn_once(routes: Path):
    shown = engine("show", "1", "--config", str(routes))
    assert shown.returncode == 0 and "CTRL777" in shown.stdout
    assert shown.stderr.count("\n") == 1 and "engine show was not audited" in shown.stderr
    assert not (routes.parent / "engine.db.audit.db").exists()


def test_what_cannot_be_audited_is_not_shown(routes: Path):
    short = engine("show", "1", "--config", str(routes), env={"ENGINE_AUDIT_KEY": "too-short"})
    assert short.returncode == 2 and short.stdout == "" and "too short" in short.stderr
    assert "too-short" not in short.stderr  # the key's value is never echoed

    # A directory where the audit file should be: the append fails, so nothing is printed.
    unwritable = {**KEYED, "ENGINE_AUDIT_DB": str(routes.parent)}
    listed = engine("messages", "--config", str(routes), env=unwritable)
    assert listed.returncode == 2 and listed.stdout == ""
    assert "engine messages was not audited" in listed.stderr


def test_the_audit_file_stays_append_only_for_the_cli_too(routes: Path):
    assert engine("show", "1", "--config", str(routes), env=KEYED).returncode == 0
    conn = sqlite3.connect(routes.parent / "engine.db.audit.db")
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM audit_events")
    finally:
        conn.close()
