"""Opening the security stores' own SQLite files (audit trail, identities) the one way.

Rule kept: the file is created owner-only (0600) before SQLite touches it, runs in WAL with
`synchronous=FULL`, and its schema is created in one IMMEDIATE transaction together with its
`user_version` (idempotent: two processes creating it at once end with the same schema); a
file whose version is newer than the code is refused. Errors are the caller's type and name
the file, never its content.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def open_private_db(
    path: Path,
    *,
    schema: str,
    version: int,
    what: str,
    error: type[Exception],
    busy_timeout: float,
    foreign_keys: bool = False,
) -> sqlite3.Connection:
    """A shared-thread connection to `path` (`what` names it in errors: "audit trail")."""
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    except (OSError, sqlite3.Error) as exc:
        raise error(f"cannot open the {what} {path}: {exc}") from exc
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise error(f"{path}: cannot switch to WAL journal mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        if foreign_keys:
            conn.execute("PRAGMA foreign_keys = ON")
        found = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if found > version:
            raise error(
                f"{path}: {what} schema version {found} is newer than this engine's ({version})"
            )
        if found < version:
            conn.executescript(f"BEGIN IMMEDIATE;{schema}PRAGMA user_version = {version};COMMIT;")
    except sqlite3.Error as exc:
        conn.close()
        raise error(f"{path} is not a usable {what}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn
