"""Where the security stores are: the audit trail and the identity file, each its own SQLite
file beside the message store (`data/engine.db` → `data/engine.db.audit.db`,
`data/engine.db.identities.db`) unless an environment variable names it. The engine and the
CLI resolve them here, so both open the same files."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from engine.store import sqlite_file

ENV: dict[str, str] = {"audit": "ENGINE_AUDIT_DB", "identities": "ENGINE_IDENTITIES_DB"}


class LocationError(ValueError):
    """The file cannot be placed beside the store (it is not a SQLite file)."""


def security_file(
    store_url: str,
    kind: Literal["audit", "identities"],
    environ: Mapping[str, str] | None = None,
) -> Path:
    env = os.environ if environ is None else environ
    if env.get(ENV[kind]):
        return Path(env[ENV[kind]])
    database = sqlite_file(store_url)
    if database is None:
        raise LocationError(
            f"the store is not a SQLite file: name the {kind} file with ${ENV[kind]}"
        )
    return database.with_name(f"{database.name}.{kind}.db")
