"""The README tour as a user runs it: `engine run` and the example's fakes (`engine fake-ehr`,
`engine fake-fhir`, `engine fake-webhooks`) as subprocesses on a copy of the shipped
configuration, `engine send / messages / show / replay / retry` as commands, and the FHIR API
over HTTP. Every check reads what a user would see: command output, the fakes' output, the
store through the CLI."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from engine.testing.fake_ehr import FakeEhr
from engine.testing.webhook_receiver import WebhookReceiver
from tests.integration.cli_fakes import Fakes, Received, fakes_running, http_fakes_in_process
from tests.integration.cli_support import (
    NEW_PATIENT,
    Result,
    Site,
    control_id,
    engine_running,
    example_copy,
    field,
    no_stdout_reader,
    read,
    sample_paths,
    write_bad_samples,
)
from tests.integration.conftest import eventually

SIU_DESTINATIONS = frozenset({"clinic-ehr", "archive", "fhir-server"})
DELIVERY = re.compile(r"\b([a-z][\w-]*):(queued|in_flight|sent|failed|discarded)\b")


def msh_time(data: bytes) -> datetime:
    return datetime.strptime(field(data, "MSH", 7), "%Y%m%d%H%M%S%z")


def announced(site: Site, paths: list[str]) -> dict[str, str | None]:
    """Control id -> the event appointment-events sends for each SIU sample when they are sent
    in this order (None: no event). Each sample must be newer (MSH-7) than the one before it
    for its appointment, so every one becomes the current state (none is `stale`); then the
    event follows the trigger: a first S12 is created, a later one or an S13/S14 updated, S15
    cancelled, S26 no_show, and an S17 cancelled unless the engine never saw (so never
    announced) that appointment."""
    last: dict[str, datetime] = {}
    events: dict[str, str | None] = {}
    for path in paths:
        data = read(site, path)
        appointment, trigger, when = field(data, "SCH", 1), field(data, "MSH", 9, 2), msh_time(data)
        first = appointment not in last
        assert first or when > last[appointment], f"{path} is older than {appointment}'s last"
        last[appointment] = when
        events[control_id(data)] = {
            "S15": "appointment.cancelled",
            "S26": "appointment.no_show",
            "S17": None if first else "appointment.cancelled",
        }.get(trigger, "appointment.created" if first else "appointment.updated")
    return events


async def check_fakes_got(
    site: Site, fakes: Fakes, samples: list[str], events: dict[str, str | None]
) -> None:
    """After every delivery of `samples` is sent: one conditional update per sample on the
    FHIR server (201 for a new appointment, 200 after), and each announced event accepted by
    the webhook receiver with the signature the engine made with $WEBHOOK_SECRET."""
    appointments = {field(read(site, p), "SCH", 1) for p in samples}
    await fakes.fhir.wait_until(lambda: len(fakes.fhir.requests()) >= len(samples), "PUTs")
    requests = fakes.fhir.requests()
    assert {(method, path) for method, path, _ in requests} == {
        ("PUT", "/fhir/Appointment?identifier=…")
    }
    assert sorted(status for _, _, status in requests) == (
        [200] * (len(samples) - len(appointments)) + [201] * len(appointments)
    )
    expected = sorted(e for e in events.values() if e is not None)
    await fakes.webhooks.wait_until(
        lambda: len(fakes.webhooks.events()) >= len(expected), "events"
    )
    assert sorted(kind for _, kind in fakes.webhooks.events()) == expected


async def test_tour_send_then_search_and_show(tmp_path: Path) -> None:
    """README "A short tour": the engine and every destination of the example running
    (`engine fake-ehr`, `fake-fhir`, `fake-webhooks`), every sample sent, searched with each
    filter, and one message's whole story shown."""
    site = example_copy(tmp_path)
    samples = sample_paths(site)
    events = announced(site, samples)
    bad_provider, adt = write_bad_samples(site)
    async with fakes_running(site) as fakes, engine_running(site):
        sent = await site.send(*samples)
        assert sent.code == 0, sent
        assert sent.lines == [f"{path}: AA" for path in samples]
        got = await fakes.ehr.wait_for(len(samples))
        assert sorted(got) == sorted(control_id(read(site, p)) for p in samples)

        sent = await site.send(bad_provider, adt)
        assert sent.code == 1, sent
        ae, ar = sent.lines
        assert ae.startswith(f"{bad_provider}: AE - "), ae
        assert "siu-to-clinic-ehr: steps[2] map" in ae and "AIP-3.1" in ae, ae
        assert "P9999" not in ae  # values stay out of ACK texts: they may be PHI
        assert ar == f"{adt}: AR - no route accepts message type ADT^A01"
        await site.wait_delivered(len(samples), "every sample delivered")
        await check_fakes_got(site, fakes, samples, events)

        table = await site.cli("messages")
        assert table.code == 0, table
        header, *rows = table.lines
        assert header.split() == [
            "ID", "RECEIVED", "LISTENER", "TYPE", "CONTROL", "ID", "STATUS", "ACK", "DELIVERIES"
        ]
        assert len(rows) == len(samples) + 2
        for path in samples:
            control = control_id(read(site, path))
            (row,) = [r for r in rows if f" {control} " in r]
            assert " processed " in row and " AA " in row, row
            wanted = SIU_DESTINATIONS | ({"notifications"} if events[control] else set())
            assert dict(DELIVERY.findall(row)) == dict.fromkeys(wanted, "sent"), row

        every = {p: read(site, p) for p in [*samples, bad_provider, adt]}

        def ids(keep: Callable[[bytes], bool]) -> set[str]:
            return {control_id(data) for data in every.values() if keep(data)}

        valid = {control_id(read(site, p)) for p in samples}
        assert await site.control_ids("--status", "processed") == valid
        (error,) = await site.messages("--status", "error")
        assert (error["keys"]["control_id"], error["ack_code"]) == ("MSG90001", "AE")
        (rejected,) = await site.messages("--status", "rejected")
        assert (rejected["keys"]["control_id"], rejected["ack_code"]) == ("MSG90002", "AR")
        assert await site.control_ids("--ack-code", "AE") == {"MSG90001"}
        assert await site.control_ids("--ack-code", "AR", "--status", "rejected") == {"MSG90002"}
        assert await site.control_ids("--ack-code", "AA") == valid
        (one,) = await site.messages("--control-id", "MSG00004")
        assert one["keys"]["message_type"] == "SIU^S15" and one["deliveries"]
        mrn = ids(lambda d: field(d, "PID", 3) == "MRN100001")
        assert len(mrn) >= 2 and await site.control_ids("--patient-id", "MRN100001") == mrn
        apt = ids(lambda d: "APT1001" in (field(d, "SCH", 1), field(d, "SCH", 2)))
        assert len(apt) >= 2 and await site.control_ids("--appointment-id", "APT1001") == apt
        s12 = ids(lambda d: (field(d, "MSH", 9, 1), field(d, "MSH", 9, 2)) == ("SIU", "S12"))
        assert len(s12) >= 2 and await site.control_ids("--type", "SIU^S12") == s12
        assert await site.control_ids(
            "--type", "SIU^S12", "--patient-id", "MRN100001", "--status", "processed"
        ) == {"MSG00001"}
        nothing = await site.cli("messages", "--control-id", "NO-SUCH-ID")
        assert (nothing.code, nothing.lines[-1]) == (0, "(no messages match)")

        await check_show(site, await site.message_id("MSG00001"))

        gone = await no_stdout_reader(site, "messages", "--json")
        assert gone.code == 141 and gone.err == "", gone  # `| head` quit: no traceback


async def check_show(site: Site, message_id: int) -> None:
    raw = read(site, NEW_PATIENT)
    shown = await site.cli("show", str(message_id))
    assert shown.code == 0, shown
    text = shown.out
    assert shown.lines[0].startswith(f"message {message_id}  SIU^S12  control id MSG00001")
    assert "\n  appointment urn:engine:v2-namespace:EPIC|APT1001: created, status booked, " \
        "version 1 (current)\n" in text, text
    for segment in raw.decode().rstrip("\r").split("\r"):
        assert f"\n  {segment}\n" in text  # the raw message, one segment a line
    assert re.search(r"\nACK sent:\n  MSH\|[^\n]*\n  MSA\|AA\|MSG00001\|", text), text
    assert re.search(r"\nchannel siu-to-clinic-ehr: ok\n  output:\n", text), text
    assert re.search(r"\n    SCH\|APT1001\^EPIC\|[^\n]*\|NP_EVAL_60\^", text), text
    delivery = re.search(
        r"\ndelivery \d+ to clinic-ehr \(siu-to-clinic-ehr\): sent, 1 attempt\(s\), lane APT1001\n"
        r"  attempt 1 at [^\n]*: sent AA in [^\n]*\n    MSH\|[^\n]*\n    MSA\|AA\|MSG00001\|",
        text,
    )
    assert delivery, text

    detail = await site.show(message_id)
    assert detail["message"]["keys"]["control_id"] == "MSG00001"
    assert detail["raw"] == raw.decode()
    assert "MSA|AA|MSG00001|" in detail["ack"]
    results = {r["channel"]: r for r in detail["results"]}
    assert {c: r["status"] for c, r in results.items()} == dict.fromkeys(
        ["siu-to-clinic-ehr", "siu-to-fhir", "appointment-events"], "ok"
    )
    assert field(results["siu-to-clinic-ehr"]["output"].encode(), "SCH", 7) == "NP_EVAL_60"
    deliveries = {d["destination"]: d for d in detail["deliveries"]}
    assert set(deliveries) == SIU_DESTINATIONS | {"notifications"}
    assert {d["status"] for d in deliveries.values()} == {"sent"}
    appointment = json.loads(deliveries["fhir-server"]["payload"])
    assert (appointment["resourceType"], appointment["status"]) == ("Appointment", "booked")
    assert "APT1001" in [i["value"] for i in appointment["identifier"]]
    event = json.loads(deliveries["notifications"]["payload"])
    assert (event["type"], event["data"]["status"]) == ("appointment.created", "booked")
    assert detail["appointment"]["version"] == 1
    ehr = deliveries["clinic-ehr"]
    assert (ehr["status"], ehr["lane"], len(ehr["attempts"])) == ("sent", "APT1001", 1)
    assert field(ehr["payload"].encode(), "SCH", 7) == "NP_EVAL_60"
    (attempt,) = ehr["attempts"]
    assert (attempt["outcome"], attempt["code"]) == ("sent", "AA")
    assert "MSA|AA|MSG00001|" in attempt["response"]
    assert detail["replays"] == []

    missing = await site.cli("show", "999999")
    assert (missing.code, missing.err) == (1, "engine: no message 999999\n")


def replay_rows(result: Result) -> list[list[str]]:
    """The replay table's rows: MESSAGE, REPLAY, CHANNEL, DESTINATION, LANE, WHAT."""
    header, *rows = result.lines[:-1]
    assert header.split() == ["MESSAGE", "REPLAY", "CHANNEL", "DESTINATION", "LANE", "WHAT"]
    return [row.split(None, 5) for row in rows]


async def test_tour_replay(tmp_path: Path) -> None:
    """`engine replay`: a dry run writes nothing; a replay is a new message linked to its
    original, and the running engine delivers it to the EHR again. A replay is judged against
    the appointment's state today: an older version goes to the EHR as it went then, but the
    converting channels send nothing for it (it would undo newer state downstream)."""
    site = example_copy(tmp_path)
    samples = sample_paths(site)
    events = announced(site, samples)
    async with fakes_running(site) as fakes, engine_running(site):
        ehr = fakes.ehr
        assert (await site.send(*samples)).code == 0
        await ehr.wait_for(len(samples))
        await site.wait_delivered(len(samples), "every sample delivered")
        await check_fakes_got(site, fakes, samples, events)
        original = await site.message_id("MSG00001")
        stored = len(await site.messages("--limit", "1000"))

        # MSG00001 booked APT1001, which MSG00004 (later) cancelled: replayed now it is stale,
        # so only siu-to-clinic-ehr, which converts nothing, plans deliveries; the converting
        # channels say why they send nothing.
        dry = await site.cli("replay", str(original), "--dry-run")
        assert dry.code == 0, dry
        sizes = {  # today's channel maps the same raw message to the same payloads
            d["destination"]: len(d["payload"].encode())
            for d in (await site.show(original))["deliveries"]
        }
        rows = sorted(tuple(r) for r in replay_rows(dry))
        assert [r for r in rows if r[3] != "-"] == [
            (str(original), "-", "siu-to-clinic-ehr", "archive", "-", f"{sizes['archive']} bytes"),
            (str(original), "-", "siu-to-clinic-ehr", "clinic-ehr", "APT1001",
             f"{sizes['clinic-ehr']} bytes"),
        ]
        skipped = {r[2]: r[5] for r in rows if r[3] == "-"}
        assert set(skipped) == {"siu-to-fhir", "appointment-events"}, dry.out
        for why in skipped.values():
            assert why.startswith("filtered: ") and "older than the appointment's current " \
                "version" in why, why
        assert dry.lines[-1] == (
            "dry run: 1 message(s) would queue 2 delivery(ies); nothing was written"
        )
        assert len(await site.messages("--limit", "1000")) == stored
        assert (await site.show(original))["replays"] == []

        done = await site.cli("replay", str(original), "--to", "clinic-ehr")
        assert done.code == 0, done
        ((message, replay, channel, destination, lane, _),) = replay_rows(done)
        assert (message, channel, destination, lane) == (
            str(original), "siu-to-clinic-ehr", "clinic-ehr", "APT1001"
        )
        replay_id = int(replay)
        assert done.lines[-1].startswith("replayed 1 message(s), queued 1 delivery(ies)")
        assert (await site.show(original))["replays"] == [replay_id]
        assert f"\n  replayed as: {replay_id}\n" in (await site.cli("show", str(original))).out
        assert f"\n  replay of message {original}\n" in (await site.cli("show", str(replay_id))).out
        (row,) = [r for r in (await site.cli("messages")).lines if r.startswith(f"{replay_id} ")]
        assert f"processed (replay of {original})" in row
        assert (await ehr.wait_for(len(samples) + 1))[-1] == "MSG00001"  # the EHR got it again
        await site.wait_delivered(len(samples) + 1, "the replay delivered")
        (delivery,) = (await site.show(replay_id))["deliveries"]
        assert (delivery["destination"], delivery["status"]) == ("clinic-ehr", "sent")

        # MSG00004 is APT1001's current version: replayed, it is `unchanged`, so the FHIR
        # server gets the same state again and no event is raised.
        cancel = await site.message_id("MSG00004")
        by_type = await site.cli("replay", "--type", "SIU^S15")
        assert by_type.code == 0, by_type
        assert {r[0] for r in replay_rows(by_type)} == {str(cancel)}
        assert {r[3] for r in replay_rows(by_type)} == SIU_DESTINATIONS | {"-"}
        (no_event,) = [r for r in replay_rows(by_type) if r[3] == "-"]
        assert no_event[2] == "appointment-events" and "unchanged" in no_event[5], no_event
        assert (await ehr.wait_for(len(samples) + 2))[-1] == "MSG00004"
        await site.wait_delivered(len(samples) + 2, "the S15 replay delivered")
        (s15_replay,) = (await site.show(cancel))["replays"]
        assert {d["destination"] for d in (await site.show(s15_replay))["deliveries"]} == (
            SIU_DESTINATIONS
        )
        await fakes.fhir.wait_until(
            lambda: len(fakes.fhir.requests()) == len(samples) + 1, "the replayed PUT"
        )
        assert fakes.fhir.requests()[-1][2] == 200  # the same Appointment, updated in place
        assert len(fakes.webhooks.events()) == len([e for e in events.values() if e])
        # A filter finds originals only: the replay made above is not replayed again.
        again = await site.cli("replay", "--control-id", "MSG00001", "--dry-run")
        assert {r[0] for r in replay_rows(again)} == {str(original)}, again.out

        stored = len(await site.messages("--limit", "1000"))
        neither = await site.cli("replay")
        assert neither.code == 2, neither
        assert neither.err == "engine: say which messages to replay: IDs or at least one filter\n"
        unknown = await site.cli("replay", str(original), "999999")
        assert unknown.code == 1, unknown
        assert unknown.err == "engine: no message 999999; nothing was replayed\n"
        nowhere = await site.cli("replay", str(original), "--to", "nowhere")
        assert nowhere.code == 2, nowhere
        assert "no channel has a destination named 'nowhere'" in nowhere.err
        assert len(await site.messages("--limit", "1000")) == stored


FHIR_SAMPLES = ("samples/fhir_appointment_booked.json",
                "samples/fhir_appointment_rescheduled.json",
                "samples/fhir_appointment_cancelled.json")
FHIR_HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


async def test_tour_fhir_bookings_reach_the_ehr_as_siu(tmp_path: Path) -> None:
    """README tour, the FHIR side: the booking portal POSTs an Appointment to the engine's
    FHIR API and PUTs its new time and its cancellation (as curl would); the clinic EHR gets an
    S12, an S13 and an S15 for it, the subscriber hears each change, and `engine messages` /
    `engine show` tell each request's story."""
    site = example_copy(tmp_path)
    booked, moved, cancelled = bodies = [read(site, p) for p in FHIR_SAMPLES]
    ((system, reference),) = {
        (i["system"], i["value"]) for i in (json.loads(b)["identifier"][0] for b in bodies)
    }
    key = f"{system}|{reference}"
    async with (
        fakes_running(site) as fakes,
        engine_running(site),
        aiohttp.ClientSession() as http,
    ):
        async with http.post(
            f"{site.fhir_api}/Appointment", data=booked, headers=FHIR_HEADERS
        ) as response:
            assert response.status == 201, await response.text()
            location = response.headers["Location"]
            created = await response.json(content_type=None)
        found = re.fullmatch(
            re.escape(f"{site.fhir_api}/Appointment/") + r"([A-Za-z0-9.-]{1,64})/_history/1",
            location,
        )
        assert found, location
        appointment_id = found[1]
        assert (created["id"], created["status"]) == (appointment_id, "booked")
        url = f"{site.fhir_api}/Appointment/{appointment_id}"
        # As the README does: the first update names the version it changes, the second not.
        changes: list[tuple[bytes, dict[str, str], int, str]] = [
            (moved, {"If-Match": 'W/"1"'}, 2, "booked"), (cancelled, {}, 3, "cancelled")
        ]
        for body, condition, version, status in changes:
            async with http.put(url, data=body, headers=FHIR_HEADERS | condition) as response:
                assert response.status == 200, await response.text()
                assert response.headers["ETag"] == f'W/"{version}"'
                assert (await response.json(content_type=None))["status"] == status
        async with http.get(url, headers={"Accept": "application/fhir+json"}) as response:
            assert response.status == 200, await response.text()
            held = await response.json(content_type=None)
        assert (held["status"], held["meta"]["versionId"]) == ("cancelled", "3")

        def bookings() -> list[Received]:
            return [r for r in fakes.ehr.received() if r.field("SCH", 1) == reference]

        await fakes.ehr.wait_until(lambda: len(bookings()) >= 3, f"three SIU for {reference}")
        assert [r.type for r in bookings()] == ["SIU^S12", "SIU^S13", "SIU^S15"]
        assert len(fakes.ehr.received()) == 3  # nothing else reached the EHR
        await site.wait_delivered(3, "the three requests delivered")
        await fakes.webhooks.wait_until(lambda: len(fakes.webhooks.events()) >= 3, "events")
        assert [kind for _, kind in fakes.webhooks.events()] == [
            "appointment.created", "appointment.updated", "appointment.cancelled"
        ]
        assert fakes.fhir.requests() == []  # siu-to-fhir takes SIU only

        table = await site.cli("messages", "--type", "Appointment")
        assert table.code == 0, table
        header, *lines = table.lines
        assert header.split()[:4] == ["ID", "RECEIVED", "LISTENER", "TYPE"], header
        assert len(lines) == 3 and all(" booking-api " in line for line in lines), table.out
        assert all(" Appointment " in line for line in lines), table.out
        rows = sorted(await site.messages("--type", "Appointment"), key=lambda r: int(r["id"]))
        assert [r["ack_code"] for r in rows] == ["201", "200", "200"]
        stories = [("created", "booked", 1), ("rescheduled", "booked", 2),
                   ("cancelled", "cancelled", 3)]
        for row, (change, status, version) in zip(rows, stories, strict=True):
            assert dict(DELIVERY.findall(row["deliveries"])) == {
                "clinic-ehr-bookings": "sent", "notifications": "sent"
            }, row
            shown = await site.cli("show", str(row["id"]))
            assert shown.code == 0, shown
            assert (
                f"\n  appointment {key}: {change}, status {status}, version {version} (current)\n"
            ) in shown.out, shown.out
            detail = await site.show(int(row["id"]))
            assert (detail["appointment"]["version"], detail["appointment"]["change"]) == (
                version, change
            )


async def failed_deliveries(site: Site) -> list[dict[str, Any]]:
    rows = await site.messages("--destination", "clinic-ehr", "--delivery-status", "failed")
    return [d for r in rows for d in (await site.show(r["id"]))["deliveries"]
            if d["destination"] == "clinic-ehr" and d["status"] == "failed"]


async def has_failed(site: Site) -> bool:
    return bool(await failed_deliveries(site))


def sync_failed(hooks: WebhookReceiver) -> list[tuple[str, str, str]]:
    """(booking reference, destination, reason) of each appointment.sync_failed accepted."""
    return [
        (e["data"]["booking_reference"], e["data"]["destination"], e["data"]["reason_code"])
        for e in hooks.events
        if e["type"] == "appointment.sync_failed"
    ]


async def test_tour_retry_after_the_ehr_was_down(tmp_path: Path) -> None:
    """EHR down: deliveries retry fast, then fail with an alert and an
    appointment.sync_failed event to the webhook subscriber. EHR back: `engine retry` requeues
    them and the running engine sends them in their original order."""
    site = example_copy(tmp_path)
    same_lane = ["samples/siu_s13_reschedule.hl7", "samples/siu_s14_modify.hl7",
                 "samples/siu_s15_cancel.hl7"]  # all APT1001: one lane, strict order
    assert {field(read(site, p), "SCH", 1) for p in same_lane} == {"APT1001"}
    async with (
        http_fakes_in_process(site) as (_, hooks),
        FakeEhr(port=site.ehr_port) as first_ehr,
        engine_running(site) as log,
    ):
        assert (await site.send(NEW_PATIENT)).code == 0
        await first_ehr.wait_for(1)
        await first_ehr.stop()  # the EHR goes down with the engine's connection open

        sent = await site.send(*same_lane)
        assert (sent.code, sent.lines) == (0, [f"{p}: AA" for p in same_lane])

        async def all_failed() -> bool:
            return len(await failed_deliveries(site)) == len(same_lane)

        await eventually(all_failed, timeout=20, what="deliveries failed")
        assert log.read_text().count("ALERT delivery failed: destination=clinic-ehr") == 3

        async with FakeEhr(port=site.ehr_port) as ehr:
            retried = await site.cli("retry", "--destination", "clinic-ehr")
            assert retried.code == 0, retried
            assert retried.out.startswith("requeued 3 failed delivery(ies)")
            received = await ehr.wait_for(len(same_lane))
            assert [control_id(m) for m in received] == [
                control_id(read(site, p)) for p in same_lane
            ]
            await site.wait_delivered(1 + len(same_lane), "the retried deliveries sent")
            assert sync_failed(hooks) == [("APT1001", "clinic-ehr", "retries_exhausted")] * 3

            nothing = await site.cli("retry", "--destination", "clinic-ehr")
            assert nothing.code == 1, nothing
            assert nothing.err == "engine: nothing requeued: no failed delivery to clinic-ehr\n"
            unknown = await site.cli("retry", "999999")
            assert unknown.code == 1, unknown
            assert unknown.err == "engine: nothing requeued: no failed delivery among 999999\n"

            # AR from the EHR fails a delivery at once; it is retried by its id.
            ehr.mode = "ar"
            assert (await site.send("samples/siu_s26_noshow.hl7")).code == 0
            await eventually(lambda: has_failed(site), timeout=20, what="the AR'd delivery")
            (failed,) = await failed_deliveries(site)
            ehr.mode = "aa"
            by_id = await site.cli("retry", str(failed["id"]))
            assert by_id.code == 0, by_id
            assert by_id.out.startswith("requeued 1 failed delivery(ies)")
            twice = await ehr.wait_for(len(same_lane) + 2)
            assert [control_id(m) for m in twice[-2:]] == ["MSG00006", "MSG00006"]
            await site.wait_delivered(2 + len(same_lane), "the AR'd delivery sent on retry")
            assert sync_failed(hooks)[3:] == [("APT1003", "clinic-ehr", "rejected")]
