"""`engine users ...` and `engine apikeys ...`: the real command in a subprocess on a real
identity file, then the result checked through the library."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from engine.commands.common import CommandError
from engine.commands.credentials import CliCaller
from engine.commands.identities import run
from engine.security import totp
from engine.security.identities import Identities, Identity, Refusal
from engine.security.identities_store import IdentityStore
from tests.unit.security.audit_support import KEY_TEXT

PASSWORD = "correct horse battery staple"
CALLER = CliCaller(Identity("tester", "admin", "password", kind="os"), "development profile")
VARIABLES = ("ENGINE_AUDIT_KEY", "ENGINE_AUDIT_KEY_FILE", "ENGINE_AUDIT_DB", "ENGINE_IDENTITIES_DB")


@pytest.fixture
def routes(tmp_path: Path) -> Path:
    path = tmp_path / "routes.yaml"
    # Development: the commands run as the OS user (test_cli_roles.py tests credentials).
    path.write_text("store: sqlite:engine.db\nsecurity: {profile: development}\n")
    return path


def engine(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        input=stdin,
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def identities(routes: Path) -> IdentityStore:
    return IdentityStore(routes.parent / "engine.db.identities.db")


def test_users_add_list_disable(routes: Path):
    config = ("--config", str(routes))
    added = engine("users", "add", "desk1", "--role", "operator", "--password-stdin", *config,
                   stdin=PASSWORD + "\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert added.stdout == "added operator desk1\n" and PASSWORD not in added.stderr
    assert "engine users add was not audited" in added.stderr

    admin = engine("users", "add", "root1", "--role", "admin", "--password-stdin", *config,
                   stdin=PASSWORD + "\n")  # fmt: skip
    assert admin.returncode == 0, admin.stderr
    [uri] = [line for line in admin.stdout.splitlines() if line.startswith("otpauth://")]
    secret = parse_qs(urlsplit(uri).query)["secret"][0]
    with identities(routes) as store:
        ids = Identities(store)
        assert ids.authenticate_password("desk1", PASSWORD, None) == Identity(
            "desk1", "operator", "password"
        )
        code = totp.code_at(secret, ids.now())
        assert isinstance(ids.authenticate_password("root1", PASSWORD, code), Identity)

    listed = engine("users", "list", *config, "--json")
    assert [(u["name"], u["role"], u["mfa"], u["disabled"]) for u in json.loads(listed.stdout)] == [
        ("desk1", "operator", False, None),
        ("root1", "admin", True, None),
    ]
    assert secret not in listed.stdout and "scrypt" not in listed.stdout
    table = engine("users", "list", *config).stdout.splitlines()
    assert table[0].split() == ["NAME", "ROLE", "MFA", "CREATED", "STATUS"]

    assert engine("users", "disable", "desk1", *config).returncode == 0
    with identities(routes) as store:
        refusal = Identities(store).authenticate_password("desk1", PASSWORD, None)
        assert isinstance(refusal, Refusal) and refusal.reason == "disabled"
    again = engine("users", "add", "desk1", "--role", "viewer", "--password-stdin", *config,
                   stdin=PASSWORD + "\n")  # fmt: skip
    assert again.returncode == 2 and again.stderr.startswith("engine: user 'desk1' exists")


def test_apikeys_create_list_rotate_revoke(routes: Path):
    config = ("--config", str(routes))
    assert engine("users", "add", "feed", "--role", "system", "--password-stdin", *config,
                  stdin=PASSWORD + "\n").returncode == 0  # fmt: skip
    created = engine("apikeys", "create", "--owner", "feed", "--role", "system",
                     "--expires", "30d", *config)  # fmt: skip
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    prefix = key.split("_")[0]
    assert created.stdout == key + "\n" and "not shown again" in created.stderr

    listed = engine("apikeys", "list", *config, "--json")
    [row] = json.loads(listed.stdout)
    assert (row["prefix"], row["owner"], row["role"], row["status"]) == (
        prefix, "feed", "system", "active",
    )  # fmt: skip
    assert round(row["expires"] - row["created"]) == 30 * 86400
    assert key not in listed.stdout and key not in engine("apikeys", "list", *config).stdout

    rotated = engine("apikeys", "rotate", prefix, "--overlap", "1d", *config)
    assert rotated.returncode == 0, rotated.stderr
    new_key = rotated.stdout.strip()
    new_prefix = new_key.split("_")[0]
    with identities(routes) as store:
        ids = Identities(store)
        assert isinstance(ids.authenticate_key(key), Identity)  # within the overlap
        assert isinstance(ids.authenticate_key(new_key), Identity)
        late = Identities(store, lambda: ids.now() + 86400 + 60).authenticate_key(key)
        assert isinstance(late, Refusal) and late.reason == "key_expired"
    statuses = {r["prefix"]: r["status"] for r in json.loads(
        engine("apikeys", "list", *config, "--json").stdout)}  # fmt: skip
    assert statuses == {prefix: f"rotated to {new_prefix} (overlap)", new_prefix: "active"}

    assert engine("apikeys", "revoke", new_prefix, *config).stdout == f"revoked {new_prefix}\n"
    with identities(routes) as store:
        gone = Identities(store).authenticate_key(new_key)
        assert isinstance(gone, Refusal) and gone.reason == "key_revoked"


def test_bad_requests_are_clear_errors(routes: Path):
    config = ("--config", str(routes))
    admin_key = engine("apikeys", "create", "--owner", "x", "--role", "admin", *config)
    assert admin_key.returncode == 2 and "invalid choice: 'admin'" in admin_key.stderr
    bad_time = engine("apikeys", "create", "--owner", "x", "--role", "viewer",
                      "--expires", "soon", *config)  # fmt: skip
    assert bad_time.returncode == 2 and "--expires: expected a duration" in bad_time.stderr
    no_owner = engine("apikeys", "create", "--owner", "ghost", "--role", "viewer", *config)
    assert no_owner.returncode == 2 and "no user 'ghost'" in no_owner.stderr
    weak = engine("users", "add", "a", "--role", "viewer", "--password-stdin", *config,
                  stdin="short\n")  # fmt: skip
    assert weak.returncode == 2 and "12 to 1024" in weak.stderr and "short" not in weak.stderr
    unknown = engine("apikeys", "revoke", "ek000000000000", *config)
    assert unknown.returncode == 2 and "no API key" in unknown.stderr


def test_changes_are_audited_without_secrets(routes: Path, tmp_path: Path):
    keyed = {"ENGINE_AUDIT_KEY": KEY_TEXT}
    config = ("--config", str(routes))
    assert engine("users", "add", "root1", "--role", "admin", "--password-stdin", *config,
                  stdin=PASSWORD + "\n", env=keyed).returncode == 0  # fmt: skip
    key = engine("apikeys", "create", "--owner", "root1", "--role", "system", *config,
                 env=keyed).stdout.strip()  # fmt: skip
    assert engine("apikeys", "revoke", key.split("_")[0], *config, env=keyed).returncode == 0
    found = engine("audit", "search", *config, "--json", env=keyed)
    records = json.loads(found.stdout)
    assert [(r["what"], r["action"]) for r in records] == [
        ("engine apikeys revoke", "D"), ("engine apikeys create", "C"), ("engine users add", "C"),
    ]  # fmt: skip
    assert records[2]["query"] == {"user": "root1", "role": "admin", "mfa": True}
    trail = (tmp_path / "engine.db.audit.db").read_bytes()
    assert PASSWORD.encode() not in trail and key.encode() not in trail


def _args(**kw: object) -> argparse.Namespace:
    base = {"command": "users", "identity_command": "add", "config": Path("absent.yaml"),
            "password_stdin": False, "mfa": False, "json": False}  # fmt: skip
    return argparse.Namespace(**{**base, **kw})


def test_the_password_prompt_asks_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in ("ENGINE_AUDIT_KEY", "ENGINE_AUDIT_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    db = tmp_path / "ids.db"
    (tmp_path / "routes.yaml").write_text("security: {profile: development}\n")
    answers = iter([PASSWORD, PASSWORD + "typo"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    with pytest.raises(CommandError, match="do not match"):
        run(_args(name="alice", role="viewer", identities_db=db, config=tmp_path / "routes.yaml"),
            CALLER, io.StringIO())
    answers = iter([PASSWORD, PASSWORD])
    out = io.StringIO()
    assert run(_args(name="alice", role="viewer", identities_db=db,
                     config=tmp_path / "routes.yaml"), CALLER, out) == 0
    with IdentityStore(db) as store:
        assert isinstance(
            Identities(store).authenticate_password("alice", PASSWORD, None), Identity
        )


def test_unlock_a_user_and_a_key_and_it_is_audited(routes: Path):
    keyed = {"ENGINE_AUDIT_KEY": KEY_TEXT}
    config = ("--config", str(routes))
    assert engine("users", "add", "desk1", "--role", "operator", "--password-stdin", *config,
                  stdin=PASSWORD + "\n", env=keyed).returncode == 0  # fmt: skip
    key = engine("apikeys", "create", "--owner", "desk1", "--role", "operator", *config,
                 env=keyed).stdout.strip()  # fmt: skip
    prefix = key.split("_")[0]
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")
    with identities(routes) as store:  # the real clock: the lock lasts 15 minutes from now
        ids = Identities(store)
        for _ in range(5):
            ids.authenticate_password("desk1", "wrong password!", None)
            ids.authenticate_key(forged)
        assert ids.locked("user:desk1") is not None and ids.locked(f"key:{prefix}") is not None

    [user] = json.loads(engine("users", "list", *config, "--json").stdout)
    assert user["locked_until"] is not None
    assert "locked until" in engine("users", "list", *config).stdout
    [row] = json.loads(engine("apikeys", "list", *config, "--json").stdout)
    assert row["status"].startswith("locked until") and row["locked_until"] is not None

    unlocked = engine("users", "unlock", "desk1", *config, env=keyed)
    assert (unlocked.returncode, unlocked.stdout) == (0, "unlocked user:desk1\n"), unlocked.stderr
    assert engine("apikeys", "unlock", prefix, *config, env=keyed).stdout == (
        f"unlocked key:{prefix}\n"
    )
    again = engine("users", "unlock", "desk1", *config, env=keyed)
    assert again.stdout == "user:desk1 was not locked; its failure count is cleared\n"
    with identities(routes) as store:
        ids = Identities(store)
        assert isinstance(ids.authenticate_password("desk1", PASSWORD, None), Identity)
        assert isinstance(ids.authenticate_key(key), Identity)
    [user] = json.loads(engine("users", "list", *config, "--json").stdout)
    assert user["locked_until"] is None

    unknown = engine("users", "unlock", "ghost", *config, env=keyed)
    assert unknown.returncode == 2 and "no user 'ghost'" in unknown.stderr
    records = json.loads(engine("audit", "search", *config, "--json", env=keyed).stdout)
    unlocks = [(r["what"], r["action"], r["query"]) for r in records if "unlock" in r["what"]]
    assert unlocks == [
        ("engine users unlock", "U", {"user": "desk1", "unlocked": True, "was_locked": False}),
        ("engine apikeys unlock", "U", {"key": prefix, "unlocked": True, "was_locked": True}),
        ("engine users unlock", "U", {"user": "desk1", "unlocked": True, "was_locked": True}),
    ]
