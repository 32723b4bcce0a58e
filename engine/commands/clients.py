"""`engine clients add | list | disable`: API clients that get access tokens from
`POST /auth/token` (engine.security.tokens). A client authenticates with a secret (printed
once by `add`) or, with `--public-key FILE`, with SMART Backend Services assertions signed by
the matching private key. Registered through `engine.commands.identities` (same identity
file, same audit)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TextIO

from engine.commands.common import CommandError
from engine.commands.output import dump_json, table, when
from engine.security.audit import Action
from engine.security.identities import Identities
from engine.security.tokens import Access

CLIENT_ROLES = ("system", "operator", "viewer", "auditor")


def add_parsers(command: Any) -> None:
    """`command(verb, help)` makes one `engine clients VERB` parser."""
    p = command("add", "register a client; prints its secret once (or give --public-key)")
    p.add_argument("name")
    p.add_argument("--role", required=True, choices=CLIENT_ROLES)
    p.add_argument("--public-key", type=Path, metavar="PEM",
                   help="SMART Backend Services: the client's RSA or EC P-384 public key")
    p = command("list", "clients, their roles and how they authenticate")
    p.add_argument("--json", action="store_true")
    p = command("disable", "stop a client; its access tokens stop working at once")
    p.add_argument("name")


def run(
    ids: Identities, args: argparse.Namespace, out: TextIO
) -> tuple[Action | None, dict[str, Any] | None]:
    access = Access(ids)
    if args.identity_command == "add":
        pem = None
        if args.public_key is not None:
            try:
                pem = args.public_key.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise CommandError(f"{args.public_key}: cannot read it ({exc})") from exc
        secret = access.add_client(args.name, args.role, public_key=pem)
        out.write(f"added client {args.name} ({args.role})\n")
        if secret is not None:
            out.write(f"secret (shown once; it is not stored): {secret}\n")
        return "C", {"client": args.name, "role": args.role,
                     "auth": "private_key_jwt" if pem else "client_secret"}
    if args.identity_command == "disable":
        access.disable_client(args.name)
        out.write(f"disabled client {args.name}\n")
        return "U", {"client": args.name, "disabled": True}
    clients = access.clients()
    auth = {c.name: "private_key_jwt" if c.public_key else "client_secret" for c in clients}
    if args.json:
        dump_json([{"name": c.name, "role": c.role, "auth": auth[c.name], "created": c.created,
                    "disabled": c.disabled} for c in clients], out)  # fmt: skip
        return None, None
    table(["NAME", "ROLE", "AUTH", "CREATED", "STATUS"],
          [(c.name, c.role, auth[c.name], when(c.created),
            "disabled" if c.disabled else "active") for c in clients], out)  # fmt: skip
    if not clients:
        out.write("(no clients)\n")
    return None, None
