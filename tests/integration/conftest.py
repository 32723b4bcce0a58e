"""Integration fixtures: a real configuration in tmp_path, the engine on real sockets and a
real SQLite file, a fake EHR, ports chosen free at run time."""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

from engine.config import load
from engine.runtime.engine import Engine
from engine.store.base import Delivery

PROJECT = Path(__file__).resolve().parents[2]
SAMPLES = PROJECT / "samples"

VALID_SAMPLES = sorted(SAMPLES.glob("*.hl7"))


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def channel(
    ehr_port: int,
    *,
    steps: list[Any] | None = None,
    retry: dict[str, Any] | None = None,
    order_by: str | None = "SCH-1.1",
    archive: Path | None = None,
    dedupe: str | int | None = None,
    ack_timeout: str = "2s",
) -> dict[str, Any]:
    """The example channel, pointed at a test EHR with fast retries."""
    dest: dict[str, Any] = {
        "mllp": {"host": "127.0.0.1", "port": ehr_port, "ack_timeout": ack_timeout},
        "retry": retry or {"attempts": 2, "first": "50ms", "max": "200ms"},
    }
    if order_by:
        dest["order_by"] = order_by
    destinations: dict[str, Any] = {"clinic-ehr": dest}
    if archive is not None:
        destinations["archive"] = {"file": {"directory": str(archive)}}
    data: dict[str, Any] = {
        "accept": {"type": ["SIU^S12", "SIU^S13", "SIU^S14", "SIU^S15", "SIU^S17", "SIU^S26"]},
        "filter": [{"field": "SCH-25.1", "not_in": ["Pending"]}],
        "steps": steps
        if steps is not None
        else [
            {"map": {"field": "SCH-7.1", "table": "appointment_types", "to": "ehr_code"}},
            {"map": {"field": "AIP-3.1", "table": "providers", "to": "ehr_id"}},
            {"set": {"MSH-5": "CLINIC_EHR"}},
            {"remove": ["PID-11", "PID-13"]},
        ],
        "destinations": destinations,
    }
    if dedupe is not None:
        data["dedupe"] = {"window": dedupe}
    return data


def write_channels(root: Path, channels: dict[str, dict[str, Any]]) -> None:
    """The example's transforms/ and these channels under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(PROJECT / "transforms", root / "transforms", dirs_exist_ok=True)
    (root / "channels").mkdir(exist_ok=True)
    for name, data in channels.items():
        (root / "channels" / f"{name}.yaml").write_text(yaml.safe_dump(data))


def write_config(
    root: Path,
    listen_port: int,
    channels: dict[str, dict[str, Any]],
    *,
    ack: str = "processed",
    listener: dict[str, Any] | None = None,
    routes: list[str] | None = None,
) -> Path:
    write_channels(root, channels)
    mllp: dict[str, Any] = {"port": listen_port, **(listener or {})}
    config = {
        "store": "sqlite:data/engine.db",
        # As the example: trying the engine on one machine (no at-rest keys to provide).
        "security": {"profile": "development"},
        "listeners": {"feed": {"mllp": mllp, "ack": ack, "ack_timeout": "3s"}},
        "routes": {"feed": routes if routes is not None else list(channels)},
    }
    (root / "routes.yaml").write_text(yaml.safe_dump(config))
    return root / "routes.yaml"


@asynccontextmanager
async def running(routes: Path, poll_interval: float = 0.05) -> AsyncIterator[Engine]:
    engine = Engine(load(routes), poll_interval=poll_interval)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Wait for a condition observed in the store (polled), failing after `timeout`."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)  # polling interval of a condition check, not a synchronisation


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def ack_code(ack: bytes) -> str:
    return ack.split(b"MSA|", 1)[1][:2].decode()


def segment(ack: bytes, name: str) -> list[str]:
    text = ack.decode("latin-1")
    return [s for s in text.split("\r") if s.startswith(name + "|")]


async def deliveries_of(engine: Engine, destination: str = "clinic-ehr") -> list[Delivery]:
    return await engine.store.deliveries(destination=destination)
