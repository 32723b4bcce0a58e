"""The example's destinations for the CLI tests, started the way the README tour starts them:
`engine fake-ehr --port P`, `engine fake-fhir --port P` and `engine fake-webhooks --port P`
(its secret from `$WEBHOOK_SECRET`) as subprocesses of a Site; or the test kit's FakeFhir and
WebhookReceiver in process, beside a test's in-process FakeEhr.

Rules kept: a test waits for a line a fake printed (or for a fake's own condition), never for
time to pass; each subprocess's stdout is drained by a task of its own, so a fake that prints a
lot never blocks on a full pipe; and each fake must end cleanly on Ctrl-C (exit 130).
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

from engine.testing.fake_fhir import FakeFhir
from engine.testing.webhook_receiver import WebhookReceiver
from tests.integration.cli_support import ENGINE, PIPE, Site, field

_EHR_HEADER = re.compile(r"control id (\S+)  type (\S+)")
# `engine fake-fhir`: "PUT /fhir/Appointment?identifier=… -> 201"
_FHIR_REQUEST = re.compile(r"(\S+) (\S+) -> (\d{3})")
# `engine fake-webhooks`: "204 accepted id=msg_1_ab12 appointment.created"
_WEBHOOK_ACCEPTED = re.compile(r"2\d\d accepted id=(\S+) (\S+)")

T = TypeVar("T", bound="Output")


class Output:
    """A fake's stdout, line by line as it arrives."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.lines: list[str] = []
        self.ended = False
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
            self._changed.set()
        self.ended = True
        self._changed.set()

    async def wait_until(self, done: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not done():
                    assert not self.ended, f"the {self.name} exited before {what}"
                    self._changed.clear()  # no await since done(): no line can slip by
                    await self._changed.wait()
        except TimeoutError:
            shown = "\n".join(self.lines[-10:])
            raise AssertionError(
                f"the {self.name} printed no {what} within {timeout:g} s; its last lines:\n"
                f"{shown}"
            ) from None

    def matching(self, pattern: re.Pattern[str]) -> list[re.Match[str]]:
        return [m for m in map(pattern.fullmatch, self.lines) if m is not None]

    async def interrupt(self) -> int:
        """Ctrl-C, as in the README tour; returns the exit status."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        await asyncio.wait_for(self._reader, 30)
        return code


@dataclass(frozen=True)
class Received:
    """One message as the fake EHR printed it: header line, then one segment a line."""

    control_id: str
    type: str
    segments: tuple[str, ...]

    def field(self, segment: str, number: int, component: int = 1) -> str:
        return field("\r".join(self.segments).encode(), segment, number, component)


class EhrOutput(Output):
    def received(self) -> list[Received]:
        """Every message printed so far, in arrival order (the last one may still be missing
        segments that are on their way)."""
        out: list[tuple[str, str, list[str]]] = []
        for line in self.lines:
            header = _EHR_HEADER.fullmatch(line)
            if header:
                out.append((header[1], header[2], []))
            elif line.startswith("  ") and out:
                out[-1][2].append(line[2:])
        return [Received(c, t, tuple(segments)) for c, t, segments in out]

    @property
    def control_ids(self) -> list[str]:
        return [r.control_id for r in self.received()]

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[str]:
        """Control ids of the first `count` messages received, in arrival order."""
        await self.wait_until(
            lambda: len(self.control_ids) >= count, f"{count} messages", timeout
        )
        return self.control_ids[:count]


class FhirOutput(Output):
    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request the fake FHIR server answered."""
        return [(m[1], m[2], int(m[3])) for m in self.matching(_FHIR_REQUEST)]


class WebhookOutput(Output):
    def events(self) -> list[tuple[str, str]]:
        """(webhook-id, event type) of every event the receiver accepted (signature good)."""
        return [(m[1], m[2]) for m in self.matching(_WEBHOOK_ACCEPTED)]


@asynccontextmanager
async def fake_process(
    site: Site, command: str, port: int, ready: str, kind: type[T]
) -> AsyncIterator[T]:
    """`engine <command> --port <port>` in the Site's environment; its first line must start
    with `ready` (so its output is flushed, and it took the configuration it was given)."""
    proc = await asyncio.create_subprocess_exec(
        *ENGINE,
        command,
        "--port",
        str(port),
        cwd=site.root,
        stdout=PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=site.env,
    )
    out = kind(proc, command)
    try:
        await out.wait_until(lambda: bool(out.lines), "line (is its output flushed?)", 30)
        assert out.lines[0].startswith(ready), out.lines[0]
        yield out
    finally:
        code = await out.interrupt()
    assert code == 130, f"{command} exited with {code}"


@asynccontextmanager
async def fake_ehr_process(site: Site) -> AsyncIterator[EhrOutput]:
    ready = f"fake EHR listening on 127.0.0.1:{site.ehr_port}"
    async with fake_process(site, "fake-ehr", site.ehr_port, ready, EhrOutput) as ehr:
        yield ehr


@dataclass(frozen=True)
class Fakes:
    ehr: EhrOutput
    fhir: FhirOutput
    webhooks: WebhookOutput


@asynccontextmanager
async def fakes_running(site: Site) -> AsyncIterator[Fakes]:
    """Every destination of the example up, as the README tour starts them."""
    fhir_ready = f"fake FHIR server listening on http://127.0.0.1:{site.fhir_port}/fhir"
    # With $WEBHOOK_SECRET set the receiver says nothing of a secret: a first line
    # "webhook secret (generated)" would mean it never got the engine's.
    hooks_ready = f"webhook receiver listening on http://127.0.0.1:{site.webhooks_port}/"
    async with (
        fake_ehr_process(site) as ehr,
        fake_process(site, "fake-fhir", site.fhir_port, fhir_ready, FhirOutput) as fhir,
        fake_process(
            site, "fake-webhooks", site.webhooks_port, hooks_ready, WebhookOutput
        ) as webhooks,
    ):
        yield Fakes(ehr, fhir, webhooks)


@asynccontextmanager
async def http_fakes_in_process(site: Site) -> AsyncIterator[tuple[FakeFhir, WebhookReceiver]]:
    """The FHIR server and webhook receiver of the example, in this process, on the Site's
    ports and with its secret."""
    async with (
        FakeFhir(port=site.fhir_port) as fhir,
        WebhookReceiver([site.secret], port=site.webhooks_port) as hooks,
    ):
        yield fhir, hooks
