"""`engine audit verify | search`, and the audit hook the PHI-touching commands record through.

Where the trail is: `--audit-db PATH` (`engine audit` only), else $ENGINE_AUDIT_DB, else
beside the configuration's message store (`<store file>.audit.db`). The key: `--key-file PATH`
(`engine audit` only), else $ENGINE_AUDIT_KEY_FILE (a file holding the key), else
$ENGINE_AUDIT_KEY (the key itself); never the key's value as an argument, which would show in
the process list and the shell history.

The rule for `messages`, `show`, `replay` and `retry`: with a key configured, each writes one
record (watched for bursts and out-of-hours reads per routes.yaml's `security.alerts`, see
engine.security.watch): `messages` and `show` before they print anything, so a failure to
record stops them with nothing shown; `replay` and `retry` once they have acted, with the
outcome. With no key configured at all they still work, and say on stderr that the action
was not audited; a key that is configured but unusable is an error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from engine.commands.common import CommandError, routes_security, store_url
from engine.commands.inspect import parse_time
from engine.commands.output import dump_json, table, when
from engine.config import ConfigError
from engine.config.loader import security_profile
from engine.security.audit import (
    ACTIONS,
    Actor,
    AuditError,
    AuditEvent,
    AuditHook,
    AuditKey,
    AuditKeyError,
    AuditRecord,
)
from engine.security.audit_store import AuditStore
from engine.security.locations import ENV, LocationError, security_file
from engine.security.watch import AccessWatch, WatchPolicy

DB_ENV = ENV["audit"]


def add_parser(sub: Any) -> None:
    """Register `engine audit verify` and `engine audit search` on the top-level subparsers."""
    audit = sub.add_parser(
        "audit", help="verify and search the audit trail", description="the audit trail"
    )
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = audit_sub.add_parser(
            name, help=help_text, description=help_text
        )
        p.add_argument("--config", type=Path, default=Path("routes.yaml"))
        p.add_argument("--audit-db", type=Path, help="the audit file (default: beside the store)")
        p.add_argument(
            "--key-file",
            type=Path,
            help="file holding the audit key (default: $ENGINE_AUDIT_KEY_FILE or "
            "$ENGINE_AUDIT_KEY)",
        )
        return p

    p = command("verify", "recompute the HMAC chain; exit 1 and name the first bad record")
    p.add_argument("--json", action="store_true")
    p = command("search", "audit records, newest first")
    p.add_argument("--patient", help="records that name this patient id")
    p.add_argument("--user", help="records by this user or client id")
    p.add_argument("--action", choices=ACTIONS, help="C, R, U, D or E")
    p.add_argument("--since", type=parse_time, help="ISO time or -2h / -30m / -1d")
    p.add_argument("--until", type=parse_time)
    p.add_argument("--limit", type=int, default=100, help="0 for no limit")
    p.add_argument("--json", action="store_true")


def audit_path(
    config: Path, store: str | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    """$ENGINE_AUDIT_DB if set, else beside the message store the configuration names."""
    try:
        return security_file(store or store_url(config), "audit", environ)
    except LocationError as exc:
        raise CommandError(f"{exc} or --audit-db") from exc


def _open(args: argparse.Namespace) -> AuditStore:
    try:
        key = AuditKey.load(args.key_file)
    except AuditKeyError as exc:
        raise CommandError(str(exc)) from exc
    path: Path = args.audit_db or audit_path(args.config)
    if not path.exists():
        raise CommandError(f"no audit trail at {path}")
    try:
        return AuditStore(path, key)
    except AuditError as exc:
        raise CommandError(str(exc)) from exc


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    store = _open(args)
    try:
        if args.audit_command == "verify":
            return _verify(store, args.json, out)
        return _search(store, args, out)
    except AuditError as exc:
        raise CommandError(str(exc)) from exc
    finally:
        store.close()


def _verify(store: AuditStore, as_json: bool, out: TextIO) -> int:
    result = store.verify()
    brk = result.first_break
    if as_json:
        dump_json(
            {
                "ok": result.ok,
                "records": result.records,
                "head": {"seq": result.head_seq, "hash": result.head_hash},
                "first_bad": (
                    {"seq": brk.seq, "kind": brk.kind, "detail": brk.detail} if brk else None
                ),
                "triggers_missing": list(result.triggers_missing),
            },
            out,
        )
    else:
        if brk is not None:
            out.write(f"BROKEN at record {brk.seq} ({brk.kind}): {brk.detail}\n")
            out.write(f"{result.records} record(s) before it verify\n")
        else:
            out.write(f"OK: {result.records} record(s) verify\n")
        if result.triggers_missing:
            out.write(
                "append-only triggers missing: "
                f"{', '.join(result.triggers_missing)} (the file was altered)\n"
            )
        # Removing the newest records leaves no break: comparing the head with one noted
        # earlier (elsewhere) is how that is caught.
        out.write(f"head: record {result.head_seq} hash {result.head_hash}\n")
    return 0 if result.ok else 1


def _search(store: AuditStore, args: argparse.Namespace, out: TextIO) -> int:
    found = store.search(
        patient=args.patient,
        who=args.user,
        action=args.action,
        since=args.since,
        until=args.until,
        limit=args.limit,
    )
    if args.json:
        dump_json([_record_json(r) for r in found], out)
        return 0
    table(
        ["SEQ", "RECORDED", "WHO", "ROLE", "FROM", "ACTION", "WHAT", "OUTCOME", "ENTITIES"],
        [
            (
                r.seq,
                when(r.recorded),
                r.actor.who,
                r.actor.role or "-",
                r.actor.address or "-",
                r.event.action,
                r.event.what,
                r.event.outcome,
                _entities(r),
            )
            for r in found
        ],
        out,
    )
    if not found:
        out.write("(no audit records match)\n")
    return 0


def _entities(r: AuditRecord) -> str:
    e = r.event
    parts = [f"message {','.join(map(str, e.message_ids))}"] if e.message_ids else []
    if e.patient_ids:
        parts.append(f"patient {','.join(e.patient_ids)}")
    if e.appointment_ids:
        parts.append(f"appointment {','.join(e.appointment_ids)}")
    if e.query is not None:
        parts.append(f"query {json.dumps(e.query, sort_keys=True)}")
    if e.count is not None:
        parts.append(f"count {e.count}")
    return "; ".join(parts) or "-"


def _record_json(r: AuditRecord) -> dict[str, Any]:
    body = r.body()
    body["recorded_iso"] = when(r.recorded)
    body["hash"] = r.hash
    return body


def cli_hook(
    config: Path,
    actor: Actor,
    store: str | None = None,
    environ: Mapping[str, str] | None = None,
    err: TextIO | None = None,
) -> AuditHook:
    """The hook `messages`, `show`, `replay`, `retry` and the identity commands record
    through, as `actor` (engine.commands.credentials). Resolved before the command touches
    the store, so a bad key stops it early; the production profile refuses to go on without
    a key, the development profile warns that the action was not audited."""
    env = os.environ if environ is None else environ
    if not AuditKey.configured(env):
        try:
            production = security_profile(config, env) == "production"
        except ConfigError as exc:
            raise CommandError(f"cannot read the security profile:\n{exc}") from exc
        if production:
            raise CommandError(
                "the production profile audits this command: set $ENGINE_AUDIT_KEY_FILE (a "
                "file holding the audit key) or $ENGINE_AUDIT_KEY"
            )

        def unaudited(event: AuditEvent) -> None:
            (err or sys.stderr).write(
                f"engine: warning: no audit key ($ENGINE_AUDIT_KEY / $ENGINE_AUDIT_KEY_FILE); "
                f"this {event.what} was not audited\n"
            )

        return unaudited
    try:
        key = AuditKey.load(None, env)
    except AuditKeyError as exc:
        raise CommandError(str(exc)) from exc
    path = audit_path(config, store, env)
    watch = AccessWatch(WatchPolicy.of(routes_security(config).alerts))

    def record(event: AuditEvent) -> None:
        try:
            with AuditStore(path, key, watch=watch) as trail:
                trail.append(actor, event)
        except AuditError as exc:
            # `messages` and `show` record before printing, so they stop with nothing shown.
            raise CommandError(f"{exc}; this {event.what} was not audited") from exc

    return record
