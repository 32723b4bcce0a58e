"""Bad input gets a clear answer, is stored where it can be seen, and never costs another
message: garbage, unterminated frames, oversized messages, missing MSH-10, unknown types."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.protocol.mllp import frame
from engine.store.base import MessageFilter
from engine.testing.fake_ehr import FakeEhr
from engine.testing.mllp_client import MllpClient
from tests.integration.conftest import (
    ack_code,
    channel,
    eventually,
    free_port,
    running,
    sample,
    segment,
    write_config,
)

S12 = "siu_s12_new_patient.hl7"


def err_fields(ack: bytes) -> list[str]:
    (err,) = segment(ack, "ERR")
    return err.split("|")


def retyped(data: bytes, old: bytes, new: bytes) -> bytes:
    assert old in data
    return data.replace(old, new, 1)


def without_control_id(data: bytes) -> bytes:
    msh, rest = data.split(b"\r", 1)
    fields = msh.split(b"|")
    fields[9] = b""
    return b"|".join(fields) + b"\r" + rest


async def good_traffic(port: int, count: int) -> list[str]:
    """A well-behaved sender on its own connection, alongside the bad input."""
    base = sample(S12)
    codes = []
    async with await MllpClient.connect("127.0.0.1", port) as client:
        for i in range(count):
            data = base.replace(b"|MSG00001|", f"|GOOD{i:05d}|".encode(), 1)
            codes.append(ack_code(await client.send(data)))
    return codes


async def test_bad_input_is_answered_and_stored_while_good_traffic_flows(tmp_path: Path) -> None:
    listen, ehr_port = free_port(), free_port()
    routes = write_config(tmp_path, listen, {"to-ehr": channel(ehr_port)},
                          listener={"max_message_bytes": 4096})
    data = sample(S12)
    async with FakeEhr(port=ehr_port) as ehr, running(routes) as engine:
        good = asyncio.create_task(good_traffic(listen, 40))
        async with await MllpClient.connect("127.0.0.1", listen) as bad:
            # stray bytes between frames are skipped and counted
            bad.write(b"\n\n\x00junk")
            assert ack_code(await bad.send(data.replace(b"MSG00001", b"STRAY0001"))) == "AA"
            # garbage inside a frame: AR, nothing to echo in MSA-2
            ack = await bad.send(b"this is not HL7 at all")
            assert ack_code(ack) == "AR"
            assert segment(ack, "MSA")[0].split("|")[2] == ""
            assert err_fields(ack)[3].startswith("100^")
            # no MSH-10
            ack = await bad.send(without_control_id(data))
            assert ack_code(ack) == "AR"
            assert err_fields(ack)[2] == "MSH^1^10" and err_fields(ack)[3].startswith("101^")
            # a type no route accepts, and an event the channel does not take
            ack = await bad.send(retyped(data, b"SIU^S12^SIU_S12", b"ADT^A01^ADT_A01"))
            assert ack_code(ack) == "AR" and err_fields(ack)[3].startswith("200^")
            ack = await bad.send(retyped(data, b"SIU^S12^SIU_S12", b"SIU^S99^SIU_S12")
                                 .replace(b"MSG00001", b"EVT00001"))
            assert ack_code(ack) == "AR" and err_fields(ack)[3].startswith("201^")
            # an unknown charset
            ack = await bad.send(data.replace(b"|2.5.1", b"|2.5.1||||||NOT-A-CHARSET", 1)
                                 .replace(b"MSG00001", b"CHR00001"))
            assert ack_code(ack) == "AR"
            # oversized: AR echoing MSH-10, and the connection still works
            huge = data.replace(b"MSG00001", b"BIG00001") + b"NTE|1||" + b"x" * 10_000 + b"\r"
            ack = await bad.send(huge)
            assert ack_code(ack) == "AR"
            assert segment(ack, "MSA")[0].split("|")[2] == "BIG00001"
            assert "exceeds" in err_fields(ack)[8]
            assert ack_code(await bad.send(data.replace(b"MSG00001", b"AFTER0001"))) == "AA"
        # a frame without its end, then EOF
        async with await MllpClient.connect("127.0.0.1", listen) as cut:
            cut.write(b"\x0b" + data[:100])
        assert await good == ["AA"] * 40
        listener = engine.listeners["feed"]
        assert listener.stats.stray_bytes == 7
        assert listener.stats.oversized == 1

        async def truncated_counted() -> bool:
            return listener.stats.truncated == 1

        await eventually(truncated_counted, what="the cut frame to be counted")
        rejected = await engine.store.search(MessageFilter(status="rejected"))
        assert len(rejected) == 6  # each rejection is stored, to be seen and replayed
        assert all(r.error for r in rejected)
        await ehr.wait_for(42)  # 40 good + STRAY0001 + AFTER0001


async def test_idle_connections_are_closed_and_connection_limit_holds(tmp_path: Path) -> None:
    listen, ehr_port = free_port(), free_port()
    routes = write_config(tmp_path, listen, {"to-ehr": channel(ehr_port)},
                          listener={"idle_timeout": "300ms", "max_connections": 2})
    async with FakeEhr(port=ehr_port), running(routes) as engine:
        # A connection in use is served (its send comes right after connecting, well inside
        # the idle timeout), then left idle: only what happens next depends on time.
        first = await MllpClient.connect("127.0.0.1", listen)
        assert ack_code(await first.send(sample(S12))) == "AA"
        second = await MllpClient.connect("127.0.0.1", listen)
        third = await MllpClient.connect("127.0.0.1", listen)
        try:
            # the third is over the limit and is closed at once
            with pytest.raises((ConnectionError, OSError)):
                await third.send(sample(S12), timeout=5)
            # idle ones are closed by the engine: the peer sees the end of the stream
            with pytest.raises(ConnectionError):
                await second.read_frame(timeout=5)
        finally:
            for client in (first, second, third):
                await client.close()
        assert engine.listeners["feed"].stats.idle_closed >= 1
        assert engine.listeners["feed"].stats.refused == 1


async def test_many_concurrent_connections(tmp_path: Path) -> None:
    listen, ehr_port = free_port(), free_port()
    routes = write_config(tmp_path, listen, {"to-ehr": channel(ehr_port)})
    base = sample(S12)

    async def sender(n: int) -> list[str]:
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            return [
                ack_code(await client.send(base.replace(b"MSG00001", f"C{n:03d}M{i}".encode())))
                for i in range(5)
            ]

    async with FakeEhr(port=ehr_port) as ehr, running(routes):
        results = await asyncio.gather(*(sender(n) for n in range(100)))
        assert all(codes == ["AA"] * 5 for codes in results)
        await ehr.wait_for(500)


async def test_frames_split_at_every_byte_reach_the_engine_whole(tmp_path: Path) -> None:
    listen, ehr_port = free_port(), free_port()
    routes = write_config(tmp_path, listen, {"to-ehr": channel(ehr_port)})
    framed = frame(sample(S12)) + frame(sample("siu_s13_reschedule.hl7"))
    async with FakeEhr(port=ehr_port), running(routes) as engine:
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            for i in range(len(framed)):
                client.write(framed[i : i + 1])
                if i % 64 == 0:
                    await asyncio.sleep(0)  # let the bytes go out as separate segments
            first, second = await client.read_frame(), await client.read_frame()
        assert ack_code(first) == ack_code(second) == "AA"
        assert len(await engine.store.search(MessageFilter())) == 2
