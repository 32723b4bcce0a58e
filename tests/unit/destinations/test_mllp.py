"""The MLLP destination against the fake EHR in every mode, and against raw servers that
misbehave in ways the fake never does (garbage, wrong ids, split or oversized ACKs)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest

from engine.destinations import mllp as mllp_module
from engine.destinations.base import DeliveryMeta, Reject, Retry, Sent
from engine.destinations.mllp import MllpDestination
from engine.protocol.ack import build_ack, parse_ack
from engine.protocol.er7 import peek_header
from engine.protocol.mllp import Frame, Framer, frame
from engine.testing.fake_ehr import FakeEhr
from tests.unit.destinations.samples import siu

META = DeliveryMeta(delivery_id=1, message_id=1, channel="siu-to-clinic")
_NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def dest(port: int, **kw: float) -> MllpDestination:
    return MllpDestination("clinic-ehr", host="127.0.0.1", port=port, **kw)  # type: ignore[arg-type]


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[int]:
    """A bare asyncio server running `handler` per connection; yields its port."""
    tasks: set[asyncio.Task[None]] = set()
    writers: set[asyncio.StreamWriter] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        writers.add(writer)
        try:
            await handler(reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()  # handlers then see EOF and return
        if tasks:
            await asyncio.wait(tasks)
        await server.wait_closed()


async def read_frame(reader: asyncio.StreamReader, framer: Framer) -> bytes | None:
    while data := await reader.read(65536):
        for event in framer.feed(data):
            if isinstance(event, Frame):
                return event.payload
    return None


def ack_for(payload: bytes, code: str = "AA", *, acked: str | None = None) -> bytes:
    header = peek_header(payload)
    text = build_ack(header, code, "", control_id="RAWACK1", now=_NOW)
    if acked is not None:
        text = text.replace(f"MSA|{code}|{header.control_id}", f"MSA|{code}|{acked}")
    return text.encode()


def acked_id(response: bytes) -> str:
    return parse_ack(response.decode()).acked_control_id


# --- against the fake EHR ---------------------------------------------------------------


async def test_aa_is_sent_with_the_ack() -> None:
    async with FakeEhr() as ehr:
        d = dest(ehr.port)
        outcome = await d.send(siu("MSG0001"), META)
        await d.close()
    assert isinstance(outcome, Sent)
    assert outcome.code == "AA"
    assert acked_id(outcome.response) == "MSG0001"
    assert ehr.received == [siu("MSG0001")]


async def test_ae_is_retry_with_code_and_text_and_keeps_the_connection() -> None:
    async with FakeEhr(mode="ae") as ehr:
        d = dest(ehr.port)
        first = await d.send(siu("MSG0001"), META)
        second = await d.send(siu("MSG0002"), META)
        await d.close()
    assert isinstance(first, Retry)
    assert first.code == "AE"
    assert f"AE from 127.0.0.1:{ehr.port}" in first.reason
    # the EHR's own words may quote the patient: kept in the response, never in the reason
    assert "application error" not in first.reason
    assert b"fake EHR: application error" in first.response
    assert acked_id(first.response) == "MSG0001"
    assert isinstance(second, Retry)
    assert ehr.accepted == 1  # an AE leaves the stream in step


async def test_ar_is_reject() -> None:
    async with FakeEhr(mode="ar") as ehr:
        d = dest(ehr.port)
        outcome = await d.send(siu("MSG0001"), META)
        await d.close()
    assert isinstance(outcome, Reject)
    assert outcome.code == "AR"
    assert "rejected" not in outcome.reason
    assert b"fake EHR: rejected" in outcome.response


async def test_timeout_is_retry_within_ack_timeout_and_the_connection_is_replaced() -> None:
    loop = asyncio.get_running_loop()
    async with FakeEhr(mode="timeout") as ehr:
        d = dest(ehr.port, ack_timeout=0.2)
        started = loop.time()
        outcome = await d.send(siu("MSG0001"), META)
        elapsed = loop.time() - started
        assert isinstance(outcome, Retry)
        assert outcome.reason == f"no ACK from 127.0.0.1:{ehr.port} within 0.2 s"
        assert 0.19 <= elapsed < 2.0  # uvloop clocks in whole milliseconds
        # The silent connection is closed: a late ACK on it must never be read as the next's.
        await ehr.wait_until(lambda: ehr.open_connections == 0)
        ehr.mode = "aa"
        again = await d.send(siu("MSG0002"), META)
        await d.close()
    assert isinstance(again, Sent)
    assert acked_id(again.response) == "MSG0002"
    assert ehr.accepted == 2


async def test_drop_is_retry() -> None:
    async with FakeEhr(mode="drop") as ehr:
        d = dest(ehr.port)
        outcome = await d.send(siu("MSG0001"), META)
        await d.close()
    assert isinstance(outcome, Retry)
    assert outcome.reason == f"connection to 127.0.0.1:{ehr.port} closed before an ACK arrived"
    assert ehr.dropped == 1
    assert ehr.received == []


async def test_wrong_id_is_retry_never_sent_and_the_connection_is_replaced() -> None:
    async with FakeEhr(mode="wrong-id") as ehr:
        d = dest(ehr.port)
        outcome = await d.send(siu("MSG0001"), META)
        ehr.mode = "aa"
        again = await d.send(siu("MSG0002"), META)
        await d.close()
    assert isinstance(outcome, Retry)
    assert "for another message" in outcome.reason
    assert "'NOT-MSG0001'" in outcome.reason
    assert isinstance(again, Sent)
    assert ehr.accepted == 2


async def test_script_modes_apply_one_per_message() -> None:
    async with FakeEhr() as ehr:
        ehr.script = ["ae", "ar"]
        d = dest(ehr.port)
        outcomes = [await d.send(siu(f"MSG000{i}"), META) for i in range(3)]
        await d.close()
    assert [type(o) for o in outcomes] == [Retry, Reject, Sent]


async def test_the_connection_is_reused_across_sends() -> None:
    async with FakeEhr() as ehr:
        d = dest(ehr.port)
        outcomes = [await d.send(siu(f"MSG{i:04d}"), META) for i in range(5)]
        await d.close()
        await ehr.wait_until(lambda: ehr.open_connections == 0)
    assert all(isinstance(o, Sent) for o in outcomes)
    assert ehr.accepted == 1
    assert d.connects == 1


async def test_reconnects_after_the_ehr_restarts_on_the_same_port() -> None:
    first = FakeEhr()
    await first.start()
    d = dest(first.port)
    assert isinstance(await d.send(siu("MSG0001"), META), Sent)
    await first.stop()
    async with FakeEhr(port=first.port) as second:
        # The idle connection died with the old EHR; it is replaced before use, not failed on.
        outcome = await d.send(siu("MSG0002"), META)
        await d.close()
    assert isinstance(outcome, Sent)
    assert second.received == [siu("MSG0002")]
    assert d.connects == 2


async def test_ehr_down_is_a_quick_retry() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loop = asyncio.get_running_loop()
    d = dest(port, connect_timeout=5.0)
    started = loop.time()
    outcome = await d.send(siu("MSG0001"), META)
    await d.close()
    assert isinstance(outcome, Retry)
    assert outcome.reason == f"connection refused by 127.0.0.1:{port}"
    assert loop.time() - started < 2.0


async def test_concurrent_sends_use_the_pool_and_each_gets_its_own_ack() -> None:
    async with FakeEhr() as ehr:
        d = dest(ehr.port, connections=4)
        assert d.concurrency == 4
        ids = [f"MSG{i:04d}" for i in range(20)]
        outcomes = await asyncio.gather(*(d.send(siu(i), META) for i in ids))
        await d.close()
    assert all(isinstance(o, Sent) for o in outcomes)
    assert [acked_id(o.response) for o in outcomes] == ids
    assert ehr.accepted == 4
    assert sorted(ehr.received) == sorted(siu(i) for i in ids)


async def test_ack_in_the_message_charset_is_decoded_with_it() -> None:
    payload = siu("MSG0001", charset="8859/1", facility="KLINIK_MÜNCHEN")
    async with FakeEhr() as ehr:
        d = dest(ehr.port)
        outcome = await d.send(payload, META)
        await d.close()
    assert isinstance(outcome, Sent)
    assert "KLINIK_MÜNCHEN".encode("latin-1") in outcome.response


async def test_close_closes_every_connection_and_later_sends_retry() -> None:
    async with FakeEhr() as ehr:
        d = dest(ehr.port, connections=2)
        await asyncio.gather(d.send(siu("MSG0001"), META), d.send(siu("MSG0002"), META))
        assert ehr.open_connections == 2
        await d.close()
        await ehr.wait_until(lambda: ehr.open_connections == 0)
        outcome = await d.send(siu("MSG0003"), META)
    assert isinstance(outcome, Retry)
    assert "closed" in outcome.reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not hl7 at all", "payload is not an HL7 v2 message"),
        (siu(""), "payload has no MSH-10 control id"),
    ],
)
async def test_payload_that_no_ack_can_match_is_rejected(payload: bytes, reason: str) -> None:
    d = dest(9)  # never connects
    outcome = await d.send(payload, META)
    assert isinstance(outcome, Reject)
    assert outcome.reason.startswith(reason)
    assert d.connects == 0


# --- against raw servers ----------------------------------------------------------------


async def test_garbage_reply_is_retry_and_the_connection_is_closed() -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = Framer()
        while await read_frame(reader, framer) is not None:
            writer.write(frame(b"this is no ACK"))
        closed.set()

    async with raw_server(handler) as port:
        d = dest(port)
        outcome = await d.send(siu("MSG0001"), META)
        async with asyncio.timeout(5):
            await closed.wait()
        await d.close()
    assert isinstance(outcome, Retry)
    assert outcome.reason == f"unparseable ACK from 127.0.0.1:{port}"
    assert outcome.response == b"this is no ACK"


async def test_ack_for_another_message_is_retry_never_sent() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = Framer()
        while (payload := await read_frame(reader, framer)) is not None:
            writer.write(frame(ack_for(payload, acked="SOMEONE-ELSE")))

    async with raw_server(handler) as port:
        d = dest(port)
        outcomes = [await d.send(siu(f"MSG000{i}"), META) for i in range(3)]
        await d.close()
    assert all(isinstance(o, Retry) for o in outcomes)
    assert all("MSA-2 'SOMEONE-ELSE'" in o.reason for o in outcomes)  # type: ignore[union-attr]
    assert d.connects == 3


async def test_unsolicited_frame_after_the_ack_is_never_taken_for_the_next_ack() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = Framer()
        while (payload := await read_frame(reader, framer)) is not None:
            # The right ACK, then one for a message this client will send next.
            writer.write(frame(ack_for(payload)) + frame(ack_for(siu("MSG0002"))))

    async with raw_server(handler) as port:
        d = dest(port)
        first = await d.send(siu("MSG0001"), META)
        second = await d.send(siu("MSG0002"), META)
        await d.close()
    assert isinstance(first, Sent)
    assert isinstance(second, Sent)
    assert d.connects == 2  # the out-of-step connection was replaced, not read from


async def test_peer_that_closes_after_each_ack_costs_a_reconnect_not_a_failed_attempt() -> None:
    # The FIN is already in our kernel when the next send starts, but the loop has not read it
    # yet: only the pre-use check of the idle socket can see it.
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        payload = await read_frame(reader, Framer())
        assert payload is not None
        writer.write(frame(ack_for(payload)))
        writer.close()

    async with raw_server(handler) as port:
        d = dest(port)
        outcomes = [await d.send(siu(f"MSG000{i}"), META) for i in range(3)]
        await d.close()
    assert [type(o) for o in outcomes] == [Sent, Sent, Sent]
    assert d.connects == 3


async def test_peer_that_closes_on_accept_is_retry() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with raw_server(handler) as port:
        d = dest(port)
        outcome = await d.send(siu("MSG0001"), META)
        await d.close()
    assert isinstance(outcome, Retry)
    assert outcome.reason.startswith(f"connection to 127.0.0.1:{port} ")


async def test_ack_split_across_reads() -> None:
    fed: asyncio.Queue[bytes] = asyncio.Queue()

    class RecordingFramer(Framer):
        def feed(self, data: bytes) -> list[Frame]:  # type: ignore[override]
            fed.put_nowait(data)
            return super().feed(data)  # type: ignore[return-value]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        payload = await read_frame(reader, Framer())
        assert payload is not None
        wire = frame(ack_for(payload))
        # Start byte and half the ACK, the rest up to 0x1C, then the final 0x0D; each piece
        # only once the client has consumed the previous one, so the reads are really split.
        for piece in (wire[: len(wire) // 2], wire[len(wire) // 2 : -1], wire[-1:]):
            writer.write(piece)
            async with asyncio.timeout(5):
                assert await fed.get() == piece

    async with raw_server(handler) as port:
        d = dest(port)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(mllp_module, "Framer", RecordingFramer)
            outcome = await d.send(siu("MSG0001"), META)
        await d.close()
    assert isinstance(outcome, Sent)
    assert acked_id(outcome.response) == "MSG0001"


async def test_oversized_ack_is_retry() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        payload = await read_frame(reader, Framer())
        assert payload is not None
        writer.write(frame(ack_for(payload) + b"\rNTE|1||" + b"X" * 500))
        await reader.read()

    async with raw_server(handler) as port:
        d = dest(port, max_ack_bytes=200)
        outcome = await d.send(siu("MSG0001"), META)
        await d.close()
    assert isinstance(outcome, Retry)
    assert outcome.reason == f"ACK from 127.0.0.1:{port} exceeds max_ack_bytes (200)"


async def test_eof_in_the_middle_of_an_ack_is_retry() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        payload = await read_frame(reader, Framer())
        assert payload is not None
        writer.write(frame(ack_for(payload))[:20])
        await writer.drain()
        writer.close()

    async with raw_server(handler) as port:
        d = dest(port)
        outcome = await d.send(siu("MSG0001"), META)
        await d.close()
    assert isinstance(outcome, Retry)
    assert outcome.reason == f"connection to 127.0.0.1:{port} closed in the middle of an ACK"
