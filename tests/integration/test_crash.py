"""`kill -9` of a real engine process while messages flow: after a restart every message that
got an AA is delivered (at least once). Nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from engine.protocol.er7 import peek_header
from engine.testing.fake_ehr import FakeEhr
from engine.testing.mllp_client import MllpClient
from tests.integration.cli_support import CLI_ENV
from tests.integration.conftest import (
    ack_code,
    channel,
    eventually,
    free_port,
    listening,
    sample,
    write_config,
)

SENDERS = 4
KILL_AFTER = 300  # AAs before the kill


def start_engine(routes: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "engine", "run", "--config", str(routes),
             "--log-level", "warning"],
            cwd=routes.parent, stdout=out, stderr=out,
            # With the audit trail on, as in production (the test config is development).
            env={**CLI_ENV, "ENGINE_AUDIT_KEY": secrets.token_hex(32)},
        )


async def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    async def up() -> bool:
        assert proc.poll() is None, "the engine exited"
        return listening(port)

    await eventually(up, timeout=30, what="the engine's listener")


async def test_kill_9_loses_nothing_that_was_acked(tmp_path: Path) -> None:
    """The EHR is up for the first half (deliveries flow), then down (deliveries queue and
    retry); the engine is killed with a backlog and messages in flight."""
    listen, ehr_port = free_port(), free_port()
    # Retries never run out here: every queued delivery must still be queued at the kill.
    retry = {"attempts": 1000, "first": "50ms", "max": "100ms"}
    routes = write_config(tmp_path, listen, {"to-ehr": channel(ehr_port, retry=retry)})
    log = tmp_path / "engine.log"
    base = sample("siu_s12_new_patient.hl7")
    acked: set[str] = set()
    half, enough = asyncio.Event(), asyncio.Event()

    async def sender(n: int) -> None:
        try:
            async with await MllpClient.connect("127.0.0.1", listen) as client:
                for i in range(100_000):
                    control_id = f"K{n}X{i:06d}"
                    data = base.replace(b"MSG00001", control_id.encode(), 1)
                    data = data.replace(b"APT1001", f"APT{i % 50:04d}".encode(), 1)
                    if ack_code(await client.send(data, timeout=10)) == "AA":
                        acked.add(control_id)
                    if len(acked) >= KILL_AFTER // 2:
                        half.set()
                    if len(acked) >= KILL_AFTER:
                        enough.set()
        except (ConnectionError, OSError, TimeoutError):
            return  # the engine was killed under us

    first_ehr = FakeEhr(port=ehr_port)
    await first_ehr.start()
    proc = start_engine(routes, log)
    try:
        await wait_listening(listen, proc)
        senders = [asyncio.create_task(sender(n)) for n in range(SENDERS)]
        await asyncio.wait_for(half.wait(), 60)
        await first_ehr.stop()
        await asyncio.wait_for(enough.wait(), 60)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        await asyncio.gather(*senders)
        delivered_before = {peek_header(p).control_id for p in first_ehr.received}
        assert len(acked - delivered_before) >= KILL_AFTER // 4  # a real backlog at the kill

        async with FakeEhr(port=ehr_port) as second_ehr:
            proc = start_engine(routes, log)
            await wait_listening(listen, proc)

            def all_acked_delivered() -> bool:
                got = {peek_header(p).control_id for p in second_ehr.received}
                return acked <= delivered_before | got

            await second_ehr.wait_until(all_acked_delivered, timeout=60)
    finally:
        proc.terminate()
        proc.wait(30)
