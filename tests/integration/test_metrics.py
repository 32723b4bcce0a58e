"""/metrics of a real engine: counters and histograms move as messages flow over real MLLP and
FHIR sockets into a real SQLite store and out to a fake EHR; the text parses with
prometheus_client's own parser; no label carries anything but configuration names."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from engine.runtime.engine import Engine
from engine.runtime.metrics import OUTCOMES
from engine.testing.fake_ehr import FakeEhr
from engine.testing.mllp_client import MllpClient
from tests.integration.conftest import (
    SAMPLES,
    VALID_SAMPLES,
    ack_code,
    channel,
    eventually,
    free_port,
    running,
    sample,
    write_config,
)
from tests.integration.fhir_support import (
    FhirClient,
    appointment,
    archive_channel,
    write_fhir_config,
)
from tests.integration.test_flow import with_fields
from tests.phi_scan import PhiMatcher, synthetic_phi

Labels = frozenset[tuple[str, str]]

# Every metric the README's "Metrics and health" lists, with its type.
DOCUMENTED = {
    "engine_messages_received": "counter",
    "engine_messages_processed": "counter",
    "engine_deliveries_sent": "counter",
    "engine_deliveries_failed": "counter",
    "engine_delivery_retries": "counter",
    "engine_ack_latency_seconds": "histogram",
    "engine_delivery_latency_seconds": "histogram",
    "engine_store_commit_seconds": "histogram",
    "engine_queue_depth": "gauge",
    "engine_listener_connections": "gauge",
}


class Scrape:
    """One rendering of an engine's metrics, read back with prometheus_client's parser."""

    def __init__(self, engine: Engine) -> None:
        body, self.content_type = engine.metrics.render()
        self.text = body.decode("utf-8")
        self.types: dict[str, str] = {}
        self.values: dict[tuple[str, Labels], float] = {}
        for family in text_string_to_metric_families(self.text):
            self.types[family.name] = family.type
            for s in family.samples:
                self.values[(s.name, frozenset(s.labels.items()))] = s.value

    def __call__(self, name: str, **labels: str) -> float:
        return self.values[(name, frozenset(labels.items()))]

    def label_values(self) -> set[str]:
        return {v for (_, labels) in self.values for k, v in labels if k != "le"}


async def until(engine: Engine, what: str, check: Iterable[tuple[str, dict[str, str], float]]
                ) -> Scrape:  # fmt: skip
    """Scrape until every (sample, labels) has its value (deliveries finish after the ACK)."""
    expected = list(check)
    scrape = Scrape(engine)

    async def reached() -> bool:
        nonlocal scrape
        scrape = Scrape(engine)
        return all(scrape.values.get((n, frozenset(lb.items()))) == v for n, lb, v in expected)

    await eventually(reached, what=what)
    return scrape


async def test_mllp_flow_moves_received_processed_delivered_and_latencies(
    tmp_path: Path,
) -> None:
    listen, ehr_port = free_port(), free_port()
    routes = write_config(tmp_path, listen, {"to-ehr": channel(ehr_port)})
    base = sample("siu_s12_new_patient.hl7")
    errored = with_fields(base, AIP_3_1="P9999", MSH_10="METRICS-ERR-1")  # unknown provider
    filtered = with_fields(base, SCH_25_1="Pending", MSH_10="METRICS-FLT-1")
    n = len(VALID_SAMPLES)
    async with FakeEhr(port=ehr_port) as ehr, running(routes) as engine:
        before = Scrape(engine)
        assert before("engine_messages_received_total", listener="feed") == 0
        for outcome in OUTCOMES.values():  # every series exists from the start
            assert before("engine_messages_processed_total", channel="to-ehr",
                          outcome=outcome) == 0  # fmt: skip
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            for path in VALID_SAMPLES:
                assert ack_code(await client.send(path.read_bytes())) == "AA"
            assert ack_code(await client.send(errored)) == "AE"
            assert ack_code(await client.send(filtered)) == "AA"
            open_now = Scrape(engine)
            assert open_now("engine_listener_connections", listener="feed") == 1
        await ehr.wait_for(n)
        dest = {"channel": "to-ehr", "destination": "clinic-ehr"}
        scrape = await until(engine, "every delivery sent", [
            ("engine_deliveries_sent_total", dest, n),
            ("engine_queue_depth", {"destination": "clinic-ehr"}, 0),
            ("engine_listener_connections", {"listener": "feed"}, 0),
        ])  # fmt: skip
    assert scrape.content_type.startswith("text/plain; version=0.0.4")
    feed = {"listener": "feed"}
    assert scrape("engine_messages_received_total", **feed) == n + 2
    assert scrape("engine_ack_latency_seconds_count", **feed) == n + 2
    assert 0 < scrape("engine_ack_latency_seconds_sum", **feed) < 10 * (n + 2)
    processed = {o: scrape("engine_messages_processed_total", channel="to-ehr", outcome=o)
                 for o in OUTCOMES.values()}  # fmt: skip
    assert processed == {"accepted": n, "filtered": 1, "error": 1}
    assert scrape("engine_delivery_latency_seconds_count", **dest) == n
    assert scrape("engine_delivery_latency_seconds_sum", **dest) > 0
    assert scrape("engine_deliveries_failed_total", **dest) == 0
    assert scrape("engine_delivery_retries_total", **dest) == 0
    # Every commit is timed: at least one per message (the ingest) is in the histogram.
    assert scrape("engine_store_commit_seconds_count") >= 1
    assert scrape("engine_store_commit_seconds_sum") > 0
    assert scrape("engine_store_commit_seconds_bucket", le="+Inf") == scrape(
        "engine_store_commit_seconds_count"
    )
    assert {name: scrape.types[name] for name in DOCUMENTED} == DOCUMENTED


async def test_no_label_holds_a_message_value(tmp_path: Path) -> None:
    """Every sample's PHI goes through; the rendered text holds none of it, and every label
    value is a configuration name or an outcome word."""
    listen, ehr_port = free_port(), free_port()
    routes = write_config(tmp_path, listen, {"to-ehr": channel(ehr_port)})
    matcher = PhiMatcher(synthetic_phi(SAMPLES))
    async with FakeEhr(port=ehr_port) as ehr, running(routes) as engine:
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            for path in VALID_SAMPLES:
                await client.send(path.read_bytes())
        await ehr.wait_for(len(VALID_SAMPLES))
        scrape = Scrape(engine)
    # The matcher finds the samples' values (so an empty result below means something).
    assert matcher.find(VALID_SAMPLES[0].read_text("latin-1"))
    assert matcher.find(scrape.text) == []
    assert scrape.label_values() <= {"feed", "to-ehr", "clinic-ehr", *OUTCOMES.values()}


async def test_a_destination_that_refuses_counts_retries_and_failures(tmp_path: Path) -> None:
    listen, ehr_port = free_port(), free_port()
    routes = write_config(tmp_path, listen, {"to-ehr": channel(ehr_port)})  # 2 retries
    dest = {"channel": "to-ehr", "destination": "clinic-ehr"}
    first, second = VALID_SAMPLES[:2]
    async with (
        FakeEhr(port=ehr_port, mode="ae") as ehr,
        running(routes) as engine,
        await MllpClient.connect("127.0.0.1", listen) as client,
    ):
        await client.send(first.read_bytes())
        # AE: the first try and both retries fail, then the delivery is given up.
        await until(engine, "retries used up", [
            ("engine_delivery_retries_total", dest, 2),
            ("engine_deliveries_failed_total", dest, 1),
            ("engine_queue_depth", {"destination": "clinic-ehr"}, 0),
        ])  # fmt: skip
        ehr.mode = "ar"  # AR: failed at once, no retry
        await client.send(second.read_bytes())
        scrape = await until(engine, "rejected", [
            ("engine_deliveries_failed_total", dest, 2),
        ])  # fmt: skip
    assert len(ehr.received) == 4
    assert scrape("engine_delivery_retries_total", **dest) == 2
    assert scrape("engine_deliveries_sent_total", **dest) == 0
    assert scrape("engine_delivery_latency_seconds_count", **dest) == 0


async def test_queue_depth_holds_while_the_destination_is_down(tmp_path: Path) -> None:
    listen, ehr_port = free_port(), free_port()
    retry = {"attempts": 1000, "first": "50ms", "max": "100ms"}
    routes = write_config(tmp_path, listen, {"to-ehr": channel(ehr_port, retry=retry,
                                                               order_by=None)})  # fmt: skip
    dest = {"channel": "to-ehr", "destination": "clinic-ehr"}
    async with running(routes) as engine:
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            for path in VALID_SAMPLES[:3]:
                assert ack_code(await client.send(path.read_bytes())) == "AA"
        down = await until(engine, "deliveries waiting", [
            ("engine_queue_depth", {"destination": "clinic-ehr"}, 3),
        ])  # fmt: skip
        await eventually(lambda: _more_retries(engine, dest), what="retries counted")
        assert down("engine_deliveries_sent_total", **dest) == 0
        async with FakeEhr(port=ehr_port) as ehr:
            up = await until(engine, "sent once the EHR is back", [
                ("engine_deliveries_sent_total", dest, 3),
                ("engine_queue_depth", {"destination": "clinic-ehr"}, 0),
            ])  # fmt: skip
            assert len(ehr.received) == 3
    # Queued to sent includes the wait for the EHR: at least the first retry's delay.
    assert up("engine_delivery_latency_seconds_count", **dest) == 3
    assert up("engine_delivery_latency_seconds_sum", **dest) >= 3 * 0.04
    assert up("engine_deliveries_failed_total", **dest) == 0


async def _more_retries(engine: Engine, dest: dict[str, str]) -> bool:
    return Scrape(engine)("engine_delivery_retries_total", **dest) >= 2


async def test_fhir_requests_are_received_processed_and_timed(tmp_path: Path) -> None:
    port = free_port()
    archive = tmp_path / "archive"
    routes = write_fhir_config(tmp_path, port, {"to-file": archive_channel(archive)})
    async with running(routes) as engine, aiohttp.ClientSession() as session:
        client = FhirClient(session, f"http://127.0.0.1:{port}/fhir")
        status, _, _ = await client.post("/Appointment", appointment())
        assert status == 201
        status, _, _ = await client.post("/Appointment", appointment(status="not-a-status"))
        assert status in (400, 422)
        status, _, _ = await client.get("/metadata")  # not a message
        assert status == 200
        dest = {"channel": "to-file", "destination": "archive"}
        scrape = await until(engine, "the archive file written", [
            ("engine_deliveries_sent_total", dest, 1),
        ])  # fmt: skip
    api = {"listener": "api"}
    assert scrape("engine_messages_received_total", **api) == 2
    assert scrape("engine_ack_latency_seconds_count", **api) == 2
    assert scrape("engine_messages_processed_total", channel="to-file", outcome="accepted") == 1
    assert scrape("engine_messages_processed_total", channel="to-file", outcome="error") == 0
