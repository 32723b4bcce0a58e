"""The `engine` command line end to end, as an operator runs it: every command is a real
subprocess (`python -m engine ...`) on a copy of the shipped example configuration in
tmp_path (free ports, fast retries, a fresh WEBHOOK_SECRET), with the engine itself running as
`engine run`, a real SQLite store, and every destination of the example up: `engine fake-ehr`,
`engine fake-fhir` and `engine fake-webhooks`, or the test kit's fakes in process.

Each test starts at most one engine. Nothing sleeps in place of synchronisation: tests wait
for a line from a process, for the fake EHR's condition, or poll a store query with a timeout.
Expectations about the samples come from the sample files through a tiny reader of our own,
not from the engine's parser.
"""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from engine.testing.fake_ehr import FakeEhr
from tests.integration.cli_fakes import http_fakes_in_process
from tests.integration.cli_support import (
    CHANNEL,
    CLI_ENV,
    ENGINE,
    EVENTS_CHANNEL,
    NEW_PATIENT,
    break_config,
    engine,
    engine_running,
    example_copy,
    example_env,
    no_stdout_reader,
    patch,
    plural,
)
from tests.integration.conftest import PROJECT, eventually, free_port, listening


async def test_check_accepts_the_shipped_example() -> None:
    routes = yaml.safe_load((PROJECT / "routes.yaml").read_text())
    channels = list((PROJECT / "channels").glob("*.yaml"))
    tables = list((PROJECT / "transforms/tables").glob("*.yaml"))
    tests = sum(len(yaml.safe_load(c.read_text()).get("tests", [])) for c in channels)
    # ./routes.yaml by default, with WEBHOOK_SECRET set as `make run` sets it
    result = await engine("check", cwd=PROJECT, env=example_env())
    assert result.code == 0, result
    summary = ", ".join(
        [plural(len(routes["listeners"]), "listener"), plural(len(channels), "channel"),
         plural(len(tables), "table"), plural(tests, "channel test")]
    )
    assert re.fullmatch(f"ok: {summary}\n", result.out), result.out


async def test_check_names_an_unset_webhook_secret_once() -> None:
    """The example needs WEBHOOK_SECRET; without it `engine check` says so, once, where the
    secret is written (and not also that the unresolved text is no whsec_ secret)."""
    lines = (PROJECT / EVENTS_CHANNEL).read_text().splitlines()
    (row,) = [i for i, line in enumerate(lines) if "${WEBHOOK_SECRET}" in line]
    where = f"{EVENTS_CHANNEL}:{row + 1}:{lines[row].index('${WEBHOOK_SECRET}') + 1}"
    result = await engine("check", cwd=PROJECT, env=CLI_ENV)  # CLI_ENV has no WEBHOOK_SECRET
    assert (result.code, result.err) == (1, ""), result
    assert result.lines == [f"{where}: environment variable WEBHOOK_SECRET is not set"]


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
    assert not listening(site.listen) and not listening(site.http)


@pytest.mark.parametrize("taken", ["mllp", "http", "fake-ehr"])
async def test_a_port_in_use_is_a_clear_error_not_a_traceback(
    tmp_path: Path, taken: str
) -> None:
    site = example_copy(tmp_path)
    command = "fake-ehr" if taken == "fake-ehr" else "run"
    port = {"mllp": site.listen, "http": site.http, "fake-ehr": site.ehr_port}[taken]
    args = ("--port", str(port)) if command == "fake-ehr" else ()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        result = await site.cli(command, *args, timeout=30)
    assert result.code == 2, result
    # The MLLP listener opens first: with the HTTP port taken its start-up line comes first.
    last = result.err.splitlines()[-1]
    assert last.startswith("engine: cannot start") and "in use" in last, result.err
    # Apart from the example's development-profile warning, which precedes everything.
    lines = [line for line in result.err.splitlines() if "development profile" not in line]
    assert taken == "http" or lines[0].startswith("engine: cannot start"), result.err
    assert "Traceback" not in result.err


def channel_tests(root: Path) -> list[tuple[str, dict[str, Any]]]:
    """(channel, test) of every channel's `tests:`, in the order `engine test` runs them:
    channels by name, each channel's tests as written."""
    return [
        (path.stem, test)
        for path in sorted((root / "channels").glob("*.yaml"))
        for test in yaml.safe_load(path.read_text()).get("tests", [])
    ]


async def test_channel_tests_of_the_example_pass() -> None:
    tests = channel_tests(PROJECT)
    assert {name for name, _ in tests} >= {"siu-to-clinic-ehr", "siu-to-fhir", "fhir-to-siu"}
    result = await engine("test", cwd=PROJECT, env=example_env())
    assert result.code == 0, result
    assert result.lines == [f"PASS {name}: {t['name']}" for name, t in tests] + [
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
    every = channel_tests(site.root)  # the other channels' tests still pass
    passed = [f"PASS {name}: {t['name']}" for name, t in every if t != wrong]
    assert len(passed) == len(every) - 1
    assert [line for line in result.lines if line.startswith("PASS")] == passed
    assert result.lines[-1] == f"{len(every) - 1} passed, 1 failed"


# Every SIU sample goes to the clinic EHR and the archive (siu-to-clinic-ehr) and, as its
# appointment's current state, to the FHIR server (siu-to-fhir); appointment-events adds
# `notifications` when it announces something (see `announced`).
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
    async with (
        http_fakes_in_process(site),
        FakeEhr(port=site.ehr_port) as ehr,
        engine_running(site),
    ):
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
