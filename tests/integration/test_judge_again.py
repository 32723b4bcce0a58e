"""A version judged while another process committed a version of the same appointment is
judged again, over MLLP and over HTTP: the store refuses the first commit (StaleJudgement)
and the second one, judged against the newer state, is what gets stored and answered."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from engine.config import load
from engine.runtime.engine import Engine
from engine.store.base import Ingest, Ingested, StaleJudgement
from engine.store.sqlite import SqliteStore
from engine.testing.mllp_client import MllpClient
from tests.integration.conftest import ack_code, free_port, sample
from tests.integration.fhir_support import (
    FhirClient,
    appointment,
    archive_channel,
    write_fhir_config,
)

SIU_TYPES = ["SIU^S12", "SIU^S13", "SIU^S14", "SIU^S15", "SIU^S17", "SIU^S26"]


class Overtaken(SqliteStore):
    """Before the first ingest that carries an appointment, another writer (a CLI replay in
    real life) commits a version of the same appointment."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.refused = 0
        self._done = False

    async def ingest(self, item: Ingest) -> Ingested:
        if item.appointment is not None and not self._done:
            self._done = True
            competing = dataclasses.replace(
                item,
                message=dataclasses.replace(item.message, listener="replay"),
                results=(),
                deliveries=(),
                appointment=dataclasses.replace(item.appointment, base_version=None,
                                                resource=b'{"competing":true}'),
            )
            await super().ingest(competing)
        try:
            return await super().ingest(item)
        except StaleJudgement:
            self.refused += 1
            raise


@asynccontextmanager
async def engine_on(routes: Path) -> AsyncIterator[Engine]:
    config = load(routes)
    store = Overtaken(Path(config.store.removeprefix("sqlite:")))
    engine = Engine(config, store=store)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


async def test_mllp_intake_judges_again(tmp_path: Path) -> None:
    http, mllp = free_port(), free_port()
    channel = {"accept": {"type": SIU_TYPES}, "steps": [{"convert": "siu_to_fhir"}],
               "destinations": {"archive": {"file": {"directory": str(tmp_path / "out")}}}}
    routes = write_fhir_config(tmp_path / "cfg", http, {"feed-archive": channel},
                               routes={"feed": ["feed-archive"], "api": ["feed-archive"]},
                               mllp_port=mllp)
    async with engine_on(routes) as engine:
        async with await MllpClient.connect("127.0.0.1", mllp) as client:
            ack = await client.send(sample("siu_s12_new_patient.hl7"))
        assert ack_code(ack) == "AA"
        store = engine.store
        assert isinstance(store, Overtaken) and store.refused == 1
        row = await store.appointment("urn:engine:v2-namespace:EPIC|APT1001")
        assert row is not None and row.version == 2  # judged again against the competing one
        history = await store.appointment_history(row.key)
        assert [(v.version, v.disposition) for v in history] == [(1, "current"), (2, "current")]


async def test_fhir_intake_judges_again(tmp_path: Path) -> None:
    port = free_port()
    routes = write_fhir_config(tmp_path / "cfg", port, {"to-ehr": archive_channel(tmp_path)})
    async with engine_on(routes) as engine, aiohttp.ClientSession() as session:
        client = FhirClient(session, f"http://127.0.0.1:{port}/fhir")
        status, headers, body = await client.post("/Appointment", appointment())
        assert status == 200  # the competing writer created it first: this is version 2
        assert headers["ETag"] == 'W/"2"' and body["status"] == "booked"
        store = engine.store
        assert isinstance(store, Overtaken) and store.refused == 1
