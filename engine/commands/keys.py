"""`engine keys new | status | rotate`: the at-rest encryption keys of the message store.

(API keys are `engine apikeys`.) `new` prints a fresh key line for a key file and touches
nothing else; `status` counts the stored values and blind index entries under each key id, so
an operator sees when an old key protects nothing any more and can be removed from the
configuration; `rotate` re-seals everything not under the current key (engine.store.
sqlite_keys), safe while `engine run` takes messages, and records one audit event with its
counts and outcome. Both read the store and the keys from routes.yaml (`security.encryption`).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import Any, TextIO

from engine.commands.audit import cli_hook
from engine.commands.common import (
    CommandError,
    existing_store_file,
    routes_security,
    store_url,
)
from engine.commands.output import dump_json, table
from engine.security.atrest import AtRestError, KeyRing, new_key_line
from engine.security.audit import Actor, AuditEvent
from engine.store import sqlite_keys
from engine.store.sqlite_schema import connect


def add_parser(sub: Any) -> None:
    """Register `engine keys ...` on the top-level subparsers."""
    text = "at-rest encryption keys of the message store (API keys: engine apikeys)"
    keys = sub.add_parser("keys", help=text, description=text)
    inner = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = inner.add_parser(name, help=help_text,
                                                      description=help_text)
        p.add_argument("--config", type=Path, default=Path("routes.yaml"))
        return p

    p = inner.add_parser("new", help="print a fresh key as a key file line `<id> <base64>`",
                         description="print a fresh key as a key file line `<id> <base64>`")
    p.add_argument("--id", required=True, help="the key id, e.g. k2026a")
    p = command("status", "how many stored values each key id protects")
    p.add_argument("--json", action="store_true")
    p = command("rotate", "re-encrypt every value not under the current key (engine may run)")
    p.add_argument("--batch", type=int, default=500, help="rows per transaction (default 500)")


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    if args.keys_command == "new":
        try:
            out.write(new_key_line(args.id) + "\n")
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        return 0
    ring = routes_security(args.config).encryption
    if args.keys_command == "status":
        return _status(args.config, ring, args.json, out)
    if ring is None:
        raise CommandError(
            "no at-rest keys configured: add security: encryption: to routes.yaml first"
        )
    if args.batch < 1:
        raise CommandError("--batch must be at least 1")
    return _rotate(args.config, ring, args.batch, args.caller.actor, out)


def _open(routes: Path) -> sqlite3.Connection:
    path = existing_store_file(store_url(routes))
    if path is None:
        raise CommandError("engine keys works on a SQLite store (store: sqlite:<path>)")
    try:
        return connect(path, busy_timeout=30.0)
    except sqlite3.Error as exc:
        raise CommandError(f"cannot open the store {path}: {exc}") from exc


def _status(routes: Path, ring: KeyRing | None, as_json: bool, out: TextIO) -> int:
    conn = _open(routes)
    try:
        found = sqlite_keys.usage(conn)
    finally:
        conn.close()
    configured = set(ring.ids) if ring is not None else set()
    ids = sorted(configured | set(found.values) | set(found.index_entries))
    rows = [
        {
            "key": key_id,
            "values": found.values[key_id],
            "index_entries": found.index_entries[key_id],
            "state": _state(key_id, ring, found),
        }
        for key_id in ids
    ]
    if as_json:
        dump_json(rows, out)
        return 0
    table(["KEY", "VALUES", "INDEX ENTRIES", "STATE"],
          [(r["key"], r["values"], r["index_entries"], r["state"]) for r in rows], out)
    return 0


def _state(key_id: str, ring: KeyRing | None, found: sqlite_keys.KeyUsage) -> str:
    used = found.total(key_id)
    if key_id == sqlite_keys.CLEAR_ID:
        return "stored in clear: run engine keys rotate" if used else "-"
    if ring is None or key_id not in ring.ids:
        return "NOT CONFIGURED: these values cannot be read"
    if key_id == ring.current:
        return "current"
    return "in use: run engine keys rotate" if used else "unused: can be retired"


def _rotate(routes: Path, ring: KeyRing, batch: int, actor: Actor, out: TextIO) -> int:
    audit = cli_hook(routes, actor)
    conn = _open(routes)

    def progress(table_name: str, rows: int, done: sqlite_keys.Rotation) -> None:
        out.write(f"{table_name}: {rows} rows checked, "
                  f"{sum(done.resealed.values())} values re-encrypted so far\n")
        out.flush()

    outcome, done = 8, sqlite_keys.Rotation()
    try:
        done = sqlite_keys.rotate(conn, ring, batch, progress)
        outcome = 0
    except AtRestError as exc:
        raise CommandError(f"rotation stopped: {exc}") from exc
    except sqlite3.Error as exc:
        raise CommandError(f"rotation stopped: {exc} (run it again to resume)") from exc
    finally:
        conn.close()
        audit(AuditEvent(
            "U", "engine keys rotate", outcome=outcome,
            query={"current": ring.current, "batch": batch},
            count=sum(done.resealed.values()),
        ))
    by_key = ", ".join(f"{k}: {n}" for k, n in sorted(done.resealed.items())) or "none"
    out.write(
        f"done: {done.rows} rows checked, {sum(done.resealed.values())} values re-encrypted "
        f"with {ring.current} (were under {by_key}), {done.reindexed} messages re-indexed\n"
    )
    return 0
