"""Liveness and readiness of a real engine: an MLLP and an HTTP listener on real sockets and a
real SQLite store; ready turns false when the store cannot write or a listener is not bound."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.config import load
from engine.runtime.engine import Engine
from engine.runtime.health import live, ready
from engine.store.sqlite import SqliteStore
from tests.integration.conftest import channel, free_port, listening, running
from tests.integration.fhir_support import archive_channel, write_fhir_config


@pytest.fixture
def routes(tmp_path: Path) -> Path:
    """Two listeners: `api` (FHIR over HTTP) and `feed` (MLLP)."""
    channels = {"to-file": archive_channel(tmp_path / "out"), "to-ehr": channel(free_port())}
    return write_fhir_config(tmp_path, free_port(), channels, mllp_port=free_port(),
                             routes={"api": ["to-file"], "feed": ["to-ehr"]})  # fmt: skip


@pytest.fixture
async def engine(routes: Path) -> AsyncIterator[Engine]:
    async with running(routes) as engine:
        yield engine


def test_live_answers() -> None:
    ok, body = live()
    assert ok and json.loads(json.dumps(body)) == {"status": "ok"}


async def test_ready_when_the_store_writes_and_every_listener_is_bound(engine: Engine) -> None:
    ok, body = await ready(engine)
    assert ok, body
    assert json.loads(json.dumps(body)) == body  # JSON as it is
    assert body["status"] == "ok"
    store = body["checks"]["store writable"]
    assert store["ok"] is True and 0 <= store["seconds"] < 2
    assert body["checks"]["listeners bound"] == {"ok": True,
                                                 "listeners": {"api": True, "feed": True}}


@pytest.mark.parametrize("name", ["feed", "api"])
async def test_not_ready_once_a_listener_stops(engine: Engine, name: str) -> None:
    listener = engine.listeners[name]
    port = listener.port
    await listener.stop()
    assert not listening(port)
    ok, body = await ready(engine)
    assert not ok and body["status"] == "unavailable"
    bound = body["checks"]["listeners bound"]
    assert bound["ok"] is False
    assert bound["listeners"][name] is False
    assert all(v for other, v in bound["listeners"].items() if other != name)
    assert body["checks"]["store writable"]["ok"] is True


async def test_not_ready_when_the_store_is_closed(engine: Engine) -> None:
    await engine.store.close()
    ok, body = await ready(engine)
    assert not ok
    assert body["checks"]["store writable"] == {"ok": False, "error": "RuntimeError"}
    assert body["checks"]["listeners bound"]["ok"] is True


async def test_not_ready_while_commits_hang(engine: Engine) -> None:
    """A writer that does not commit within the timeout (a stuck fsync, say) is not ready;
    once it commits again, the engine is ready again."""
    store = engine.store
    assert isinstance(store, SqliteStore)
    release = threading.Event()
    store.writer.before_commit = release.wait  # the commit thread waits here
    try:
        ok, body = await ready(engine, timeout=0.2)
        assert not ok
        assert body["checks"]["store writable"] == {"ok": False, "error": "timeout"}
    finally:
        release.set()
        store.writer.before_commit = None
    ok, body = await ready(engine)
    assert ok, body


async def test_not_ready_before_start(routes: Path) -> None:
    engine = Engine(load(routes))
    ok, body = await ready(engine)
    assert not ok
    assert body["checks"]["store writable"]["ok"] is False
    assert body["checks"]["listeners bound"]["listeners"] == {"api": False, "feed": False}
