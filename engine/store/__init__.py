"""Durable storage of messages, channel results, deliveries and attempts.

`open_store(url)` turns the `store:` URL of routes.yaml into a `Store` (not yet opened). The
rule it keeps: an unknown scheme is a configuration error naming the supported ones, and the
error never echoes the URL itself (it may carry credentials).
"""

from __future__ import annotations

from pathlib import Path

from engine.security.atrest import KeyRing, RowSealer
from engine.store.base import Store

SUPPORTED_SCHEMES = ("sqlite",)


def sqlite_file(url: str) -> Path | None:
    """The database file of a `sqlite:` store URL (`sqlite:///abs/path.db` too), which the
    files kept beside the store (lock, reload requests, audit, identities) are named after;
    None for another scheme or a URL naming no file."""
    scheme, sep, rest = url.partition(":")
    if not sep or scheme.lower() != "sqlite":
        return None
    path = rest[2:] if rest.startswith("//") else rest
    return Path(path) if path and path != ":memory:" and not path.endswith("/") else None


def open_store(url: str, keys: KeyRing | None = None) -> Store:
    """`sqlite:PATH` (relative or absolute; `sqlite:///abs/path.db` is accepted too). With
    `keys`, PHI-carrying values are sealed at rest (engine.security.atrest)."""
    scheme, sep, _ = url.partition(":")
    if not sep or scheme.lower() not in SUPPORTED_SCHEMES:
        shown = scheme.lower() if sep else "(none)"
        raise ValueError(
            f"unsupported store URL scheme {shown!r}; supported: sqlite:PATH"
            " (e.g. sqlite:data/engine.db)"
        )
    path = sqlite_file(url)
    if path is None:
        raise ValueError("sqlite store URL needs a file path, e.g. sqlite:data/engine.db")
    from engine.store.sqlite import SqliteStore  # only the chosen backend is imported

    return SqliteStore(path, sealer=RowSealer(keys))
