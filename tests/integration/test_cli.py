"""The `engine` command line end to end, as an operator runs it: every command is a real
subprocess (`python -m engine ...`) on a copy of the shipped example configuration in
tmp_path (free ports, fast retries), with the engine itself running as `engine run`, a real
SQLite store, and a fake EHR (`engine fake-ehr` or the in-process FakeEhr).

Each test starts at most one engine. Nothing sleeps in place of synchronisation: tests wait
for a line from a process, for the fake EHR's condition, or poll a store query with a timeout.
Expectations about the samples come from the sample files through a tiny reader of our own,
not from the engine's parser.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from engine.testing.fake_ehr import FakeEhr
from tests.integration.cli_support import (
    CHANNEL,
    CLI_ENV,
    ENGINE,
    NEW_PATIENT,
    Result,
    Site,
    break_config,
    control_id,
    engine,
    engine_running,
    example_copy,
    fake_ehr_process,
    field,
    no_stdout_reader,
    patch,
    plural,
    read,
    sample_paths,
    write_bad_samples,
)
from tests.integration.conftest import PROJECT, eventually, free_port, listening


async def test_check_accepts_the_shipped_example() -> None:
    routes = yaml.safe_load((PROJECT / "routes.yaml").read_text())
    channels = list((PROJECT / "channels").glob("*.yaml"))
    tables = list((PROJECT / "transforms/tables").glob("*.yaml"))
    tests = sum(len(yaml.safe_load(c.read_text()).get("tests", [])) for c in channels)
    result = await engine("check", cwd=PROJECT)  # ./routes.yaml by default
    assert result.code == 0, result
    summary = ", ".join(
        [plural(len(routes["listeners"]), "listener"), plural(len(channels), "channel"),
         plural(len(tables), "table"), plural(tests, "channel test")]
    )
    assert re.fullmatch(f"ok: {summary}\n", result.out), result.out


async def test_check_prints_each_problem_as_file_line_column(tmp_path: Path) -> None:
    site = example_copy(tmp_path)
    expected = break_config(site)
    result = await site.cli("check")
    assert result.code == 1, result
    assert len(result.lines) == len(expected), result.out
    for where, message in expected:
        assert any(line.startswith(f"{where}: {message}") for line in result.lines), (
            where, result.out
        )


async def test_run_refuses_a_broken_configuration_before_opening_anything(
    tmp_path: Path,
) -> None:
    site = example_copy(tmp_path)
    expected = break_config(site)
    result = await site.cli("run", "--log-level", "info", timeout=30)
    assert result.code == 2, result
    assert "configuration is not valid" in result.err
    for where, message in expected:
        assert f"{site.root / where}: {message}" in result.err, result.err
    assert "Traceback" not in result.err
    assert "MLLP on" not in result.err  # the listener's start-up line: it never opened
    assert not (site.root / "data").exists()  # nor the store
    assert not listening(site.listen)


@pytest.mark.parametrize("command", ["run", "fake-ehr"])
async def test_a_port_in_use_is_a_clear_error_not_a_traceback(
    tmp_path: Path, command: str
) -> None:
    site = example_copy(tmp_path)
    port = site.listen if command == "run" else site.ehr_port
    args = ("--port", str(port)) if command == "fake-ehr" else ()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        result = await site.cli(command, *args, timeout=30)
    assert result.code == 2, result
    assert result.err.startswith("engine: cannot start") and "in use" in result.err, result.err
    assert "Traceback" not in result.err


async def test_channel_tests_of_the_example_pass() -> None:
    tests = yaml.safe_load((PROJECT / CHANNEL).read_text())["tests"]
    result = await engine("test", cwd=PROJECT)
    assert result.code == 0, result
    assert result.lines == [f"PASS siu-to-clinic-ehr: {t['name']}" for t in tests] + [
        f"{len(tests)} passed, 0 failed"
    ]


async def test_a_channel_test_expecting_a_wrong_value_fails_naming_the_mismatch(
    tmp_path: Path,
) -> None:
    site = example_copy(tmp_path)
    patch(site.root / CHANNEL, r"SCH-7\.1: FOLLOWUP_30", "SCH-7.1: FOLLOWUP_45")
    text = (site.root / CHANNEL).read_text()
    tests = yaml.safe_load(text)["tests"]
    (wrong,) = [t for t in tests if t["expect"]["clinic-ehr"].get("SCH-7.1") == "FOLLOWUP_45"]
    lines = text.splitlines()
    row = next(i for i, line in enumerate(lines) if f"name: {wrong['name']}" in line)
    where = f"{site.root / CHANNEL}:{row + 1}:{lines[row].index('name:') + 1}"
    result = await site.cli("test")
    assert result.code == 1, result
    fail_at = result.lines.index(f"FAIL siu-to-clinic-ehr: {wrong['name']}")
    assert result.lines[fail_at + 1] == (
        f"  {where}: clinic-ehr SCH-7.1: expected 'FOLLOWUP_45', got 'FOLLOWUP_30'"
    )
    passed = [f"PASS siu-to-clinic-ehr: {t['name']}" for t in tests if t is not wrong]
    assert [line for line in result.lines if line.startswith("PASS")] == passed
    assert result.lines[-1] == f"{len(tests) - 1} passed, 1 failed"


async def test_tour_send_then_search_and_show(tmp_path: Path) -> None:
    """README "A short tour": the engine and the fake EHR running, every sample sent,
    searched with each filter, and one message's whole story shown."""
    site = example_copy(tmp_path)
    samples = sample_paths(site)
    bad_provider, adt = write_bad_samples(site)
    async with fake_ehr_process(site) as ehr, engine_running(site):
        sent = await site.send(*samples)
        assert sent.code == 0, sent
        assert sent.lines == [f"{path}: AA" for path in samples]
        got = await ehr.wait_for(len(samples))
        assert sorted(got) == sorted(control_id(read(site, p)) for p in samples)

        sent = await site.send(bad_provider, adt)
        assert sent.code == 1, sent
        ae, ar = sent.lines
        assert ae.startswith(f"{bad_provider}: AE - "), ae
        assert "siu-to-clinic-ehr: steps[2] map" in ae and "AIP-3.1" in ae, ae
        assert "P9999" not in ae  # values stay out of ACK texts: they may be PHI
        assert ar == f"{adt}: AR - no route accepts message type ADT^A01"
        await site.wait_delivered(len(samples), "every sample delivered")

        table = await site.cli("messages")
        assert table.code == 0, table
        header, *rows = table.lines
        assert header.split() == [
            "ID", "RECEIVED", "LISTENER", "TYPE", "CONTROL", "ID", "STATUS", "ACK", "DELIVERIES"
        ]
        assert len(rows) == len(samples) + 2
        for path in samples:
            (row,) = [r for r in rows if f" {control_id(read(site, path))} " in r]
            assert " processed " in row and " AA " in row, row
            assert "clinic-ehr:sent" in row and "archive:sent" in row, row

        every = {p: read(site, p) for p in [*samples, bad_provider, adt]}

        def ids(keep: Callable[[bytes], bool]) -> set[str]:
            return {control_id(data) for data in every.values() if keep(data)}

        valid = {control_id(read(site, p)) for p in samples}
        assert await site.control_ids("--status", "processed") == valid
        (error,) = await site.messages("--status", "error")
        assert (error["keys"]["control_id"], error["ack_code"]) == ("MSG90001", "AE")
        (rejected,) = await site.messages("--status", "rejected")
        assert (rejected["keys"]["control_id"], rejected["ack_code"]) == ("MSG90002", "AR")
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
    (result,) = detail["results"]
    assert (result["channel"], result["status"]) == ("siu-to-clinic-ehr", "ok")
    assert field(result["output"].encode(), "SCH", 7) == "NP_EVAL_60"
    deliveries = {d["destination"]: d for d in detail["deliveries"]}
    assert set(deliveries) == {"clinic-ehr", "archive"}
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
    original, and the running engine delivers it to the EHR again."""
    site = example_copy(tmp_path)
    samples = sample_paths(site)
    async with fake_ehr_process(site) as ehr, engine_running(site):
        assert (await site.send(*samples)).code == 0
        await ehr.wait_for(len(samples))
        await site.wait_delivered(len(samples), "every sample delivered")
        original = await site.message_id("MSG00001")
        stored = len(await site.messages("--limit", "1000"))

        dry = await site.cli("replay", str(original), "--dry-run")
        assert dry.code == 0, dry
        sizes = {  # today's channel maps the same raw message to the same payloads
            d["destination"]: len(d["payload"].encode())
            for d in (await site.show(original))["deliveries"]
        }
        assert sorted(tuple(r) for r in replay_rows(dry)) == [
            (str(original), "-", "siu-to-clinic-ehr", "archive", "-", f"{sizes['archive']} bytes"),
            (str(original), "-", "siu-to-clinic-ehr", "clinic-ehr", "APT1001",
             f"{sizes['clinic-ehr']} bytes"),
        ]
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

        cancel = await site.message_id("MSG00004")
        by_type = await site.cli("replay", "--type", "SIU^S15")
        assert by_type.code == 0, by_type
        assert {r[0] for r in replay_rows(by_type)} == {str(cancel)}
        assert {r[3] for r in replay_rows(by_type)} == {"clinic-ehr", "archive"}
        assert (await ehr.wait_for(len(samples) + 2))[-1] == "MSG00004"
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


async def failed_deliveries(site: Site) -> list[dict[str, Any]]:
    rows = await site.messages("--destination", "clinic-ehr", "--delivery-status", "failed")
    return [d for r in rows for d in (await site.show(r["id"]))["deliveries"]
            if d["destination"] == "clinic-ehr" and d["status"] == "failed"]


async def has_failed(site: Site) -> bool:
    return bool(await failed_deliveries(site))


async def test_tour_retry_after_the_ehr_was_down(tmp_path: Path) -> None:
    """EHR down: deliveries retry fast, then fail with an alert. EHR back: `engine retry`
    requeues them and the running engine sends them in their original order."""
    site = example_copy(tmp_path)
    same_lane = ["samples/siu_s13_reschedule.hl7", "samples/siu_s14_modify.hl7",
                 "samples/siu_s15_cancel.hl7"]  # all APT1001: one lane, strict order
    assert {field(read(site, p), "SCH", 1) for p in same_lane} == {"APT1001"}
    async with FakeEhr(port=site.ehr_port) as first_ehr, engine_running(site) as log:
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


async def test_send_to_a_closed_port_is_a_clear_error(tmp_path: Path) -> None:
    site = example_copy(tmp_path)  # nothing listens on site.listen
    result = await site.send(NEW_PATIENT)
    assert result.code == 2, result
    assert result.out == ""
    assert result.err.startswith(f"engine: cannot connect to 127.0.0.1:{site.listen}: ")


async def test_store_commands_before_the_engine_ever_ran(tmp_path: Path) -> None:
    site = example_copy(tmp_path)
    store = site.root / "data" / "engine.db"
    for command in (["messages"], ["show", "1"], ["retry", "--destination", "clinic-ehr"],
                    ["replay", "1"]):
        result = await site.cli(*command)
        assert result.code == 2, (command, result)
        assert result.err == f"engine: no store at {store} yet (start the engine first)\n"
        assert not store.exists()  # looking did not create an empty store


async def test_output_to_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    site = example_copy(tmp_path)
    for command in ("check", "test"):
        result = await no_stdout_reader(site, command)
        assert (result.code, result.err) == (141, ""), (command, result)


async def test_a_resend_after_a_replay_gets_the_original_ack(tmp_path: Path) -> None:
    site = example_copy(tmp_path)
    async with FakeEhr(port=site.ehr_port) as ehr, engine_running(site):
        assert (await site.send(NEW_PATIENT)).code == 0
        original = await site.message_id("MSG00001")
        assert (await site.cli("replay", str(original), "--to", "clinic-ehr")).code == 0
        await ehr.wait_for(2)
        resent = await site.send(NEW_PATIENT)
        assert (resent.code, resent.lines) == (0, [f"{NEW_PATIENT}: AA"])


@pytest.mark.parametrize(
    ("command", "path", "status"),
    [("fake-fhir", "/fhir/metadata", 200), ("fake-webhooks", "/webhooks", 400)],
)
async def test_http_fakes_start_from_the_command_line(
    tmp_path: Path, command: str, path: str, status: int
) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *ENGINE, command, "--port", str(port), cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=CLI_ENV,
    )
    try:

        async def up() -> bool:
            assert proc.returncode is None, "the fake exited"
            return listening(port)

        await eventually(up, timeout=30, what=f"{command} to listen")
        async with aiohttp.ClientSession() as http:
            method = http.get if command == "fake-fhir" else http.post
            async with method(f"http://127.0.0.1:{port}{path}") as response:
                # metadata answers; an unsigned webhook is refused
                assert response.status == status
    finally:
        proc.terminate()
        await proc.wait()
