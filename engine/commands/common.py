"""What several commands share: finding the configuration and opening its store.

Inspection commands (`messages`, `show`, `retry`) need only the store, so they read just the
`store:` setting and keep working while a channel file is broken; commands that run channels
(`run`, `test`, `replay`) load and check the whole configuration.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import yaml

from engine.config import ConfigError, load
from engine.config.model import EngineConfig
from engine.store import open_store
from engine.store.base import Store

DEFAULT_STORE = "sqlite:data/engine.db"
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class CommandError(Exception):
    """A problem to print for the operator, and exit non-zero."""


def load_config(path: Path) -> EngineConfig:
    if not path.exists():
        raise CommandError(f"{path}: no such configuration file (use --config PATH)")
    try:
        return load(path)
    except ConfigError as exc:
        raise CommandError(f"configuration is not valid:\n{exc}") from exc


def store_url(routes: Path) -> str:
    if not routes.exists():
        raise CommandError(f"{routes}: no such configuration file (use --config PATH)")
    try:
        data = yaml.safe_load(routes.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise CommandError(f"{routes}: cannot read the store setting: {exc}") from exc
    url = str(data.get("store") or DEFAULT_STORE) if isinstance(data, dict) else DEFAULT_STORE
    url = _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), url)
    if url.startswith("sqlite:"):
        path = Path(url.removeprefix("sqlite:"))
        if not path.is_absolute():
            path = routes.resolve().parent / path
        url = f"sqlite:{path}"
    return url


async def open_for(routes: Path, store: str | None = None) -> Store:
    url = store or store_url(routes)
    if url.startswith("sqlite:") and not Path(url.removeprefix("sqlite:")).exists():
        raise CommandError(
            f"no store at {url.removeprefix('sqlite:')} yet (start the engine first)"
        )
    opened = open_store(url)
    await opened.open()
    return opened


def fail(message: str) -> int:
    sys.stderr.write(f"engine: {message}\n")
    return 2
