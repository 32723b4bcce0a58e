"""`store_url` (used by the inspection commands) resolves the store exactly as `load` does."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import ConfigError, store_url
from engine.config.loader import resolve_store


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("sqlite:data/engine.db", "sqlite:{root}/data/engine.db"),
        ("sqlite:/srv/engine.db", "sqlite:/srv/engine.db"),
        ("sqlite:~/engine.db", "sqlite:{home}/engine.db"),
        ("postgresql://db.example/engine", "postgresql://db.example/engine"),
    ],
)
def test_resolve_store(tmp_path: Path, written: str, expected: str) -> None:
    home = str(Path("~").expanduser())
    assert resolve_store(written, tmp_path) == expected.format(root=tmp_path, home=home)


def test_store_url_reads_routes_alone_with_env(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("store: sqlite:${STORE_DIR:-data}/x.db\nlisteners: {}\n")
    assert store_url(routes, {"STORE_DIR": "/var/lib/e"}) == "sqlite:/var/lib/e/x.db"
    assert store_url(routes, {}) == f"sqlite:{tmp_path}/data/x.db"
    routes.write_text("listeners: {}\n")
    assert store_url(routes, {}) == f"sqlite:{tmp_path}/data/engine.db"  # the default
    routes.write_text("store: [not, text]\n")
    with pytest.raises(ConfigError):
        store_url(routes, {})
