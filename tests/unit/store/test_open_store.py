"""`open_store(url)`: which URLs make which store, and the errors for the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.store import open_store
from engine.store.base import MessageFilter
from engine.store.sqlite import SqliteStore


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:data/engine.db", "data/engine.db"),
        ("sqlite:/var/lib/engine/engine.db", "/var/lib/engine/engine.db"),
        ("sqlite:///var/lib/engine/engine.db", "/var/lib/engine/engine.db"),
        ("SQLite:relative.db", "relative.db"),
    ],
)
def test_sqlite_urls(url: str, path: str) -> None:
    store = open_store(url)
    assert isinstance(store, SqliteStore)
    assert store.path == Path(path)


@pytest.mark.parametrize(
    "url", ["postgresql://user:s3cret@db.example/engine", "engine.db", "mysql:x", ""]
)
def test_other_schemes_are_refused_without_echoing_the_url(url: str) -> None:
    with pytest.raises(ValueError, match="supported: sqlite:PATH") as caught:
        open_store(url)
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("url", ["sqlite:", "sqlite:///", "sqlite::memory:"])
def test_sqlite_needs_a_file(url: str) -> None:
    with pytest.raises(ValueError, match="needs a file path"):
        open_store(url)


async def test_the_store_opens_where_the_url_says(tmp_path: Path) -> None:
    store = open_store(f"sqlite:{tmp_path}/nested/engine.db")
    await store.open()
    assert await store.search(MessageFilter()) == []
    await store.close()
    assert (tmp_path / "nested" / "engine.db").exists()
