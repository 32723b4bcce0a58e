"""Starting and stopping without losing or doubling anything: one engine per store, sends in
flight finish on stop, the retry budget survives a restart, an unrecorded attempt is recorded
again."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine.config import load
from engine.protocol.ack import build_ack
from engine.protocol.er7 import peek_header
from engine.protocol.mllp import Frame, Framer, frame
from engine.runtime.engine import Engine
from engine.runtime.instance_lock import AlreadyRunning
from engine.store.base import Attempt
from engine.testing.fake_ehr import FakeEhr
from engine.testing.mllp_client import MllpClient
from tests.integration.conftest import (
    ack_code,
    channel,
    deliveries_of,
    eventually,
    free_port,
    running,
    sample,
    write_config,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


async def test_a_second_engine_on_the_same_store_is_refused(tmp_path: Path) -> None:
    listen, ehr_port = free_port(), free_port()
    routes = write_config(tmp_path, listen, {"to-ehr": channel(ehr_port)})
    async with FakeEhr(port=ehr_port) as ehr, running(routes):
        second = Engine(load(routes))
        with pytest.raises(AlreadyRunning, match="already running"):
            await second.start()
        # the first one is untouched and still delivers
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            assert ack_code(await client.send(sample("siu_s12_new_patient.hl7"))) == "AA"
        await ehr.wait_for(1)
    async with running(routes):  # and the lock is free again once it stopped
        pass


async def test_a_send_in_flight_when_the_engine_stops_is_recorded_as_sent(
    tmp_path: Path,
) -> None:
    listen, ehr_port = free_port(), free_port()
    routes = write_config(tmp_path, listen, {"to-ehr": channel(ehr_port)})
    received, answer = asyncio.Event(), asyncio.Event()

    async def slow_ehr(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = Framer()
        while data := await reader.read(65536):
            for event in framer.feed(data):
                if isinstance(event, Frame):
                    received.set()
                    await answer.wait()  # the engine is stopping meanwhile
                    header = peek_header(event.payload)
                    ack = build_ack(header, "AA", "", control_id="E1", now=NOW)
                    writer.write(frame(ack.encode()))
                    await writer.drain()

    server = await asyncio.start_server(slow_ehr, "127.0.0.1", ehr_port)
    async with server:
        engine = Engine(load(routes), poll_interval=0.05)
        await engine.start()
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            assert ack_code(await client.send(sample("siu_s12_new_patient.hl7"))) == "AA"
        await asyncio.wait_for(received.wait(), 10)
        stopping = asyncio.create_task(engine.stop())
        runner = engine.dispatcher.runners["clinic-ehr"]

        async def lanes_stopping() -> bool:
            return runner.stopping

        await eventually(lanes_stopping, what="the lanes to be told to stop")
        answer.set()  # the EHR answers only now, while the send is in flight
        await asyncio.wait_for(stopping, 15)
    async with running(routes) as engine:
        (delivery,) = await deliveries_of(engine)
        assert (delivery.status, delivery.attempts) == ("sent", 1)


async def test_the_retry_budget_survives_a_restart(tmp_path: Path) -> None:
    listen, ehr_port = free_port(), free_port()
    # Waits long enough that the first engine stops after one failure, not at the end.
    retry = {"attempts": 2, "first": "300ms", "max": "300ms", "factor": 1, "jitter": 0}
    routes = write_config(tmp_path, listen, {"to-ehr": channel(ehr_port, retry=retry)})
    async with running(routes) as engine:
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            assert ack_code(await client.send(sample("siu_s12_new_patient.hl7"))) == "AA"

        async def tried() -> bool:
            return any(d.attempts for d in await deliveries_of(engine))

        await eventually(tried, what="a first failed attempt")
    async with running(routes) as engine:

        async def failed() -> bool:
            return all(d.status == "failed" for d in await deliveries_of(engine))

        await eventually(failed, what="the delivery to fail")
        (delivery,) = await deliveries_of(engine)
        assert delivery.attempts == 3  # the first try and 2 retries in all, not per start


async def test_an_attempt_that_could_not_be_recorded_is_recorded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listen, ehr_port = free_port(), free_port()
    routes = write_config(tmp_path, listen, {"to-ehr": channel(ehr_port)})
    async with FakeEhr(port=ehr_port) as ehr, running(routes) as engine:
        real = engine.store.record_attempt
        failures = []

        async def busy_once(attempt: Attempt) -> None:
            if not failures:
                failures.append(attempt)
                raise OSError("database is locked")
            await real(attempt)

        monkeypatch.setattr(engine.store, "record_attempt", busy_once)
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            assert ack_code(await client.send(sample("siu_s12_new_patient.hl7"))) == "AA"
        await ehr.wait_for(1)

        async def sent() -> bool:
            return [d.status for d in await deliveries_of(engine)] == ["sent"]

        await eventually(sent, what="the attempt to be recorded on the second try")
        assert len(failures) == 1
