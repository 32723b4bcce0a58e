"""The MLLP destination: sends a message to an EHR over persistent TCP connections and reports
what the EHR's ACK said.

The rule it keeps: `Sent` only when an AA/CA ACK whose MSA-2 equals the MSH-10 we sent has been
read. Anything else (timeout, refused, reset, EOF, garbage, an ACK for another message) is a
`Retry`, or a `Reject` for AR/CR. A connection whose byte stream can no longer be trusted (no
ACK in time, ACK for another message, unparseable reply, bytes nobody asked for) is closed and
replaced, because a late ACK on it would be taken for the next message's.

MLLP allows one message in flight per connection, so the destination keeps a pool of up to
`connections` connections (opened lazily, reused across sends) and `concurrency` equals it.
Reasons never include message content; they name host:port, timeouts, ACK codes and MSA-3.

With `tls:` the connections are MLLP inside TLS (`engine.security.tls` client context: the
server's certificate and host name verified, TLS 1.2 minimum); a certificate that fails
verification is a `Retry` naming `mllps://host:port` and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import ssl
from collections import deque
from typing import cast

from engine.config.model import DestinationConfig
from engine.config.registry import Plugin
from engine.config.schema import PORT
from engine.config.units import DURATION, SIZE
from engine.destinations.base import DeliveryMeta, Outcome, Reject, Retry, Sent
from engine.destinations.options import (
    MAX_CONNECTIONS,
    check_tls,
    client_tls,
    connections_option,
    tls_option,
)
from engine.protocol.ack import AckInfo, parse_ack
from engine.protocol.charset import decode_message
from engine.protocol.er7 import Er7Error, peek_header
from engine.protocol.mllp import Event, Framer, Oversized, Truncated, frame
from engine.security.tls import handshake_failed, refused

log = logging.getLogger(__name__)

DEFAULT_ACK_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_MAX_ACK_BYTES = 1024 * 1024

PLUGIN = Plugin(
    name="mllp",
    description="HL7 v2 over MLLP to an EHR; success only on a matching AA/CA ACK.",
    schema={
        "type": "object",
        "additionalProperties": False,
        "required": ["host", "port"],
        "properties": {
            "host": {"type": "string", "minLength": 1},
            "port": PORT,
            "ack_timeout": {
                "x-unit": DURATION,
                "exclusiveMinimum": 0,
                "default": DEFAULT_ACK_TIMEOUT,
                "description": "How long to wait for the ACK after sending.",
            },
            "connect_timeout": {
                "x-unit": DURATION,
                "exclusiveMinimum": 0,
                "default": DEFAULT_CONNECT_TIMEOUT,
            },
            "connections": connections_option(
                1, "Persistent connections, one message in flight on each."
            ),
            "max_ack_bytes": {"x-unit": SIZE, "minimum": 1, "default": DEFAULT_MAX_ACK_BYTES},
            "tls": tls_option("MLLP over TLS: {ca, cert, key, verify}; ca defaults to the "
                              "system CAs."),
        },
    },
    check=check_tls,
)

_SENT_CODES = frozenset({"AA", "CA"})
_RETRY_CODES = frozenset({"AE", "CE"})
_REJECT_CODES = frozenset({"AR", "CR"})


def build(config: DestinationConfig) -> MllpDestination:
    opts = config.options
    return MllpDestination(
        config.name,
        host=str(opts["host"]),
        port=int(opts["port"]),
        ack_timeout=float(opts.get("ack_timeout", DEFAULT_ACK_TIMEOUT)),
        connect_timeout=float(opts.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)),
        connections=int(opts.get("connections", 1)),
        max_ack_bytes=int(opts.get("max_ack_bytes", DEFAULT_MAX_ACK_BYTES)),
        tls=client_tls(opts, config.name) if "tls" in opts else None,
    )


class MllpDestination:
    """Delivers to one host:port. Safe to call `send` concurrently; at most `concurrency`
    sends are on the wire at once, the others wait for a free connection."""

    def __init__(
        self,
        name: str,
        *,
        host: str,
        port: int,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        connections: int = 1,
        max_ack_bytes: int = DEFAULT_MAX_ACK_BYTES,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if not 1 <= connections <= MAX_CONNECTIONS:
            raise ValueError(f"connections must be 1..{MAX_CONNECTIONS}, got {connections}")
        if ack_timeout <= 0 or connect_timeout <= 0:
            raise ValueError("ack_timeout and connect_timeout must be positive")
        if max_ack_bytes < 1:
            raise ValueError("max_ack_bytes must be positive")
        self.name = name
        self.concurrency = connections
        self.host = host
        self.port = port
        self.ack_timeout = ack_timeout
        self.connect_timeout = connect_timeout
        self.max_ack_bytes = max_ack_bytes
        self.tls = tls
        self.peer = f"{host}:{port}" if tls is None else f"mllps://{host}:{port}"
        self._slots = asyncio.Semaphore(connections)
        self._idle: list[_Link] = []
        self._links: set[_Link] = set()
        self._closed = False
        self.connects = 0  # connections opened so far (observability and tests)

    async def send(self, payload: bytes, meta: DeliveryMeta) -> Outcome:
        try:
            expected = _control_id(payload)
        except Er7Error as exc:
            return Reject(f"payload is not an HL7 v2 message: {exc}")
        if not expected:
            return Reject("payload has no MSH-10 control id, so no ACK could be matched to it")
        async with self._slots:
            if self._closed:
                return Retry(f"destination {self.name} is closed")
            link = self._take_idle()
            if link is None:
                opened = await self._connect()
                if isinstance(opened, Retry):
                    return opened
                link = opened
            keep = False
            try:
                outcome, keep = await self._exchange(link, payload, expected)
                return outcome
            finally:
                # Cancellation and every untrusted outcome land here with keep False.
                if keep and not self._closed:
                    self._idle.append(link)
                else:
                    self._drop(link)

    async def close(self) -> None:
        self._closed = True
        links = list(self._links)
        self._idle.clear()
        for link in links:
            self._drop(link)
        await asyncio.gather(*(link.closed for link in links))

    def _take_idle(self) -> _Link | None:
        while self._idle:
            link = self._idle.pop()
            if link.reusable():
                return link
            log.debug("mllp %s: idle connection to %s is gone or out of sync", self.name, self.peer)
            self._drop(link)
        return None

    def _drop(self, link: _Link) -> None:
        link.abort()
        self._links.discard(link)

    async def _connect(self) -> _Link | Retry:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.tls is None:
                    _, link = await loop.create_connection(
                        lambda: _Link(self.max_ack_bytes), self.host, self.port
                    )
                else:
                    _, link = await loop.create_connection(
                        lambda: _Link(self.max_ack_bytes), self.host, self.port,
                        ssl=self.tls, server_hostname=self.host,
                        ssl_handshake_timeout=self.connect_timeout,
                    )
        except TimeoutError:
            return Retry(f"could not connect to {self.peer} within {self.connect_timeout:g} s")
        except ConnectionRefusedError:
            return Retry(f"connection refused by {self.peer}")
        except ssl.SSLCertVerificationError:
            return Retry(refused(self.peer))
        except ssl.SSLError:
            return Retry(handshake_failed(self.peer))
        except OSError as exc:
            return Retry(f"could not connect to {self.peer}: {exc}")
        self.connects += 1
        self._links.add(link)
        return link

    async def _exchange(self, link: _Link, payload: bytes, expected: str) -> tuple[Outcome, bool]:
        """One message out, one ACK in. Returns the outcome and whether the connection is still
        in step (safe to reuse)."""
        if not link.send(frame(payload)):
            return Retry(f"connection to {self.peer} closed before the message was sent"), False
        try:
            async with asyncio.timeout(self.ack_timeout):
                event = await link.next_event()
        except TimeoutError:
            return Retry(f"no ACK from {self.peer} within {self.ack_timeout:g} s"), False
        if event is None:
            how = "reset" if link.reset else "closed"
            return Retry(f"connection to {self.peer} {how} before an ACK arrived"), False
        if isinstance(event, Oversized):
            limit = self.max_ack_bytes
            return Retry(f"ACK from {self.peer} exceeds max_ack_bytes ({limit})"), False
        if isinstance(event, Truncated):
            return Retry(f"connection to {self.peer} closed in the middle of an ACK"), False
        ack = event.payload
        info = _read_ack(ack)
        if info is None:
            return Retry(f"unparseable ACK from {self.peer}", response=ack), False
        code = info.code.strip().upper()
        acked = info.acked_control_id.strip()
        if acked != expected.strip():
            reason = (
                f"ACK from {self.peer} is for another message "
                f"(MSA-2 {acked!r}, sent MSH-10 {expected!r}); connection closed"
            )
            return Retry(reason, code=code, response=ack), False
        if code in _SENT_CODES:
            return Sent(code=code, response=ack), True
        reason = _describe(code, self.peer, info)
        if code in _REJECT_CODES:
            return Reject(reason, code=code, response=ack), True
        if code not in _RETRY_CODES:
            reason = f"unknown ACK code {code!r} from {self.peer}"
        return Retry(reason, code=code, response=ack), True


def _read_ack(ack: bytes) -> AckInfo | None:
    """Decode the ACK with the charset its own MSH-18 names, then parse it; None if it is not
    an ACK we can read."""
    try:
        _, text, _ = decode_message(ack)
        return parse_ack(text)
    except (Er7Error, LookupError):
        return None


def _control_id(payload: bytes) -> str:
    """MSH-10 of the payload, decoded with its own charset when it is not plain ASCII (the
    ACK's MSA-2 is compared after decoding, so both sides must be read the same way)."""
    control_id = peek_header(payload).control_id
    if control_id.isascii():
        return control_id
    return decode_message(payload)[0].control_id


def _describe(code: str, peer: str, info: AckInfo) -> str:
    # The code only: an EHR's MSA-3 and ERR texts may quote the patient, and reasons go to
    # logs and alerts. The whole ACK is kept with the attempt (`response`) for `engine show`.
    return f"{code} from {peer}" + (" (see the ACK's ERR)" if info.errors or info.text else "")


_IDLE_SKIPPABLE = b"\r\n\t "


class _Link(asyncio.Protocol):
    """One TCP connection: feeds received bytes to the sans-IO framer and hands the events to
    the one send waiting on it."""

    def __init__(self, max_ack_bytes: int) -> None:
        self._framer = Framer(max_size=max_ack_bytes)
        self._events: deque[Event] = deque()
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._expecting = False
        self._lost = False
        self.reset = False
        # Non-blank bytes that arrived while no send was waiting: the stream is out of step.
        self._stray = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._expecting and data.strip(_IDLE_SKIPPABLE):
            self._stray = True
        self._events.extend(self._framer.feed(data))
        self._wake()

    def eof_received(self) -> bool | None:
        self._events.extend(self._framer.eof())
        self._lost = True
        self._wake()
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.reset = self.reset or exc is not None
        self._wake()
        if not self.closed.done():
            self.closed.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def send(self, data: bytes) -> bool:
        """Write one framed message; False if the connection is already going away (a peer
        may close right after accepting, before we write)."""
        transport = self._transport
        if transport is None or transport.is_closing() or self._lost:
            return False
        self._expecting = True
        try:
            transport.write(data)
        except (OSError, RuntimeError):  # uvloop raises on a transport closed under us
            return False
        return True

    async def next_event(self) -> Event | None:
        """The next framing event, or None once the connection is gone with nothing pending."""
        try:
            while not self._events:
                if self._lost:
                    return None
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter
            return self._events.popleft()
        finally:
            self._waiter = None
            self._expecting = False

    def reusable(self) -> bool:
        transport = self._transport
        if transport is None or transport.is_closing() or self._lost:
            return False
        if self._stray or self._events:
            return False
        return not _kernel_readable(transport)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        elif not self.closed.done():
            self.closed.set_result(None)


def _kernel_readable(transport: asyncio.Transport) -> bool:
    """Whether an idle connection has unread bytes or a FIN/RST queued in the kernel that the
    event loop has not delivered yet. Checked before reuse so that a peer that restarted or
    timed the connection out costs a reconnect, not a failed attempt."""
    sock = transport.get_extra_info("socket")
    if sock is None or not hasattr(select, "poll"):
        return False
    with contextlib.suppress(OSError, ValueError):
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    return True
