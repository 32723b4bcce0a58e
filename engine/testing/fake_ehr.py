"""The test kit's fake EHR: an MLLP server that records what it receives and answers the way a
test (or `engine fake-ehr`) asks.

The rule it keeps: it behaves like a real peer on the wire. Each message is framed with the
project's Framer, answered with a real ACK from `build_ack` (MSA-2 = the message's MSH-10,
encoded in the message's MSH-18 charset) on the connection it came from, and `stop()` closes
the listener and every open connection, so a destination sees the EHR go down.

Modes (`FakeEhr.mode`, settable while running; `script` holds modes used one per message
before falling back to `mode`):

- "aa" / "ae" / "ar": answer AA / AE / AR.
- "timeout": record the message, never answer.
- "wrong-id": answer AA, but for another control id (MSA-2 = "NOT-" + the MSH-10).
- "drop": close the connection on receipt without answering. The message is NOT added to
  `received` (the EHR "crashed before storing it"); it is counted in `dropped`.

Something that is not HL7 v2 is recorded and answered AR whatever the mode. Tests wait with
`wait_for(count)` / `wait_until(predicate)`: both wait on a condition, never on the clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from engine.protocol.ack import build_ack
from engine.protocol.charset import decode_message
from engine.protocol.er7 import Er7Error, Header, peek_header
from engine.protocol.mllp import Frame, Framer, Oversized, frame
from engine.testing.fake_base import LoopbackFake

log = logging.getLogger(__name__)

MODES = frozenset({"aa", "ae", "ar", "timeout", "drop", "wrong-id"})
_ACK_TEXT = {"AA": "", "AE": "fake EHR: application error", "AR": "fake EHR: rejected"}
_SEGMENT_SPLIT = re.compile(r"\r\n|\r|\n")


class FakeEhr(LoopbackFake):
    """An MLLP EHR on host:port (0 = any free port; read `port` after `start`)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        mode: str = "aa",
        on_message: Callable[[bytes], None] | None = None,
        *,
        max_message_bytes: int = 10 * 1024 * 1024,
    ) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self.mode = mode
        self.on_message = on_message
        self.max_message_bytes = max_message_bytes
        self.received: list[bytes] = []
        self.script: list[str] = []
        self.accepted = 0  # connections accepted since construction
        self.dropped = 0  # messages closed on in "drop" mode
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._acks = 0

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"unknown fake EHR mode {value!r}; expected one of {sorted(MODES)}")
        self._mode = value

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener and every connection; returns once their sockets are closed, so
        a peer already sees the EHR gone."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        connections = list(self._connections)
        for conn in connections:
            conn.abort()
        await asyncio.gather(*(conn.lost for conn in connections))
        await server.wait_closed()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[bytes]:
        """The first `count` received payloads, once that many have arrived."""
        try:
            await self.wait_until(lambda: len(self.received) >= count, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"fake EHR expected {count} messages within {timeout:g} s, "
                f"got {len(self.received)}"
            ) from None
        return self.received[:count]

    def _answer(self, payload: bytes) -> bytes | None:
        """What to write back for one message: the framed ACK, b"" for nothing, None to close
        the connection."""
        mode = self.script.pop(0) if self.script else self.mode
        if mode not in MODES:
            raise ValueError(f"unknown fake EHR mode {mode!r} in script")
        if mode == "drop":
            self.dropped += 1
            self._changed()
            return None
        header, codec, problem = _read(payload)
        self.received.append(payload)
        self._changed()
        if self.on_message is not None:
            self.on_message(payload)
        if mode == "timeout":
            return b""
        if problem or header is None:
            ack = self._ack(header, "AR", f"fake EHR: {problem}")
        elif mode == "wrong-id":
            ack = self._ack(_acking(header, "NOT-" + header.control_id), "AA", "")
        else:
            code = mode.upper()
            ack = self._ack(header, code, _ACK_TEXT[code])
        return frame(ack.encode(codec, errors="replace"))

    def _ack(self, header: Header | None, code: str, text: str) -> str:
        self._acks += 1
        return build_ack(
            header, code, text, control_id=f"FAKEACK{self._acks:06d}", now=datetime.now(UTC)
        )


class _Connection(asyncio.Protocol):
    """One EHR-side connection: messages are answered in order, as they are framed."""

    def __init__(self, ehr: FakeEhr) -> None:
        self._ehr = ehr
        self._framer = Framer(max_size=ehr.max_message_bytes)
        self._transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._ehr.accepted += 1
        self._ehr._connections.add(self)
        self._ehr._changed()

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        for event in self._framer.feed(data):
            if transport.is_closing():
                return
            if isinstance(event, Oversized):
                transport.abort()  # a real EHR gives up on such a peer too
                return
            if not isinstance(event, Frame):
                continue
            try:
                reply = self._ehr._answer(event.payload)
            except Exception:
                log.exception("fake EHR: handling a message failed; closing the connection")
                reply = None
            if reply is None:
                transport.close()
                return
            if reply:
                transport.write(reply)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._ehr._connections.discard(self)
        self._ehr._changed()
        if not self.lost.done():
            self.lost.set_result(None)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


def _read(payload: bytes) -> tuple[Header | None, str, str]:
    """(header, codec, problem); problem is "" for a readable HL7 v2 message. One whose bytes
    do not fit its charset still gets its header (read as latin-1), so the AR names its MSH-10.
    """
    try:
        header, _, codec = decode_message(payload)
        return header, codec, ""
    except Er7Error as exc:
        problem = str(exc)
    try:
        return peek_header(payload), "utf-8", problem
    except Er7Error:
        return None, "utf-8", "not an HL7 v2 message"


def _acking(header: Header, control_id: str) -> Header:
    """The header with another MSH-10, so that build_ack's MSA-2 names that id instead."""
    fields = list(header.fields)
    fields[10] = control_id
    return dataclasses.replace(header, control_id=control_id, fields=tuple(fields))


def format_message(payload: bytes) -> str:
    """A received message for a console: control id and type, then one segment per line."""
    header, codec, problem = _read(payload)
    if header is None or problem:
        return f"{problem} ({len(payload)} bytes)"
    kind = "^".join(p for p in (header.message_type, header.trigger) if p)
    lines = [f"control id {header.control_id or '-'}  type {kind or '-'}"]
    text = payload.decode(codec, errors="replace")
    lines += ["  " + segment for segment in _SEGMENT_SPLIT.split(text) if segment]
    return "\n".join(lines)


def printer(write: Callable[[str], Any] = print) -> Callable[[bytes], None]:
    """An `on_message` callback that writes `format_message` of each message."""

    def show(payload: bytes) -> None:
        write(format_message(payload))

    return show


async def run(
    port: int, host: str = "127.0.0.1", mode: str = "aa", write: Callable[[str], Any] = print
) -> None:
    """`engine fake-ehr`: listen, print every message, serve until cancelled."""
    ehr = FakeEhr(host, port, mode, on_message=printer(write))
    await ehr.start()
    write(f"fake EHR listening on {host}:{ehr.port} (mode {mode})")
    await ehr.serve_forever()
