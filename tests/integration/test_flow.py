"""The path of a message over real sockets and a real SQLite store: MLLP in → channel →
commit → ACK → MLLP out, with ACK policies, duplicates, retries and resumption."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import pytest

from engine.protocol.er7 import Message, peek_header
from engine.store.base import MessageFilter
from engine.testing.fake_ehr import FakeEhr
from engine.testing.mllp_client import MllpClient
from tests.integration.conftest import (
    VALID_SAMPLES,
    ack_code,
    channel,
    deliveries_of,
    eventually,
    free_port,
    running,
    sample,
    segment,
    write_config,
)


def with_fields(data: bytes, **fields: str) -> bytes:
    message = Message.parse(data.decode("utf-8"))
    for path, value in fields.items():
        message.set(path.replace("_", "-", 1).replace("_", "."), value)
    return message.to_er7().encode("utf-8")


async def test_every_sample_is_acked_stored_mapped_and_delivered(tmp_path: Path) -> None:
    listen, ehr_port = free_port(), free_port()
    archive = tmp_path / "archive"
    routes = write_config(tmp_path, listen, {"to-ehr": channel(ehr_port, archive=archive)})
    async with FakeEhr(port=ehr_port) as ehr, running(routes) as engine:
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            for path in VALID_SAMPLES:
                ack = await client.send(path.read_bytes())
                assert ack_code(ack) == "AA", (path.name, ack)
                control_id = peek_header(path.read_bytes()).control_id
                assert segment(ack, "MSA")[0].split("|")[2] == control_id
        received = await ehr.wait_for(len(VALID_SAMPLES))
        stored = await engine.store.search(MessageFilter())
        assert {r.status for r in stored} == {"processed"}
        assert len(stored) == len(VALID_SAMPLES)

        async def all_sent() -> bool:
            ds = await deliveries_of(engine) + await deliveries_of(engine, "archive")
            return len(ds) == 2 * len(VALID_SAMPLES) and all(d.status == "sent" for d in ds)

        await eventually(all_sent, what="every delivery sent")
    by_id = {peek_header(p).control_id: p for p in received}
    new_patient = by_id[peek_header(sample("siu_s12_new_patient.hl7")).control_id]
    out = Message.parse(new_patient.decode("utf-8"))
    assert out.get("SCH-7.1") == "NP_EVAL_60"
    assert out.get("AIP-3.1") == "EHR-DR-0001"
    assert out.get("MSH-5") == "CLINIC_EHR"
    assert out.get("PID-11") == "" and out.get("PID-13") == ""
    latin1 = by_id[peek_header(sample("siu_s12_latin1.hl7")).control_id]
    assert "Grünwaldtest^Renée".encode("latin-1") in latin1  # bytes stayed ISO-8859-1
    with pytest.raises(UnicodeDecodeError):
        latin1.decode("utf-8")
    assert len(list(archive.iterdir())) == len(VALID_SAMPLES)


async def test_processed_policy_answers_ae_naming_step_and_field(tmp_path: Path) -> None:
    listen, ehr_port = free_port(), free_port()
    routes = write_config(tmp_path, listen, {"to-ehr": channel(ehr_port)})
    unknown_provider = with_fields(sample("siu_s12_new_patient.hl7"), AIP_3_1="P9999")
    async with FakeEhr(port=ehr_port) as ehr, running(routes) as engine:
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            ack = await client.send(unknown_provider)
            assert ack_code(ack) == "AE"
            (err,) = segment(ack, "ERR")
            fields = err.split("|")
            assert fields[2] == "AIP^1^3^1^1"
            assert fields[3].startswith("103^")
            assert "steps[2] map" in fields[8] and "providers" in fields[8]
            assert "P9999" not in ack.decode()  # the ERR never quotes message content
            # the next message on the same connection is fine
            assert ack_code(await client.send(sample("siu_s13_reschedule.hl7"))) == "AA"
        await ehr.wait_for(1)
        (row,) = await engine.store.search(MessageFilter(status="error"))
        detail = await engine.store.get(row.id)
        assert detail is not None
        (result,) = detail.results
        assert result.status == "error"
        assert result.error_step == "steps[2] map"
        assert result.error_location == "AIP-3.1"
        assert detail.deliveries == ()
    assert [peek_header(p).trigger for p in ehr.received] == ["S13"]


async def test_commit_policy_acks_once_stored(tmp_path: Path) -> None:
    listen, ehr_port = free_port(), free_port()
    routes = write_config(tmp_path, listen, {"to-ehr": channel(ehr_port)}, ack="commit")
    bad = with_fields(sample("siu_s12_new_patient.hl7"), AIP_3_1="P9999")
    async with FakeEhr(port=ehr_port), running(routes) as engine:
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            ack = await client.send(bad)
        assert ack_code(ack) == "AA" and not segment(ack, "ERR")
        (row,) = await engine.store.search(MessageFilter())
        assert row.status == "error"  # the failure is in the store for the operator


@pytest.mark.parametrize(("mode", "expected"), [("aa", "AA"), ("ar", "AR"), ("ae", "AE")])
async def test_delivered_policy_relays_the_destination(
    tmp_path: Path, mode: str, expected: str
) -> None:
    listen, ehr_port = free_port(), free_port()
    routes = write_config(
        tmp_path, listen,
        {"to-ehr": channel(ehr_port, retry={"attempts": 1, "first": "10ms", "max": "10ms"})},
        ack="delivered",
    )
    async with FakeEhr(port=ehr_port, mode=mode) as ehr, running(routes):
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            ack = await client.send(sample("siu_s12_new_patient.hl7"))
        assert ack_code(ack) == expected
        assert ehr.received  # the answer came after the EHR saw it


async def test_duplicate_gets_the_stored_ack_and_is_not_processed_twice(tmp_path: Path) -> None:
    listen, ehr_port = free_port(), free_port()
    routes = write_config(tmp_path, listen, {"to-ehr": channel(ehr_port)})
    data = sample("siu_s12_new_patient.hl7")
    async with FakeEhr(port=ehr_port) as ehr, running(routes) as engine:
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            first = await client.send(data)
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            second = await client.send(data)
            # a different control id from the same sender is processed
            third = await client.send(with_fields(data, MSH_10="OTHER0001"))
        assert first == second
        assert ack_code(third) == "AA" and third != first
        await ehr.wait_for(2)
        rows = await engine.store.search(MessageFilter())
        assert sorted(r.status for r in rows) == ["duplicate", "processed", "processed"]
        (dup,) = [r for r in rows if r.status == "duplicate"]
        assert dup.duplicate_of == min(r.id for r in rows)
        assert dup.ack_code == "AA"  # what the sender was answered with, again
        assert len(await deliveries_of(engine)) == 2
    assert sorted(peek_header(p).control_id for p in ehr.received) == sorted(
        [peek_header(data).control_id, "OTHER0001"]
    )


async def test_dedupe_window_zero_processes_again(tmp_path: Path) -> None:
    listen, ehr_port = free_port(), free_port()
    routes = write_config(tmp_path, listen, {"to-ehr": channel(ehr_port, dedupe=0)})
    data = sample("siu_s12_new_patient.hl7")
    async with FakeEhr(port=ehr_port) as ehr, running(routes):
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            await client.send(data)
            await client.send(data)
        await ehr.wait_for(2)


async def test_ehr_down_retries_then_fails_with_alert_then_retry_delivers_in_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    listen, ehr_port = free_port(), free_port()
    routes = write_config(
        tmp_path, listen,
        {"to-ehr": channel(ehr_port, order_by=None,
                           retry={"attempts": 2, "first": "40ms", "max": "80ms", "jitter": 0})},
    )
    names = ["siu_s12_new_patient.hl7", "siu_s13_reschedule.hl7", "siu_s14_modify.hl7"]
    caplog.set_level(logging.WARNING, logger="engine.alerts")
    async with running(routes) as engine:
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            for name in names:
                assert ack_code(await client.send(sample(name))) == "AA"

        async def all_failed() -> bool:
            ds = await deliveries_of(engine)
            return len(ds) == 3 and all(d.status == "failed" for d in ds)

        await eventually(all_failed, what="deliveries to fail")
        for d in await deliveries_of(engine):
            assert d.attempts == 3  # the first try and 2 retries
            detail = await engine.store.get(d.message_id)
            assert detail is not None
            tries = [a for a in detail.attempts if a.delivery_id == d.id]
            assert [a.outcome for a in tries] == ["retry", "retry", "failed"]
            gaps = [b.started_at - a.started_at for a, b in itertools.pairwise(tries)]
            assert gaps[0] >= 0.04 and gaps[1] >= 0.08  # the backoff schedule, no jitter
        alerts = [m for r in caplog.records if "ALERT delivery failed" in (m := r.getMessage())]
        assert len(alerts) == 3
        async with FakeEhr(port=ehr_port) as ehr:
            assert await engine.store.requeue_failed("clinic-ehr") == 3
            received = await ehr.wait_for(3)
        assert [peek_header(p).control_id for p in received] == [
            peek_header(sample(n)).control_id for n in names
        ]

        async def all_sent() -> bool:
            return all(d.status == "sent" for d in await deliveries_of(engine))

        await eventually(all_sent, what="retried deliveries to be sent")


async def test_queued_deliveries_survive_a_restart_and_resume_in_order(tmp_path: Path) -> None:
    listen, ehr_port = free_port(), free_port()
    routes = write_config(
        tmp_path, listen,
        {"to-ehr": channel(ehr_port, order_by=None,
                           retry={"attempts": 5, "first": "300ms", "max": "300ms"})},
    )
    names = ["siu_s12_new_patient.hl7", "siu_s13_reschedule.hl7", "siu_s15_cancel.hl7"]
    async with running(routes) as engine:
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            for name in names:
                assert ack_code(await client.send(sample(name))) == "AA"

        async def first_tried() -> bool:
            return any(d.attempts for d in await deliveries_of(engine))

        await eventually(first_tried, what="a first failed attempt")
    async with FakeEhr(port=ehr_port) as ehr, running(routes) as engine:
        received = await ehr.wait_for(3)
        assert [peek_header(p).control_id for p in received] == [
            peek_header(sample(n)).control_id for n in names
        ]


async def test_only_messages_answered_aa_are_originals_for_dedupe(tmp_path: Path) -> None:
    """AE and AR tell the sender it may fix and resend: a resend with the same MSH-10 is
    processed again. A message answered AA is answered AA again, not processed twice."""
    listen, ehr_port = free_port(), free_port()
    routes = write_config(tmp_path, listen, {"to-ehr": channel(ehr_port)})
    good = sample("siu_s12_new_patient.hl7")
    unparseable = good.replace(b"\rSCH|", b"\rsch|", 1)  # same MSH-10, broken body
    unknown_provider = with_fields(good, AIP_3_1="P9999")
    async with FakeEhr(port=ehr_port) as ehr, running(routes) as engine:
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            assert ack_code(await client.send(unparseable)) == "AR"
            assert ack_code(await client.send(unknown_provider)) == "AE"
            assert ack_code(await client.send(unknown_provider)) == "AE"  # processed again
            assert ack_code(await client.send(good)) == "AA"  # the corrected resend
            assert ack_code(await client.send(good)) == "AA"  # now a duplicate
        await ehr.wait_for(1)
        rows = await engine.store.search(MessageFilter())
        assert [r.status for r in reversed(rows)] == [
            "rejected", "error", "error", "processed", "duplicate",
        ]
    assert len(ehr.received) == 1


async def test_delivered_policy_stores_the_ack_it_sent(tmp_path: Path) -> None:
    listen, ehr_port = free_port(), free_port()
    routes = write_config(
        tmp_path, listen,
        {"to-ehr": channel(ehr_port, retry={"attempts": 1, "first": "10ms", "max": "10ms"})},
        ack="delivered",
    )
    data = sample("siu_s12_new_patient.hl7")
    async with FakeEhr(port=ehr_port, mode="ar") as ehr, running(routes) as engine:
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            first = await client.send(data)
            assert ack_code(first) == "AR"
            assert b"P1001" not in first and b"Rivera" not in first  # codes only, no EHR text
            ehr.mode = "aa"
            assert ack_code(await client.send(data)) == "AA"  # AR is no original: processed
        rows = await engine.store.search(MessageFilter())
        assert [(r.status, r.ack_code) for r in reversed(rows)] == [
            ("processed", "AR"), ("processed", "AA"),
        ]
        detail = await engine.store.get(rows[-1].id)
        assert detail is not None and detail.ack.startswith(first[:8])


async def test_nothing_is_acknowledged_when_the_store_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listen, ehr_port = free_port(), free_port()
    routes = write_config(tmp_path, listen, {"to-ehr": channel(ehr_port)})
    async with FakeEhr(port=ehr_port) as ehr, running(routes) as engine:

        async def broken(item: object) -> object:
            raise OSError("disk on fire")

        monkeypatch.setattr(engine.store, "ingest", broken)
        async with await MllpClient.connect("127.0.0.1", listen) as client:
            for data in (sample("siu_s12_new_patient.hl7"), b"not HL7 at all"):
                ack = await client.send(data)
                # neither AA nor AR: the sender must keep the message and resend it
                assert ack_code(ack) == "AE"
                assert b"not stored" in ack
        assert ehr.received == []
