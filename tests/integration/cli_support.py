"""Support for the CLI tests: a copy of the shipped example with free ports and fast
retries, the engine and the fake EHR as subprocesses, and `engine ...` run as a command."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.conftest import PROJECT, eventually, free_port, listening

ENGINE = (sys.executable, "-m", "engine")
CHANNEL = "channels/siu-to-clinic-ehr.yaml"
FAST_RETRY = "retry: {attempts: 2, backoff: exponential, first: 50ms, max: 200ms}"
NEW_PATIENT = "samples/siu_s12_new_patient.hl7"
PIPE = asyncio.subprocess.PIPE
# As an operator's shell runs them: with stdout block-buffered when it is a pipe, so a command
# that forgets to flush (or to handle a closed pipe at exit) shows here.
CLI_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def field(data: bytes, segment: str, number: int, component: int = 1) -> str:
    """SEG-number.component of the first such segment (first repetition), read independently
    of the engine's ER7 reader."""
    for seg in re.split(r"\r\n|\r|\n", data.decode("latin-1")):
        fields = seg.split("|")
        if fields[0] != segment:
            continue
        index = number - 1 if segment == "MSH" else number  # MSH-1 is the separator itself
        value = fields[index].split("~")[0] if index < len(fields) else ""
        parts = value.split("^")
        return parts[component - 1] if component <= len(parts) else ""
    return ""


def control_id(data: bytes) -> str:
    return field(data, "MSH", 10)


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def json(self) -> Any:
        return json.loads(self.out)


async def engine(*args: str, cwd: Path, stdout: int = PIPE, timeout: float = 60.0) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *ENGINE, *args, cwd=cwd, stdout=stdout, stderr=PIPE, env=CLI_ENV
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"engine {' '.join(args)} did not finish in {timeout:g} s") from None
    assert proc.returncode is not None
    return Result(proc.returncode, (out or b"").decode(), err.decode())


def patch(path: Path, old: str, new: str) -> None:
    """Replace the one occurrence of `old` (a regex), so a changed example fails loudly."""
    text = path.read_text()
    patched, n = re.subn(old, new, text)
    assert n == 1, f"expected one '{old}' in {path}, found {n}"
    path.write_text(patched)


@dataclass
class Site:
    """A copy of the example configuration, its ports, and the commands run on it."""

    root: Path
    listen: int
    ehr_port: int

    @property
    def routes(self) -> Path:
        return self.root / "routes.yaml"

    async def cli(
        self, command: str, *args: str, stdout: int = PIPE, timeout: float = 60.0
    ) -> Result:
        return await engine(
            command,
            "--config",
            str(self.routes),
            *args,
            cwd=self.root,
            stdout=stdout,
            timeout=timeout,
        )

    async def send(self, *files: str) -> Result:
        return await self.cli("send", "--port", str(self.listen), *files)

    async def messages(self, *filters: str) -> list[dict[str, Any]]:
        result = await self.cli("messages", "--json", *filters)
        assert result.code == 0, result
        rows: list[dict[str, Any]] = result.json()
        return rows

    async def control_ids(self, *filters: str) -> set[str]:
        return {r["keys"]["control_id"] for r in await self.messages(*filters)}

    async def message_id(self, control: str) -> int:
        (row,) = [r for r in await self.messages("--control-id", control) if not r["replay_of"]]
        return int(row["id"])

    async def show(self, message_id: int) -> dict[str, Any]:
        result = await self.cli("show", str(message_id), "--json")
        assert result.code == 0, result
        detail: dict[str, Any] = result.json()
        return detail

    async def wait_delivered(self, count: int, what: str) -> None:
        """Until `count` messages have every delivery sent (and none queued or failed)."""

        async def done() -> bool:
            rows = [r for r in await self.messages("--limit", "1000") if r["deliveries"]]
            states = {s.split(":")[1] for r in rows for s in r["deliveries"].split()}
            return len(rows) == count and states == {"sent"}

        await eventually(done, timeout=20, what=what)


def example_copy(root: Path, retry: str = FAST_RETRY) -> Site:
    for name in ("channels", "transforms", "samples"):
        shutil.copytree(PROJECT / name, root / name)
    shutil.copy(PROJECT / "routes.yaml", root / "routes.yaml")
    listen = free_port()
    ehr_port = free_port()
    while ehr_port == listen:
        ehr_port = free_port()
    patch(root / "routes.yaml", r"\bport: 2575\b", f"port: {listen}")
    patch(root / CHANNEL, r"\bport: 6661\b", f"port: {ehr_port}")
    patch(root / CHANNEL, r"retry: \{[^}]*\}", retry)
    return Site(root, listen, ehr_port)


@asynccontextmanager
async def engine_running(site: Site) -> AsyncIterator[Path]:
    """`engine run` as a subprocess; yields its log file. Stopped with SIGTERM, which must
    end it cleanly (exit 0)."""
    log = site.root / "engine.log"
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            *ENGINE,
            "run",
            "--config",
            str(site.routes),
            "--log-level",
            "info",
            cwd=site.root,
            stdout=sink,
            stderr=sink,
            env=CLI_ENV,
        )

    async def up() -> bool:
        assert proc.returncode is None, f"the engine exited:\n{log.read_text()}"
        return listening(site.listen)

    async def stop() -> int:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(proc.wait(), 30)

    try:
        await eventually(up, timeout=30, what="the engine's listener")
        yield log
    except BaseException:
        await stop()
        raise
    assert await stop() == 0, log.read_text()
    assert "Traceback" not in log.read_text()


class EhrProcess:
    """`engine fake-ehr` as a subprocess; follows its output to see what it received."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.control_ids: list[str] = []

    async def line(self) -> str:
        assert self.proc.stdout is not None
        raw = await self.proc.stdout.readline()
        assert raw, "the fake EHR exited"
        return raw.decode()

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[str]:
        """Control ids of the first `count` messages received, in arrival order."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.control_ids) < count:
                    found = re.match(r"control id (\S+)  type ", await self.line())
                    if found:
                        self.control_ids.append(found[1])
        except TimeoutError:
            raise AssertionError(
                f"the fake EHR printed {len(self.control_ids)} of {count} messages "
                f"within {timeout:g} s"
            ) from None
        return self.control_ids[:count]


@asynccontextmanager
async def fake_ehr_process(site: Site) -> AsyncIterator[EhrProcess]:
    proc = await asyncio.create_subprocess_exec(
        *ENGINE,
        "fake-ehr",
        "--port",
        str(site.ehr_port),
        cwd=site.root,
        stdout=PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=CLI_ENV,
    )
    ehr = EhrProcess(proc)
    try:
        try:
            first = await asyncio.wait_for(ehr.line(), 30)
        except TimeoutError:
            raise AssertionError("the fake EHR printed nothing (is its output flushed?)") from None
        assert first.startswith(f"fake EHR listening on 127.0.0.1:{site.ehr_port}"), first
        yield ehr
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C, as in the README tour
        await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130


def sample_paths(site: Site) -> list[str]:
    return sorted(str(p.relative_to(site.root)) for p in (site.root / "samples").glob("*.hl7"))


def read(site: Site, relative: str) -> bytes:
    return (site.root / relative).read_bytes()


def write_bad_samples(site: Site) -> tuple[str, str]:
    """One message the channel fails on (a provider missing from the table: AE) and one no
    route accepts (an ADT: AR)."""
    (site.root / "bad").mkdir()
    unknown = (
        read(site, NEW_PATIENT)
        .replace(b"MSG00001", b"MSG90001")
        .replace(b"AIP|1|A|P1001^", b"AIP|1|A|P9999^")
    )
    assert unknown.count(b"P9999") == 1
    (site.root / "bad/unknown_provider.hl7").write_bytes(unknown)
    adt = (
        b"MSH|^~\\&|EPIC|MAIN_HOSP|ENGINE|CLINIC|20250310091500-0500||ADT^A01^ADT_A01|"
        b"MSG90002|P|2.5.1\rEVN|A01|20250310091500\rPID|1||MRN100099^^^MAIN_HOSP^MR||"
        b"Synthetic^Test\r"
    )
    (site.root / "bad/adt_a01.hl7").write_bytes(adt)
    return "bad/unknown_provider.hl7", "bad/adt_a01.hl7"


async def no_stdout_reader(site: Site, command: str, *args: str) -> Result:
    """Run a command whose stdout pipe has no reader any more (`| head` that has quit)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return await site.cli(command, *args, stdout=write_end)
    finally:
        os.close(write_end)


def break_config(site: Site) -> list[tuple[str, str]]:
    """An unknown key and a missing table; returns (file:line:column, message start) of each."""
    path = site.root / CHANNEL
    text = path.read_text()
    text += "" if text.endswith("\n") else "\n"
    lines = text.splitlines()
    path.write_text(text + "colour: blue\n")
    (site.root / "transforms/tables/providers.yaml").unlink()
    row = next(i for i, line in enumerate(lines) if "table: providers" in line)
    table_at = f"{CHANNEL}:{row + 1}:{lines[row].index('providers') + 1}"
    return [
        (table_at, "table 'providers' does not exist"),
        (f"{CHANNEL}:{len(lines) + 1}:1", "unknown key 'colour' (expected one of: "),
    ]


def plural(n: int, noun: str) -> str:
    return rf"{n} {noun}s?"
