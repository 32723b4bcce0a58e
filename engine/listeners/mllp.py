"""The MLLP listener: an asyncio Protocol around the sans-IO framer, feeding intake.

Per connection, frames are handled one at a time in arrival order and each ACK is written
only when intake returns it (after the commit). Bad input never takes the engine down or
touches another connection: an oversized frame gets an AR and the connection stays usable;
garbage outside frames is skipped and counted; EOF inside a frame is counted and logged; an
idle connection is closed after `idle_timeout`; connections past `max_connections` are
closed at once. Reading pauses while a connection has frames waiting (backpressure).

With `tls:` the listener speaks MLLP inside TLS (engine.security.tls: TLS 1.2 minimum, modern
ciphers; a client certificate required with `client_ca`). A client whose certificate is not on
the listener's `allow` list is closed at once, before a byte of MLLP is read; the log line
names the listener and the certificate's fingerprint, nothing the peer sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import cast

from engine.config.model import ListenerConfig
from engine.protocol.mllp import Frame, Framer, Oversized, Truncated, frame
from engine.runtime.intake import Intake
from engine.runtime.metrics import ListenerMetrics
from engine.security.tls import AllowList, peer_refusal, server_context

log = logging.getLogger("engine.listener")

# Pause reading once this many frames wait on one connection (a sender must wait for each
# ACK anyway; this bounds memory when one does not).
MAX_PENDING_FRAMES = 64
# A client that connects and never finishes the TLS handshake holds a socket: cap its time.
HANDSHAKE_TIMEOUT = 10.0


@dataclass
class ListenerStats:
    connections: int = 0
    connections_total: int = 0
    refused: int = 0
    frames: int = 0
    oversized: int = 0
    truncated: int = 0
    stray_bytes: int = 0
    idle_closed: int = 0
    tls_refused: int = 0


class MllpConnection(asyncio.Protocol):
    def __init__(self, listener: MllpListener) -> None:
        self._listener = listener
        self._config = listener.config
        self._mllp = listener.mllp
        self._framer = Framer(self._mllp.max_message_bytes)
        # Each frame with the loop time its last bytes arrived (the ACK latency's start).
        self._pending: deque[tuple[Frame | Oversized, float]] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._last_activity = self._loop.time()
        self._idle_handle: asyncio.TimerHandle | None = None
        self._paused = False
        self._closed = False
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        stats = self._listener.stats
        refusal = peer_refusal(self._listener.allow, transport.get_extra_info("ssl_object"))
        if refusal is not None:
            stats.tls_refused += 1
            log.warning("listener %s: connection refused, %s", self._config.name, refusal)
            self._closed = True
            self._transport.abort()
            return
        if stats.connections >= self._mllp.max_connections:
            stats.refused += 1
            log.warning(
                "listener %s: connection refused, %d open (max_connections)",
                self._config.name,
                stats.connections,
            )
            self._closed = True
            self._transport.abort()
            return
        stats.connections += 1
        stats.connections_total += 1
        self._listener.connections.add(self)
        self._schedule_idle(self._mllp.idle_timeout)

    def data_received(self, data: bytes) -> None:
        now = self._last_activity = self._loop.time()
        before = self._framer.stray_bytes
        events = self._framer.feed(data)
        self._listener.stats.stray_bytes += self._framer.stray_bytes - before
        for event in events:
            if isinstance(event, Truncated):
                self._listener.stats.truncated += 1
                log.warning(
                    "listener %s: frame of %d bytes restarted before its end",
                    self._config.name,
                    event.size,
                )
            else:
                self._listener.metrics.received.inc()
                self._pending.append((event, now))
        if self._pending and self._worker is None:
            self._worker = self._loop.create_task(self._drain())
        if len(self._pending) >= MAX_PENDING_FRAMES and not self._paused and self._transport:
            self._paused = True
            self._transport.pause_reading()

    async def _drain(self) -> None:
        intake = self._listener.intake
        ack_seconds = self._listener.metrics.ack_seconds
        try:
            while self._pending and not self._closed:
                event, arrived = self._pending.popleft()
                if isinstance(event, Frame):
                    self._listener.stats.frames += 1
                    ack = await intake.receive(self._config, event.payload)
                else:
                    self._listener.stats.oversized += 1
                    log.warning(
                        "listener %s: oversized frame of %d bytes refused",
                        self._config.name,
                        event.size,
                    )
                    ack = await intake.reject_oversized(self._config, event.head, event.size)
                if self._transport is not None and not self._transport.is_closing():
                    self._transport.write(frame(ack))
                    ack_seconds.observe(self._loop.time() - arrived)
                if self._paused and len(self._pending) < MAX_PENDING_FRAMES // 2:
                    self._paused = False
                    if self._transport is not None:
                        self._transport.resume_reading()
        except Exception as exc:  # never let one connection's failure escape
            log.error("listener %s: connection failed: %s", self._config.name, type(exc).__name__)
            if self._transport is not None:
                self._transport.abort()
        finally:
            self._worker = None
            if self._eof and self._transport is not None:
                self._transport.close()

    def eof_received(self) -> bool | None:
        for event in self._framer.eof():
            if isinstance(event, Truncated):
                self._listener.stats.truncated += 1
                log.warning(
                    "listener %s: connection ended inside a frame (%d bytes dropped)",
                    self._config.name,
                    event.size,
                )
        # Keep the transport open until the ACKs for complete frames are written.
        self._eof = True
        if self._worker is None and self._transport is not None:
            self._transport.close()
            return None
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._listener.stats.connections -= 1
        self._listener.connections.discard(self)
        if self._idle_handle is not None:
            self._idle_handle.cancel()

    def _schedule_idle(self, delay: float) -> None:
        self._idle_handle = self._loop.call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        # One timer per connection, re-armed from the last activity, instead of resetting a
        # timer on every read.
        if self._closed:
            return
        idle_for = self._loop.time() - self._last_activity
        timeout = self._mllp.idle_timeout
        if idle_for >= timeout and self._worker is None:
            self._listener.stats.idle_closed += 1
            if self._transport is not None:
                self._transport.close()
            return
        self._schedule_idle(max(timeout - idle_for, 0.05))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def drained(self) -> None:
        if self._worker is not None:
            await asyncio.gather(self._worker, return_exceptions=True)


class MllpListener:
    def __init__(self, config: ListenerConfig, intake: Intake, metrics: ListenerMetrics) -> None:
        assert config.mllp is not None  # engine.py builds MLLP listeners for mllp configs only
        self.config = config
        self.mllp = config.mllp
        self.intake = intake
        self.metrics = metrics
        self.stats = ListenerStats()
        self.connections: set[MllpConnection] = set()
        self._server: asyncio.Server | None = None
        tls = self.mllp.tls
        # Built here, not at start: a bad file fails the engine's construction, before
        # anything binds.
        self.ssl = server_context(tls) if tls is not None else None
        self.allow = AllowList(tls.allow if tls is not None else ())

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def bound(self) -> bool:
        """Started and accepting connections (readiness)."""
        return self._server is not None and self._server.is_serving()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: MllpConnection(self),
            self.mllp.host,
            self.mllp.port,
            reuse_address=True,
            backlog=1024,
            ssl=self.ssl,
            ssl_handshake_timeout=None if self.ssl is None else HANDSHAKE_TIMEOUT,
        )
        log.info("listener %s: %s on %s:%d", self.config.name,
                 "MLLP" if self.ssl is None else "MLLP over TLS", self.mllp.host, self.port)

    async def stop(self) -> None:
        """Stop accepting, let in-progress messages finish and ACK, then close."""
        if self._server is not None:
            self._server.close()
        connections = list(self.connections)
        await asyncio.gather(*(c.drained() for c in connections))
        for connection in connections:
            connection.close()
        if self._server is not None:
            await self._server.wait_closed()
