"""The HTTP listener's door: connections admitted up to `max_connections`, counted until they end.

Rule it keeps: a connection past the limit is closed the moment it is accepted, before a TLS
handshake and before a byte of it is read; every admitted connection is counted once and
released once, however it ends (served, reset, failed handshake, listener stopping).

Why not aiohttp's `TCPSite`: it hands aiohttp's handler factory to `loop.create_server(ssl=...)`,
and the loop runs the TLS handshake before any protocol hears of the connection, so a refusal
there comes after the handshake's cost. (`loop.start_tls` from a plain protocol does not help:
uvloop starts reading right after `connection_made`, so the client's hello can reach the plain
protocol first.) So the door accepts on its own listening sockets (`loop.sock_accept`), closes
a socket over the limit there, and gives an admitted one to `loop.connect_accepted_socket`
(TLS included) with a `Gate` in front of aiohttp's `RequestHandler`, which forwards events and
releases the place when the connection ends.

A refusal is counted in the listener's `stats.refused` and logged once per burst (until a
connection closes and a place frees), naming the peer's network and a per-run tag of its
address (engine.security.ratelimit's labelling), never the address.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import secrets
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from aiohttp.web_protocol import RequestHandler

from engine.security.ratelimit import ip_key, ip_label

log = logging.getLogger("engine.listener")

# A client that connects and never finishes the TLS handshake holds a place: cap its time
# (as the MLLP listener does).
HANDSHAKE_TIMEOUT = 10.0
# Out of file descriptors (or the like): wait before accepting again, as asyncio's own
# server does, instead of spinning on an accept that keeps failing.
ACCEPT_RETRY_DELAY = 1.0


class ConnectionCounts(Protocol):
    connections: int  # open now
    connections_total: int  # admitted since start
    refused: int  # closed at once, over max_connections


class Door:
    """The count and the limit of one listener, shared by its gates."""

    def __init__(self, listener: str, limit: int, counts: ConnectionCounts) -> None:
        self.listener = listener
        self.limit = limit
        self.counts = counts
        self.sockets: list[socket.socket] = []
        self._secret = secrets.token_bytes(16)
        self._burst = False  # a refusal was logged and no place has freed since
        self._tasks: set[asyncio.Task[None]] = set()  # accept loops and handshakes

    async def open(
        self, host: str, port: int, handler: Callable[[], RequestHandler],
        tls: ssl.SSLContext | None,
    ) -> None:
        """Listen on every address `host` resolves to (as `loop.create_server` would)."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(1024)
                sock.setblocking(False)
        except OSError:
            self._close_sockets()
            raise
        for sock in self.sockets:
            self._spawn(self._accept(sock, handler, tls))

    async def _accept(
        self, sock: socket.socket, handler: Callable[[], RequestHandler],
        tls: ssl.SSLContext | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(sock)
            except (ConnectionAbortedError, BlockingIOError, InterruptedError):
                continue  # the client gave up before we took it
            except OSError as exc:
                log.error("listener %s: accepting failed (%s); retrying in %.0f s",
                          self.listener, errno.errorcode.get(exc.errno or 0, "error"),
                          ACCEPT_RETRY_DELAY)
                await asyncio.sleep(ACCEPT_RETRY_DELAY)
                continue
            if not self.admit(peer):
                conn.close()
                continue
            self._spawn(self._serve(conn, handler, tls))

    async def _serve(
        self, conn: socket.socket, handler: Callable[[], RequestHandler],
        tls: ssl.SSLContext | None,
    ) -> None:
        gate = Gate(self, handler)
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: gate, conn, ssl=tls,
                ssl_handshake_timeout=None if tls is None else HANDSHAKE_TIMEOUT,
            )
        except asyncio.CancelledError:  # the listener stopping mid-handshake
            conn.close()
            gate.release()
            raise
        except Exception:
            # A failed or timed-out handshake: kept quiet, as asyncio keeps it behind
            # create_server(ssl=...); the place is freed.
            conn.close()
            gate.release()

    @property
    def bound(self) -> bool:
        """Listening: opened and not closed since."""
        return bool(self.sockets) and all(sock.fileno() >= 0 for sock in self.sockets)

    def admit(self, peer: object) -> bool:
        counts = self.counts
        if counts.connections >= self.limit:
            counts.refused += 1
            if not self._burst:
                self._burst = True
                log.warning(
                    "listener %s: connection from %s refused, %d open (max_connections); "
                    "further refusals are counted, not logged, until one closes",
                    self.listener, self._label(peer), counts.connections,
                )
            return False
        counts.connections += 1
        counts.connections_total += 1
        return True

    def leave(self) -> None:
        self.counts.connections -= 1
        self._burst = False

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop accepting and abandon handshakes still running (their places are freed);
        connections already handed to aiohttp are its to shut down."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._close_sockets()

    def _close_sockets(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()

    def _label(self, peer: object) -> str:
        host = peer[0] if isinstance(peer, tuple) and peer else None
        return ip_label(ip_key(host), self._secret) if isinstance(host, str) else "a peer"


class Gate(asyncio.Protocol):
    """One admitted connection in front of aiohttp's handler: events forwarded, the place
    released when it ends."""

    def __init__(self, door: Door, handler: Callable[[], RequestHandler]) -> None:
        self._door = door
        self._handler = handler()
        self._counted = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        self._handler.eof_received()
        return None  # aiohttp's handler never keeps a half-closed connection open

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._handler.connection_lost(exc)
        self.release()

    def release(self) -> None:
        if self._counted:
            self._counted = False
            self._door.leave()
