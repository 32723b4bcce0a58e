"""`engine users add | list | disable | unlock`,
`engine apikeys create | list | rotate | revoke | unlock` and `engine clients ...`
(engine.commands.clients).

API keys are `engine apikeys`, not `engine keys`: that name belongs to the encryption keys of
data at rest (`engine keys rotate` re-encrypts, issue 4 item 5).

Where the identities are: `--identities-db PATH`, else $ENGINE_IDENTITIES_DB, else beside the
configuration's message store (`<store file>.identities.db`). Secrets never go on the command
line (they would show in the process list and the shell history): a password is typed twice at
a getpass prompt, or read as one line from stdin with `--password-stdin`. A new key and a new
TOTP provisioning URI are printed once, to stdout, and exist nowhere else afterwards.

A credential locked after repeated failed logins shows as `locked` in the lists until it
expires or `unlock` lifts it (which also clears its failure window).

Every change (`add`, `disable`, `create`, `rotate`, `revoke`, `unlock`) is recorded in the
audit trail once done, as the other commands record (see engine.commands.audit: with no audit
key it says on stderr that the change was not audited).
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from engine.commands import clients
from engine.commands.audit import cli_hook
from engine.commands.common import CommandError, routes_security, store_url
from engine.commands.credentials import CliCaller
from engine.commands.output import dump_json, table, when
from engine.config.units import parse_duration
from engine.security import totp
from engine.security.audit import Action, AuditEvent
from engine.security.identities import Identities, IdentityError, LockoutPolicy
from engine.security.identities_store import (
    ROLES,
    ApiKey,
    IdentityStore,
    IdentityStoreError,
)
from engine.security.locations import ENV, LocationError, security_file

DB_ENV = ENV["identities"]


def add_parsers(sub: Any) -> None:
    """Register `engine users ...` and `engine apikeys ...` on the top-level subparsers."""

    def group(name: str, help_text: str) -> Callable[[str, str], argparse.ArgumentParser]:
        parser = sub.add_parser(name, help=help_text, description=help_text)
        inner = parser.add_subparsers(dest="identity_command", required=True, metavar="COMMAND")

        def command(verb: str, text: str) -> argparse.ArgumentParser:
            p: argparse.ArgumentParser = inner.add_parser(verb, help=text, description=text)
            p.add_argument("--config", type=Path, default=Path("routes.yaml"))
            p.add_argument(
                "--identities-db", type=Path,
                help=f"the identity file (default: ${DB_ENV}, else beside the store)",
            )  # fmt: skip
            return p

        return command

    users = group("users", "people who log in: password, and TOTP for admins")
    p = users("add", "add a user (the password is asked twice, or read from stdin)")
    p.add_argument("name")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("--mfa", action="store_true", help="TOTP for a non-admin too")
    p = users("list", "users, their roles and whether they have TOTP")
    p.add_argument("--json", action="store_true")
    p = users("disable", "stop a user logging in; their API keys stop working too")
    p.add_argument("name")
    p = users("unlock", "lift a lockout after failed logins, and clear the failure count")
    p.add_argument("name")

    keys = group("apikeys", "API keys for systems and scripts (`engine keys` is encryption)")
    p = keys("create", "make a key and print it once")
    p.add_argument("--owner", required=True, metavar="USER")
    p.add_argument("--role", required=True, choices=tuple(r for r in ROLES if r != "admin"))
    p.add_argument("--expires", default="90d", help="lifetime, like 90d or 12h (max 365d)")
    p = keys("list", "keys by prefix (the keys themselves are not stored)")
    p.add_argument("--json", action="store_true")
    p = keys("rotate", "a new key (printed once); the old one works for the overlap only")
    p.add_argument("prefix")
    p.add_argument("--overlap", default="7d", help="how long the old key stays valid (7d)")
    p = keys("revoke", "stop a key working, at once")
    p.add_argument("prefix")
    p = keys("unlock", "lift a lockout after failed uses, and clear the failure count")
    p.add_argument("prefix")

    clients.add_parsers(group("clients", "API clients: OAuth client credentials or SMART "
                                         "Backend Services, for access tokens"))


def identities_path(config: Path, explicit: Path | None = None) -> Path:
    if explicit is not None:
        return explicit
    try:
        return security_file(store_url(config), "identities")
    except LocationError as exc:
        raise CommandError(f"{exc} or --identities-db") from exc


def run(
    args: argparse.Namespace,
    caller: CliCaller,
    out: TextIO = sys.stdout,
    stdin: TextIO = sys.stdin,
    now: Callable[[], float] = time.time,
) -> int:
    path = identities_path(args.config, args.identities_db)
    verb = f"engine {args.command} {args.identity_command}"
    # Resolved before anything changes, so a bad audit key stops the command early.
    audit = cli_hook(args.config, caller.actor) if args.identity_command != "list" else None
    lockout = LockoutPolicy.of(routes_security(args.config).lockout)
    try:
        with IdentityStore(path) as store:
            ids = Identities(store, now, lockout)
            if args.command == "users":
                action, query = _users(ids, args, out, stdin)
            elif args.command == "clients":
                action, query = clients.run(ids, args, out)
            else:
                action, query = _apikeys(ids, args, out, now())
    except (IdentityError, IdentityStoreError) as exc:
        raise CommandError(str(exc)) from exc
    if audit is not None and action is not None:
        audit(AuditEvent(action, verb, query=query))
    return 0


Change = tuple[Action | None, dict[str, Any] | None]


def _users(ids: Identities, args: argparse.Namespace, out: TextIO, stdin: TextIO) -> Change:
    if args.identity_command == "add":
        password = _password(args.password_stdin, stdin)
        secret = ids.add_user(args.name, args.role, password, mfa=args.mfa)
        out.write(f"added {args.role} {args.name}\n")
        if secret is not None:
            out.write(
                "TOTP: add this to an authenticator app now; it is not shown again:\n"
                f"{totp.provisioning_uri(secret, args.name)}\n"
            )
        return "C", {"user": args.name, "role": args.role, "mfa": secret is not None}
    if args.identity_command == "disable":
        ids.disable_user(args.name)
        out.write(f"disabled {args.name}\n")
        return "U", {"user": args.name, "disabled": True}
    if args.identity_command == "unlock":
        was_locked = ids.unlock_user(args.name)
        _say_unlocked(out, f"user:{args.name}", was_locked)
        return "U", {"user": args.name, "unlocked": True, "was_locked": was_locked}
    users = ids.users()
    locks = _locked_until(ids)
    if args.json:
        dump_json(
            [{"name": u.name, "role": u.role, "mfa": u.totp_secret is not None,
              "created": u.created, "disabled": u.disabled,
              "locked_until": locks.get(f"user:{u.name}")} for u in users],
            out,
        )  # fmt: skip
    else:
        table(
            ["NAME", "ROLE", "MFA", "CREATED", "STATUS"],
            [(u.name, u.role, "totp" if u.totp_secret else "-", when(u.created),
              user_status(u.disabled, locks.get(f"user:{u.name}"))) for u in users],
            out,
        )  # fmt: skip
        if not users:
            out.write("(no users)\n")
    return None, None


def _apikeys(ids: Identities, args: argparse.Namespace, out: TextIO, now: float) -> Change:
    command = args.identity_command
    if command == "create":
        issued = ids.create_key(args.owner, args.role, _duration(args.expires, "--expires"))
        out.write(f"{issued.secret}\n")
        sys.stderr.write(
            f"key {issued.key.prefix} for {args.owner} ({args.role}), expires "
            f"{when(issued.key.expires)}: copy it now, it is not shown again\n"
        )
        return "C", {"key": issued.key.prefix, "owner": args.owner, "role": args.role}
    if command == "rotate":
        overlap = _duration(args.overlap, "--overlap", zero=True)
        issued = ids.rotate_key(args.prefix, overlap)
        out.write(f"{issued.secret}\n")
        old = ids.store.key(args.prefix)
        sys.stderr.write(
            f"key {issued.key.prefix} replaces {args.prefix}, which stays valid until "
            f"{when(old.expires if old else now + overlap)}; copy the new key now\n"
        )
        return "U", {"key": args.prefix, "replaced_by": issued.key.prefix}
    if command == "revoke":
        ids.revoke_key(args.prefix)
        out.write(f"revoked {args.prefix}\n")
        return "D", {"key": args.prefix}
    if command == "unlock":
        was_locked = ids.unlock_key(args.prefix)
        _say_unlocked(out, f"key:{args.prefix}", was_locked)
        return "U", {"key": args.prefix, "unlocked": True, "was_locked": was_locked}
    keys = ids.keys()
    locks = _locked_until(ids)
    if args.json:
        dump_json(
            [{"prefix": k.prefix, "owner": k.owner, "role": k.role, "created": k.created,
              "expires": k.expires, "revoked": k.revoked, "replaced_by": k.replaced_by,
              "status": key_status(k, now, locks.get(f"key:{k.prefix}")),
              "locked_until": locks.get(f"key:{k.prefix}")} for k in keys],
            out,
        )  # fmt: skip
    else:
        table(
            ["PREFIX", "OWNER", "ROLE", "CREATED", "EXPIRES", "STATUS"],
            [(k.prefix, k.owner, k.role, when(k.created), when(k.expires),
              key_status(k, now, locks.get(f"key:{k.prefix}"))) for k in keys],
            out,
        )  # fmt: skip
        if not keys:
            out.write("(no API keys)\n")
    return None, None


def key_status(key: ApiKey, now: float, locked_until: float | None = None) -> str:
    if key.revoked is not None:
        return "revoked"
    if now >= key.expires:
        return "expired"
    if locked_until is not None:
        return f"locked until {when(locked_until)}"
    if key.replaced_by is not None:
        return f"rotated to {key.replaced_by} (overlap)"
    return "active"


def user_status(disabled: float | None, locked_until: float | None) -> str:
    if disabled is not None:
        return "disabled"
    if locked_until is not None:
        return f"locked until {when(locked_until)}"
    return "active"


def _locked_until(ids: Identities) -> dict[str, float]:
    return {lock.credential: lock.until for lock in ids.locks()}


def _say_unlocked(out: TextIO, credential: str, was_locked: bool) -> None:
    if was_locked:
        out.write(f"unlocked {credential}\n")
    else:
        out.write(f"{credential} was not locked; its failure count is cleared\n")


def _duration(text: str, option: str, *, zero: bool = False) -> float:
    seconds = parse_duration(text)
    if seconds is None or (seconds == 0 and not zero):
        raise CommandError(f"{option}: expected a duration like 90d, 12h or 30m, not {text!r}")
    return seconds


def _password(from_stdin: bool, stdin: TextIO) -> str:
    if from_stdin:
        line = stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if not password:
            raise CommandError("--password-stdin: no password on stdin")
        return password
    try:
        first = getpass.getpass("password: ")
        second = getpass.getpass("password again: ")
    except EOFError as exc:
        raise CommandError("no password given (use --password-stdin to pipe one)") from exc
    if first != second:
        raise CommandError("the passwords do not match")
    return first
