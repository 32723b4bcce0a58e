"""The fake EHR seen from a raw MLLP client: its answers per mode, charsets, stop, waiting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from engine.protocol.ack import parse_ack
from engine.protocol.er7 import peek_header
from engine.protocol.mllp import Frame, Framer, frame
from engine.testing.fake_ehr import FakeEhr, format_message, run
from tests.unit.destinations.samples import siu


class Client:
    """A bare MLLP client: write frames, read whole frames back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.framer = Framer()
        self.pending: list[bytes] = []

    async def send(self, *payloads: bytes) -> None:
        self.writer.write(b"".join(frame(p) for p in payloads))
        await self.writer.drain()

    async def read(self) -> bytes | None:
        """The next frame, or None at EOF."""
        async with asyncio.timeout(5):
            while not self.pending:
                data = await self.reader.read(65536)
                if not data:
                    return None
                self.pending += [e.payload for e in self.framer.feed(data) if isinstance(e, Frame)]
        return self.pending.pop(0)


@asynccontextmanager
async def client(ehr: FakeEhr) -> AsyncIterator[Client]:
    reader, writer = await asyncio.open_connection("127.0.0.1", ehr.port)
    try:
        yield Client(reader, writer)
    finally:
        writer.transport.abort()


def msa(ack: bytes | None, codec: str = "utf-8") -> tuple[str, str, str]:
    assert ack is not None
    info = parse_ack(ack.decode(codec))
    return info.code, info.acked_control_id, info.text


@pytest.mark.parametrize(
    ("mode", "code"), [("aa", "AA"), ("ae", "AE"), ("ar", "AR")]
)
async def test_answers_each_message_with_a_real_ack(mode: str, code: str) -> None:
    seen: list[bytes] = []
    async with FakeEhr(mode=mode, on_message=seen.append) as ehr, client(ehr) as c:
        await c.send(siu("MSG0001"))
        ack = await c.read()
    assert msa(ack)[:2] == (code, "MSG0001")
    assert ack is not None
    header = peek_header(ack)
    assert header.message_type == "ACK"
    assert header.control_id.startswith("FAKEACK")
    assert (header.sending_application, header.receiving_application) == (
        "CLINIC_EHR",
        "SCHEDAPP",
    )
    assert ehr.received == seen == [siu("MSG0001")]


async def test_pipelined_messages_are_answered_in_order_on_their_connection() -> None:
    async with FakeEhr() as ehr, client(ehr) as a, client(ehr) as b:
        await a.send(siu("A1"), siu("A2"))
        await b.send(siu("B1"))
        answers_a = [msa(await a.read())[1], msa(await a.read())[1]]
        answers_b = [msa(await b.read())[1]]
        await ehr.wait_for(3)
    assert answers_a == ["A1", "A2"]
    assert answers_b == ["B1"]
    assert ehr.accepted == 2


async def test_wrong_id_answers_aa_for_another_control_id() -> None:
    async with FakeEhr(mode="wrong-id") as ehr, client(ehr) as c:
        await c.send(siu("MSG0001"))
        assert msa(await c.read())[:2] == ("AA", "NOT-MSG0001")


async def test_timeout_records_but_never_answers() -> None:
    async with FakeEhr(mode="timeout") as ehr, client(ehr) as c:
        await c.send(siu("MSG0001"))
        assert await ehr.wait_for(1) == [siu("MSG0001")]
        ehr.mode = "aa"
        await c.send(siu("MSG0002"))
        # The first frame back answers the second message: the first one got nothing.
        assert msa(await c.read())[1] == "MSG0002"


async def test_drop_closes_the_connection_and_does_not_count_the_message() -> None:
    async with FakeEhr(mode="drop") as ehr, client(ehr) as c:
        await c.send(siu("MSG0001"))
        assert await c.read() is None
        await ehr.wait_until(lambda: ehr.open_connections == 0)
    assert ehr.received == []
    assert ehr.dropped == 1


async def test_script_is_used_one_per_message_before_mode() -> None:
    async with FakeEhr(mode="aa") as ehr, client(ehr) as c:
        ehr.script = ["ar", "ae"]
        await c.send(siu("M1"), siu("M2"), siu("M3"))
        codes = [msa(await c.read())[0] for _ in range(3)]
    assert codes == ["AR", "AE", "AA"]
    assert ehr.script == []


async def test_ack_is_encoded_in_the_message_charset() -> None:
    payload = siu("MSG0001", charset="8859/1", facility="KLINIK_MÜNCHEN")
    async with FakeEhr() as ehr, client(ehr) as c:
        await c.send(payload)
        ack = await c.read()
    assert ack is not None
    assert "KLINIK_MÜNCHEN".encode("latin-1") in ack
    assert msa(ack, "latin-1")[:2] == ("AA", "MSG0001")


async def test_not_hl7_is_recorded_and_answered_ar() -> None:
    async with FakeEhr() as ehr, client(ehr) as c:
        await c.send(b"hello")
        code, _, text = msa(await c.read())
    assert code == "AR"
    assert text == "fake EHR: not an HL7 v2 message"
    assert ehr.received == [b"hello"]


async def test_stop_closes_the_listener_and_every_connection() -> None:
    ehr = FakeEhr()
    await ehr.start()
    async with client(ehr) as c:
        await ehr.wait_until(lambda: ehr.open_connections == 1)
        await ehr.stop()
        assert await c.read() is None
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", ehr.port)


async def test_wait_for_times_out_with_what_it_got() -> None:
    async with FakeEhr() as ehr:
        with pytest.raises(TimeoutError, match=r"expected 1 messages within 0\.05 s, got 0"):
            await ehr.wait_for(1, timeout=0.05)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fake EHR mode"):
        FakeEhr(mode="maybe")
    ehr = FakeEhr()
    with pytest.raises(ValueError):
        ehr.mode = "AA"


def test_format_message_shows_id_type_and_segments() -> None:
    lines = format_message(siu("MSG0001").replace(b"\r", b"\n")).splitlines()
    assert lines[0] == "control id MSG0001  type SIU^S12"
    assert [line[2:5] for line in lines[1:]] == ["MSH", "SCH", "PID", "RGS", "AIP"]
    assert format_message(b"\x00\x01") == "not an HL7 v2 message (2 bytes)"


async def test_run_announces_and_prints_each_message() -> None:
    out: list[str] = []
    announced = asyncio.Event()

    def write(text: str) -> None:
        out.append(text)
        announced.set()

    task = asyncio.create_task(run(0, write=write))
    async with asyncio.timeout(5):
        await announced.wait()
    port = int(out[0].split(":")[1].split()[0])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    c = Client(reader, writer)
    await c.send(siu("MSG0001"))
    assert msa(await c.read())[0] == "AA"
    writer.transport.abort()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert out[0] == f"fake EHR listening on 127.0.0.1:{port} (mode aa)"
    assert out[1].startswith("control id MSG0001  type SIU^S12\n  MSH|")
