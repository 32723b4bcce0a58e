"""Durable storage of messages, channel results, deliveries and attempts.

`open_store(url)` turns the `store:` URL of routes.yaml into a `Store` (not yet opened). The
rule it keeps: an unknown scheme is a configuration error naming the supported ones, and the
error never echoes the URL itself (it may carry credentials).
"""

from __future__ import annotations

from engine.security.atrest import KeyRing, RowSealer
from engine.store.base import Store

SUPPORTED_SCHEMES = ("sqlite",)


def open_store(url: str, keys: KeyRing | None = None) -> Store:
    """`sqlite:PATH` (relative or absolute; `sqlite:///abs/path.db` is accepted too). With
    `keys`, PHI-carrying values are sealed at rest (engine.security.atrest)."""
    scheme, sep, rest = url.partition(":")
    if not sep or scheme.lower() not in SUPPORTED_SCHEMES:
        shown = scheme.lower() if sep else "(none)"
        raise ValueError(
            f"unsupported store URL scheme {shown!r}; supported: sqlite:PATH"
            " (e.g. sqlite:data/engine.db)"
        )
    path = rest[2:] if rest.startswith("//") else rest
    if not path or path == ":memory:" or path.endswith("/"):
        raise ValueError("sqlite store URL needs a file path, e.g. sqlite:data/engine.db")
    from engine.store.sqlite import SqliteStore  # only the chosen backend is imported

    return SqliteStore(path, sealer=RowSealer(keys))
