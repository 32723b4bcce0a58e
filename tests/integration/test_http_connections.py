"""`max_connections` on the FHIR listener over real sockets on 127.0.0.1: keep-alive clients
hold their places, the one past the limit is closed without an answer (and, over TLS, before
the handshake), a place freed is taken by the next client, the count returns to zero, a
failed handshake frees its place, refusals are logged once per burst without the address,
and `engine check` refuses `max_connections: 0`."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.listeners.http import HttpListener
from engine.listeners.http_gate import HANDSHAKE_TIMEOUT
from engine.runtime.engine import Engine
from engine.security.devcerts import DevCerts, make_dev_certs
from tests.integration.cli_support import engine as engine_cli
from tests.integration.conftest import eventually, free_port, running, write_channels
from tests.integration.fhir_support import archive_channel


def write_config(root: Path, port: int, max_connections: Any, tls: DevCerts | None = None) -> Path:
    write_channels(root, {"fhir": archive_channel(root / "out")})
    http: dict[str, Any] = {"port": port, "max_connections": max_connections, "auth": "none"}
    if tls is not None:
        http["tls"] = {"cert": str(tls.server), "key": str(tls.server_key)}
    config = {
        "store": "sqlite:data/engine.db",
        "security": {"profile": "development"},
        "listeners": {"api": {"http": http}},
        "routes": {"api": ["fhir"]},
    }
    (root / "routes.yaml").write_text(yaml.safe_dump(config))
    return root / "routes.yaml"


@asynccontextmanager
async def serving(
    root: Path, max_connections: int, tls: DevCerts | None = None
) -> AsyncIterator[tuple[HttpListener, int]]:
    port = free_port()
    async with running(write_config(root, port, max_connections, tls)) as engine:
        yield listener_of(engine), port


def listener_of(engine: Engine) -> HttpListener:
    listener = engine.listeners["api"]
    assert isinstance(listener, HttpListener)
    return listener


class Held:
    """One keep-alive HTTP/1.1 connection asking for the CapabilityStatement."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, context: ssl.SSLContext | None = None) -> Held:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        return cls(reader, writer)

    async def metadata(self) -> int | None:
        """The status of one GET on this connection; None when it is closed unanswered."""
        self.writer.write(b"GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\n\r\n")
        try:
            await self.writer.drain()
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
        assert headers.get("connection") != "close", "the connection must stay open"
        await self.reader.readexactly(int(headers["content-length"]))
        return int(lines[0].split()[1])

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError, ssl.SSLError):  # the engine may have closed it first
            await self.writer.wait_closed()


async def open_count(listener: HttpListener, count: int) -> None:
    async def reached() -> bool:
        return listener.stats.connections == count

    await eventually(reached, what=f"{count} open connections")


async def test_the_connection_past_the_limit_is_closed_unanswered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="engine.listener")
    async with serving(tmp_path, 2) as (listener, port):
        first, second = await Held.open(port), await Held.open(port)
        assert [await first.metadata(), await second.metadata()] == [200, 200]
        third = await Held.open(port)
        assert await third.metadata() is None
        assert (listener.stats.connections, listener.stats.refused) == (2, 1)
        fourth = await Held.open(port)  # the same burst: counted, not logged again
        assert await fourth.metadata() is None
        assert listener.stats.refused == 2
        # The two held connections were not disturbed.
        assert [await first.metadata(), await second.metadata()] == [200, 200]

        await first.close()
        await open_count(listener, 1)
        fifth = await Held.open(port)
        assert [await fifth.metadata(), await second.metadata()] == [200, 200]
        sixth = await Held.open(port)  # a new burst: logged again
        assert await sixth.metadata() is None

        for client in (second, third, fourth, fifth, sixth):
            await client.close()
        await open_count(listener, 0)
        assert (listener.stats.connections_total, listener.stats.refused) == (3, 3)
        assert listener.stats.requests == 6  # the refused ones never reached a handler

    lines = [r.getMessage() for r in caplog.records if "max_connections" in r.getMessage()]
    assert len(lines) == 2, lines
    for line in lines:
        assert line.startswith("listener api: connection from ip 127.0.0.0/24 #"), line
        assert "127.0.0.1" not in line and "2 open" in line


async def test_the_limit_holds_for_requests_in_turn(tmp_path: Path) -> None:
    """Connections opened and closed one after another never count against the limit."""
    async with serving(tmp_path, 1) as (listener, port):
        for _ in range(5):
            client = await Held.open(port)
            assert await client.metadata() == 200
            await client.close()
            await open_count(listener, 0)
        assert (listener.stats.connections_total, listener.stats.refused) == (5, 0)


@pytest.fixture
def certs(tmp_path: Path) -> DevCerts:
    return make_dev_certs(tmp_path / "certs")


def tls_client(certs: DevCerts) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(certs.ca)
    return context


async def test_over_tls_the_refusal_comes_before_the_handshake(
    tmp_path: Path, certs: DevCerts
) -> None:
    async with serving(tmp_path, 1, certs) as (listener, port):
        held = await Held.open(port, tls_client(certs))
        assert await held.metadata() == 200
        # A client that sends nothing: a server that waited for its TLS hello would keep it
        # open for the handshake timeout; the refusal closes it at once.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert await asyncio.wait_for(reader.read(), HANDSHAKE_TIMEOUT / 2) == b""
        except ConnectionResetError:
            pass  # closed, with a reset: as good
        finally:
            writer.close()
        assert listener.stats.refused == 1
        with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)):
            await Held.open(port, tls_client(certs))
        assert listener.stats.refused == 2
        await held.close()
        await open_count(listener, 0)
        again = await Held.open(port, tls_client(certs))
        assert await again.metadata() == 200
        await again.close()
        await open_count(listener, 0)


async def test_a_failed_handshake_frees_its_place(tmp_path: Path, certs: DevCerts) -> None:
    async with serving(tmp_path, 1, certs) as (listener, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\n\r\n")  # not TLS
        await writer.drain()
        with suppress(ConnectionResetError):
            await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await open_count(listener, 0)
        client = await Held.open(port, tls_client(certs))
        assert await client.metadata() == 200
        await client.close()
        assert (listener.stats.connections_total, listener.stats.refused) == (2, 0)


async def test_a_held_connection_is_closed_when_the_listener_stops(tmp_path: Path) -> None:
    async with serving(tmp_path, 2) as (listener, port):
        held = await Held.open(port)
        assert await held.metadata() == 200
    assert await asyncio.wait_for(held.reader.read(), 10) == b""
    await held.close()
    assert listener.stats.connections == 0


async def test_engine_check_refuses_max_connections_zero(tmp_path: Path) -> None:
    routes = write_config(tmp_path, free_port(), 0)
    lines = routes.read_text().splitlines()
    (row,) = [i for i, line in enumerate(lines) if "max_connections" in line]
    result = await engine_cli("check", cwd=tmp_path)
    assert result.code == 1, result
    (line,) = result.lines
    assert f"routes.yaml:{row + 1}:" in line and "got 0" in line, line


def test_the_default_is_512(tmp_path: Path) -> None:
    from engine.config.loader import load

    port = free_port()
    routes = write_config(tmp_path, port, 1)
    routes.write_text(routes.read_text().replace("max_connections: 1", "host: 127.0.0.1"))
    http = load(routes).listeners["api"].http
    assert http is not None and http.max_connections == 512
