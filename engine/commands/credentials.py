"""Who runs a CLI command, and whether their role lets them (engine.security.permissions);
`engine login` and `engine logout`.

The credential, first found wins:
1. `$ENGINE_API_KEY`: an API key (a key never has the admin role);
2. the session `engine login` opened: its text is kept in a file of its own (0600, in
   `$ENGINE_SESSION_DIR`, else `~/.local/state/engine`, one per identity file), and it ends
   like a console session: after 15 minutes idle for an admin, 30 for other roles, at
   `engine logout`, or when the user is disabled;
3. with neither, under the development profile only: the OS user, as admin. The audit trail
   says so (`who` is `os:<login name>`).

Under the production profile a command that touches PHI without a credential is refused
with what to do. One exception, the bootstrap: `engine users add` runs without a credential
while the identity file holds no enabled admin (whoever can write that file could make one
anyway; the first admin has to come from somewhere), and is audited as the OS user.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from engine.commands.audit import cli_hook
from engine.commands.common import CommandError
from engine.config import ConfigError
from engine.config.loader import security_profile
from engine.security.audit import Actor, AuditEvent
from engine.security.identities import Identities, Identity, IdentityError, Refusal
from engine.security.identities_store import IdentityStore, IdentityStoreError
from engine.security.permissions import CLI_COMMANDS, allowed
from engine.security.tokens import Access

API_KEY_ENV = "ENGINE_API_KEY"
SESSION_DIR_ENV = "ENGINE_SESSION_DIR"
CLI_AGENT = "engine-cli"


@dataclass(frozen=True)
class CliCaller:
    """Who runs the command: the identity their credential speaks for."""

    identity: Identity
    how: str  # "api key", "session", "development profile", "bootstrap"

    @property
    def actor(self) -> Actor:
        return Actor(who=self.identity.subject, role=self.identity.role, address="cli",
                     user_agent=CLI_AGENT)  # fmt: skip


def os_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        return f"uid:{os.getuid()}"


def command_words(args: argparse.Namespace) -> str:
    """`"audit search"`, `"users add"`, `"show"`: the key of CLI_COMMANDS."""
    # Each command group names its verb `<group>_command` (argparse's dest).
    verb = next((v for k, v in vars(args).items() if k.endswith("_command") and v), None)
    return f"{args.command} {verb}" if verb else str(args.command)


def session_file(identities_db: Path) -> Path:
    folder = os.environ.get(SESSION_DIR_ENV) or str(Path.home() / ".local" / "state" / "engine")
    tag = hashlib.sha256(str(identities_db.resolve()).encode()).hexdigest()[:16]
    return Path(folder) / f"session-{tag}"


def authorize(args: argparse.Namespace, identities_db: Callable[[], Path]) -> CliCaller | None:
    """The caller of a command that touches PHI, checked against the permission table; None
    for a command that touches none. Raises CommandError when refused."""
    words = command_words(args)
    needs = CLI_COMMANDS.get(words)
    if needs is None:
        raise CommandError(f"engine {words}: not in the permission table (a bug)")
    if not needs:
        return None
    caller = _caller(args.config, identities_db(), words)
    if not allowed(caller.identity.role, needs):
        raise CommandError(f"engine {words}: the {caller.identity.role} role may not do this "
                           f"(you are {caller.identity.subject}, by {caller.how})")
    return caller


def _caller(config: Path, identities_db: Path, words: str) -> CliCaller:
    key = os.environ.get(API_KEY_ENV)
    session = session_file(identities_db)
    if key or session.exists():
        with _access(identities_db) as access:
            found = (access.identities.authenticate_key(key) if key
                     else access.check(session.read_text().strip()))  # fmt: skip
        if isinstance(found, Refusal):
            what = f"${API_KEY_ENV}" if key else "your session (log in again: engine login)"
            raise CommandError(f"{what}: {found.public}")
        return CliCaller(found, "api key" if key else "session")
    try:
        profile = security_profile(config)
    except ConfigError as exc:
        raise CommandError(f"cannot read the security profile:\n{exc}") from exc
    if profile == "development":
        return CliCaller(Identity(os_user(), "admin", "password", kind="os"),
                         "development profile")
    if words == "users add" and not _has_admin(identities_db):
        return CliCaller(Identity(os_user(), "admin", "password", kind="os"), "bootstrap")
    raise CommandError(f"engine {words} needs a credential: log in with `engine login --user "
                       f"NAME`, or set ${API_KEY_ENV} to an API key")


def _has_admin(identities_db: Path) -> bool:
    if not identities_db.exists():
        return False
    with _access(identities_db) as access:
        return any(u.role == "admin" and u.disabled is None for u in access.identities.users())


class _access:
    def __init__(self, path: Path) -> None:
        try:
            self.store = IdentityStore(path)
        except IdentityStoreError as exc:
            raise CommandError(str(exc)) from exc

    def __enter__(self) -> Access:
        return Access(Identities(self.store))

    def __exit__(self, *exc: object) -> None:
        self.store.close()


def login(
    config: Path, identities_db: Path, user: str, from_stdin: bool, stdin: TextIO, out: TextIO
) -> int:
    """`engine login`: password (and TOTP code) → a session kept in the session file. Both
    a login and a refused one are audited."""
    if from_stdin:
        password = stdin.readline().rstrip("\n")
        code = stdin.readline().strip() or None
    else:
        password = getpass.getpass("password: ")
        code = input("TOTP code (empty if none): ").strip() or None
    with _access(identities_db) as access:
        try:
            found = access.login(user, password, code)
        except IdentityError as exc:
            raise CommandError(str(exc)) from exc
    who = Identity(found.credential.partition(":")[2], "", "password") if isinstance(
        found, Refusal) else Identity(user, found.token.role, "session")
    audit = cli_hook(config, CliCaller(who, "login").actor)
    query = {"reason": found.reason} if isinstance(found, Refusal) else None
    audit(AuditEvent("E", "engine login", 4 if isinstance(found, Refusal) else 0, query=query))
    if isinstance(found, Refusal):
        raise CommandError(f"login: {found.public}")
    path = session_file(identities_db)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(found.text + "\n")
    idle = int((found.token.idle or 0) // 60)
    out.write(f"logged in as {user} ({found.token.role}); the session ends after {idle} "
              "minutes idle or at `engine logout`\n")
    return 0


def logout(identities_db: Path, out: TextIO = sys.stdout) -> int:
    path = session_file(identities_db)
    if not path.exists():
        out.write("no session\n")
        return 0
    with _access(identities_db) as access:
        access.end(path.read_text().strip())
    path.unlink()
    out.write("logged out\n")
    return 0
