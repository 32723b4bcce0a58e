"""A minimal MLLP sender: one connection, one message in flight, each ACK read back.

Used by `engine send`, the benchmark and the tests, so they all speak MLLP through the same
framer as the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from engine.protocol.mllp import Frame, Framer, frame


class MllpClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._framer = Framer()
        self._ready: list[bytes] = []

    @classmethod
    async def connect(
        cls, host: str, port: int, timeout: float = 10.0, tls: ssl.SSLContext | None = None
    ) -> MllpClient:
        """Connect; over TLS when `tls` is given (the host name is checked against the
        server's certificate unless the context says otherwise)."""
        hostname = host if tls is not None else None
        opening = asyncio.open_connection(host, port, ssl=tls, server_hostname=hostname)
        reader, writer = await asyncio.wait_for(opening, timeout)
        return cls(reader, writer)

    def write(self, data: bytes) -> None:
        """Raw bytes, unframed (tests use it to send garbage or partial frames)."""
        self._writer.write(data)

    async def read_frame(self, timeout: float = 10.0) -> bytes:
        """The next complete frame's payload; ConnectionError if the peer closes first."""
        async with asyncio.timeout(timeout):
            while not self._ready:
                data = await self._reader.read(65536)
                if not data:
                    raise ConnectionError("the peer closed the connection before answering")
                self._ready.extend(
                    e.payload for e in self._framer.feed(data) if isinstance(e, Frame)
                )
        return self._ready.pop(0)

    async def send(self, payload: bytes, timeout: float = 10.0) -> bytes:
        """Frame and send one message; return the ACK's payload."""
        self._writer.write(frame(payload))
        await self._writer.drain()
        return await self.read_frame(timeout)

    async def close(self) -> None:
        self._writer.close()
        # The peer may already be gone; closing is all we wanted.
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    async def __aenter__(self) -> MllpClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
