"""Store tests run on both event loops (the engine runs on uvloop; the writer hands results
back with call_soon_threadsafe, whose wake-up differs between the two), each on a fresh SQLite
file in tmp_path. The test that counts hand-offs by patching the loop runs on asyncio only.
The `store` fixture is once in clear and once sealing at rest (engine.security.atrest): every
store behaviour holds the same with encryption on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import pytest
import pytest_asyncio
import uvloop

from engine.security.atrest import KEY_BYTES, KeyRing, RowSealer
from engine.store.sqlite import SqliteStore
from tests.unit.store.helpers import FakeClock


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.get_closest_marker("asyncio_only") is not None:
        return {"asyncio": asyncio.new_event_loop}
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "asyncio_only: run on the asyncio loop only")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_750_000_000.0)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "engine.db"


TEST_RING = KeyRing({"test1": bytes(range(KEY_BYTES))}, "test1")


@pytest_asyncio.fixture(params=["clear", "sealed"])
async def store(
    request: pytest.FixtureRequest, db_path: Path, clock: FakeClock
) -> AsyncIterator[SqliteStore]:
    sealer = RowSealer(TEST_RING if request.param == "sealed" else None)
    s = SqliteStore(db_path, clock=clock, sealer=sealer)
    await s.open()
    yield s
    await s.close()
