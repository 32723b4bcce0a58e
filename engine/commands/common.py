"""What several commands share: finding the configuration and opening its store.

Inspection commands (`messages`, `show`, `retry`) need only the store, so they read just the
`store:` setting (and `security:`, for the at-rest keys) and keep working while a channel file
is broken; commands that run channels (`run`, `test`, `replay`) load and check the whole
configuration.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from engine.config import ConfigError, load
from engine.config import store_url as config_store_url
from engine.config.model import EngineConfig, SecurityConfig
from engine.store import open_store, sqlite_file
from engine.store.base import Store
from engine.store.sqlite_schema import StoreSchemaError

T = TypeVar("T")


class CommandError(Exception):
    """A problem to print for the operator, and exit non-zero."""


def _require(routes: Path) -> None:
    if not routes.exists():
        raise CommandError(f"{routes}: no such configuration file (use --config PATH)")


def _read(routes: Path, read: Callable[[Path], T], failure: str) -> T:
    _require(routes)
    try:
        return read(routes)
    except ConfigError as exc:
        raise CommandError(f"{failure}:\n{exc}") from exc


def load_config(path: Path) -> EngineConfig:
    return _read(path, load, "configuration is not valid")


def store_url(routes: Path) -> str:
    """The store named in routes.yaml, resolved exactly as `engine run` resolves it."""
    return _read(routes, config_store_url, "cannot read the store setting")


def routes_security(routes: Path) -> SecurityConfig:
    """routes.yaml's `security:` settings, read without the channels (as `store_url`); the
    defaults when there is no routes.yaml (a command given its files some other way)."""
    from engine.config.security import routes_security as read

    if not routes.exists():
        return SecurityConfig()
    return _read(routes, read, "configuration is not valid")


def existing_store_file(url: str) -> Path | None:
    """The store's file when it is SQLite (None otherwise); a CommandError when it does not
    exist yet, as a command reading it has nothing to read."""
    path = sqlite_file(url)
    if path is not None and not path.exists():
        raise CommandError(f"no store at {path} yet (start the engine first)")
    return path


async def open_for(routes: Path, store: str | None = None) -> Store:
    url = store or store_url(routes)
    existing_store_file(url)
    opened = open_store(url, routes_security(routes).encryption)
    try:
        await opened.open()
    except StoreSchemaError as exc:  # e.g. sealed with a key this configuration lacks
        raise CommandError(str(exc)) from exc
    return opened


def fail(message: str) -> int:
    sys.stderr.write(f"engine: {message}\n")
    return 2
