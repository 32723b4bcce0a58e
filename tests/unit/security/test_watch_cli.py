"""The real `engine` CLI in subprocesses: reads audited by separate `engine show` runs add up
to one burst alert (the audit file is what they share), and routes.yaml's `security.lockout`
decides when a credential locks, as `engine users list` then shows."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from engine.commands.credentials import os_user
from engine.config.security import routes_security
from engine.security.identities import Identities, LockoutPolicy, Refusal
from engine.security.identities_store import IdentityStore
from engine.security.locations import security_file
from tests.unit.security.audit_support import KEY_TEXT
from tests.unit.security.identity_support import PASSWORD
from tests.unit.security.test_audit_cli import engine
from tests.unit.security.test_audit_cli import routes as routes  # the fixture: one message
from tests.unit.security.test_identities_cli import engine as engine_stdin

KEYED = {"ENGINE_AUDIT_KEY": KEY_TEXT}


def test_reads_plus_one_engine_show_runs_raise_exactly_one_burst_alert(routes: Path):
    routes.write_text(
        "store: sqlite:engine.db\nsecurity:\n  profile: development\n"
        "  alerts:\n    burst: {reads: 3, within: 1h}\n"
    )
    runs = [engine("show", "1", "--config", str(routes), env=KEYED) for _ in range(5)]
    assert [r.returncode for r in runs] == [0] * 5
    alerts = [line for r in runs for line in r.stderr.splitlines() if "ALERT" in line]
    assert alerts == [f"ALERT access burst: os:{os_user()} made 4 reads in 3600s"]
    assert "ALERT" in runs[3].stderr  # the fourth read is the one past three
    assert all("PAT777" not in r.stderr for r in runs)


def locks_after(routes: Path, failures: int) -> str:
    """`failures` wrong passwords for desk1 under routes.yaml's lockout; `users list` after."""
    config = ("--config", str(routes))
    added = engine_stdin("users", "add", "desk1", "--role", "operator", "--password-stdin", *config,
                   stdin=PASSWORD + "\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    policy = LockoutPolicy.of(routes_security(routes).lockout)
    path = security_file(f"sqlite:{routes.parent / 'engine.db'}", "identities", {})
    with IdentityStore(path) as store:
        ids = Identities(store, lockout=policy)
        for _ in range(failures):
            refused = ids.authenticate_password("desk1", PASSWORD + "x", None)
            assert isinstance(refused, Refusal)
    listed = engine("users", "list", *config)
    assert listed.returncode == 0, listed.stderr
    return listed.stdout


def test_lockout_from_routes_yaml_locks_after_two_failures(
    routes: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="engine.alerts")
    routes.write_text("store: sqlite:engine.db\nsecurity:\n  profile: development\n"
                      "  lockout: {failures: 2, window: 1h}\n")
    assert "locked until" in locks_after(routes, 2)
    [record] = [r for r in caplog.records if r.name == "engine.alerts"]
    text = "ALERT credential locked: user:desk1 after 2 failed attempts in 1 h"
    assert record.getMessage() == text
    assert record.alert_kind == "credential_locked"  # type: ignore[attr-defined]


def test_the_default_lockout_does_not_lock_after_two_failures(routes: Path):
    assert "locked until" not in locks_after(routes, 2)
