"""Support for the CLI tests: a copy of the shipped example with free ports, fast retries and
the environment it needs, `engine run` as a subprocess, and `engine ...` run as a command.
The example's destinations (fake EHR, FHIR server, webhook receiver) are in `cli_fakes`.

The rule kept: every `engine` subprocess of a Site runs with the Site's environment (its
WEBHOOK_SECRET and the two destination URLs), and nothing from the developer's own shell
decides where the example delivers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

from tests.integration.conftest import PROJECT, eventually, listening

ENGINE = (sys.executable, "-m", "engine")
CHANNEL = "channels/siu-to-clinic-ehr.yaml"
FHIR_CHANNEL = "channels/siu-to-fhir.yaml"
BOOKINGS_CHANNEL = "channels/fhir-to-siu.yaml"
EVENTS_CHANNEL = "channels/appointment-events.yaml"
FAST_RETRY = "retry: {attempts: 2, backoff: exponential, first: 50ms, max: 200ms}"
NEW_PATIENT = "samples/siu_s12_new_patient.hl7"
PIPE = asyncio.subprocess.PIPE
# The variables the example's channels read, and the audit key's; a developer's own values
# must not leak in.
EXAMPLE_VARIABLES = (
    "WEBHOOK_SECRET", "FHIR_BASE_URL", "NOTIFICATIONS_URL",
    "ENGINE_AUDIT_KEY", "ENGINE_AUDIT_KEY_FILE", "ENGINE_AUDIT_DB",
)
# As an operator's shell runs them: with stdout block-buffered when it is a pipe, so a command
# that forgets to flush (or to handle a closed pipe at exit) shows here.
CLI_ENV = {
    k: v for k, v in os.environ.items()
    if k != "PYTHONUNBUFFERED" and k not in EXAMPLE_VARIABLES
}


def webhook_secret() -> str:
    """A fresh secret, made the way `make run` makes one (not by the engine's own code)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def example_env(**values: str) -> dict[str, str]:
    """What a user's shell holds for the example: a WEBHOOK_SECRET (as `make run` sets), an
    audit key (so the store commands are audited, not warned about) and any of the other
    example variables given."""
    return {
        **CLI_ENV,
        "WEBHOOK_SECRET": webhook_secret(),
        "ENGINE_AUDIT_KEY": secrets.token_hex(32),
        **values,
    }


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free now: all are held bound until every one is chosen."""
    held = [socket.socket() for _ in range(count)]
    try:
        for sock in held:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in held]
    finally:
        for sock in held:
            sock.close()


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


async def engine(
    *args: str,
    cwd: Path,
    stdout: int = PIPE,
    timeout: float = 60.0,
    env: Mapping[str, str] = CLI_ENV,
) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *ENGINE, *args, cwd=cwd, stdout=stdout, stderr=PIPE, env=dict(env)
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


def expect(path: Path, pattern: str) -> None:
    """`pattern` (a regex) is in the file: the example still reads what the Site provides."""
    assert re.search(pattern, path.read_text()), f"expected '{pattern}' in {path}"


@dataclass
class Site:
    """A copy of the example configuration, its ports and environment, and the commands run
    on it. `listen` is the SIU feed's MLLP port, `http` the booking API's; both MLLP channels
    deliver to the fake EHR on `ehr_port`, the FHIR channel to a FHIR server on `fhir_port`,
    the events to a webhook receiver on `webhooks_port`."""

    root: Path
    listen: int
    http: int
    ehr_port: int
    fhir_port: int
    webhooks_port: int
    env: dict[str, str] = dataclass_field(repr=False)

    @property
    def routes(self) -> Path:
        return self.root / "routes.yaml"

    @property
    def secret(self) -> str:
        return self.env["WEBHOOK_SECRET"]

    @property
    def fhir_api(self) -> str:
        """The engine's own FHIR endpoint (the booking API listener)."""
        return f"http://127.0.0.1:{self.http}/fhir"

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
            env=self.env,
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
    listen, http, ehr_port, fhir_port, webhooks_port, admin = free_ports(6)
    patch(root / "routes.yaml", r"\bport: 2575\b", f"port: {listen}")
    patch(root / "routes.yaml", r"\bport: 8080\b", f"port: {http}")
    patch(root / "routes.yaml", r"\bport: 8081\b", f"port: {admin}")
    for channel in (CHANNEL, BOOKINGS_CHANNEL):  # one clinic EHR takes both MLLP feeds
        patch(root / channel, r"\bport: 6661\b", f"port: {ehr_port}")
    patch(root / CHANNEL, r"retry: \{[^}]*\}", retry)
    expect(root / FHIR_CHANNEL, r"\$\{FHIR_BASE_URL:-[^}]*\}")
    expect(root / EVENTS_CHANNEL, r"\$\{NOTIFICATIONS_URL:-[^}]*\}")
    expect(root / EVENTS_CHANNEL, r"secret: \$\{WEBHOOK_SECRET\}")
    env = example_env(
        FHIR_BASE_URL=f"http://127.0.0.1:{fhir_port}/fhir",
        NOTIFICATIONS_URL=f"http://127.0.0.1:{webhooks_port}/hooks/appointments",
    )
    return Site(root, listen, http, ehr_port, fhir_port, webhooks_port, env)


@asynccontextmanager
async def engine_running(site: Site) -> AsyncIterator[Path]:
    """`engine run` as a subprocess; yields its log file once both listeners accept
    connections. Stopped with SIGTERM, which must end it cleanly (exit 0)."""
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
            env=site.env,
        )

    async def up() -> bool:
        assert proc.returncode is None, f"the engine exited:\n{log.read_text()}"
        return listening(site.listen) and listening(site.http)

    async def stop() -> int:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(proc.wait(), 30)

    try:
        await eventually(up, timeout=30, what="the engine's listeners")
        yield log
    except BaseException:
        await stop()
        raise
    assert await stop() == 0, log.read_text()
    assert "Traceback" not in log.read_text()


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
    """An unknown key in the SIU channel and a missing table (providers, which every channel
    mapping AIP-3.1 reads); returns (file:line:column, message start) of each problem."""
    path = site.root / CHANNEL
    text = path.read_text()
    text += "" if text.endswith("\n") else "\n"
    lines = text.splitlines()
    path.write_text(text + "colour: blue\n")
    (site.root / "transforms/tables/providers.yaml").unlink()
    missing = [
        (f"channels/{channel.name}:{row + 1}:{line.index('providers') + 1}",
         "table 'providers' does not exist")
        for channel in sorted((site.root / "channels").glob("*.yaml"))
        for row, line in enumerate(channel.read_text().splitlines())
        if re.search(r"\btable: providers\b", line)
    ]
    assert any(where.startswith(f"{CHANNEL}:") for where, _ in missing), missing
    return [*missing, (f"{CHANNEL}:{len(lines) + 1}:1", "unknown key 'colour' (expected one of: ")]


def plural(n: int, noun: str) -> str:
    return rf"{n} {noun}s?"
