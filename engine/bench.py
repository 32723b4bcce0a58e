"""`engine bench`: the engine end to end on the example channel, against a bare baseline.

What runs: the engine as its own process (`engine run`) on a copy of the shipped example
configuration (store in a temporary folder, free ports, the file archive destination left
out so that only the MLLP path is measured); a fake EHR and the load generator in this
process. N synthetic SIU^S12 messages (unique MSH-10, 500 appointment lanes) go over C MLLP
connections, each connection waiting for its ACK before the next message (the MLLP rule).

What it prints: ACK msg/s and ACK latency p50/p99 (the sender's view: AA only after the
durable commit), end-to-end msg/s (first send to last message received by the fake EHR),
lost (AA'd but never delivered) and duplicated (delivered more than once) counts, and the
same load against a bare `hl7.mllp` echo server (parse + ACK, no storage) as a ratio.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from engine.protocol.er7 import Message, peek_header
from engine.security.atrest import new_key_line
from engine.security.identities import Identities
from engine.security.identities_store import IdentityStore
from engine.testing.fake_ehr import FakeEhr
from engine.testing.mllp_client import MllpClient

CHANNEL = "siu-to-clinic-ehr"
LANES = 500


@dataclass
class LoadResult:
    messages: int
    seconds: float
    acks: Counter[str]
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000 if ordered else 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_messages(template: bytes, count: int) -> list[bytes]:
    base = Message.parse(template.decode("utf-8"))
    first = datetime(2030, 1, 7, 8, 0)
    out = []
    for i in range(count):
        m = base.copy()
        lane = i % LANES
        m.set("MSH-10", f"BENCH{i:08d}")
        m.set("SCH-1.1", f"APT{lane:05d}")
        # Each appointment in its own hour: a bench of one provider double-booked 500 times
        # would measure conflict reporting, not the feed.
        start = first + timedelta(hours=lane)
        m.set("SCH-11.4", start.strftime("%Y%m%d%H%M"))
        m.set("SCH-11.5", (start + timedelta(hours=1)).strftime("%Y%m%d%H%M"))
        out.append(m.to_er7().encode("utf-8"))
    return out


async def _connection(port: int, payloads: list[bytes], result: LoadResult) -> None:
    client = await MllpClient.connect("127.0.0.1", port)
    try:
        for payload in payloads:
            # perf_counter, not loop.time(): uvloop's clock has millisecond resolution.
            started = time.perf_counter()
            ack = await client.send(payload, timeout=60.0)
            result.latencies.append(time.perf_counter() - started)
            code = ack.split(b"MSA|", 1)[1][:2].decode() if b"MSA|" in ack else "??"
            result.acks[code] += 1
    finally:
        await client.close()


async def drive(port: int, payloads: list[bytes], connections: int) -> LoadResult:
    result = LoadResult(len(payloads), 0.0, Counter(), [])
    shares = [payloads[i::connections] for i in range(connections)]
    started = time.perf_counter()
    await asyncio.gather(*(_connection(port, share, result) for share in shares))
    result.seconds = time.perf_counter() - started
    return result


async def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)  # polling a port that is not open yet
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


@dataclass
class Production:
    """What the benches run the engine with: the production profile with its controls on, so
    the figures include them: the store seals at rest (a fresh key in an owner-only key file),
    the audit trail records (a fresh audit key) and HTTP listeners require a credential (an
    API key of the `system` role, what an EHR feed holds)."""

    security: dict[str, Any]
    environ: dict[str, str]
    api_key: str


def production(folder: Path) -> Production:
    key_file = _secret_file(folder / "atrest.keys", new_key_line("bench") + "\n")
    audit_key = _secret_file(folder / "audit.key", secrets.token_hex(32))
    identities = folder / "identities.db"
    store = IdentityStore(identities)
    try:
        ids = Identities(store)
        ids.add_user("bench", "system", secrets.token_urlsafe(24))  # owns the feed's key
        issued = ids.create_key("bench", "system", 24 * 3600.0)
    finally:
        store.close()
    environ = {**os.environ, "ENGINE_AUDIT_KEY_FILE": str(audit_key),
               "ENGINE_IDENTITIES_DB": str(identities)}  # fmt: skip
    environ.pop("ENGINE_AUDIT_KEY", None)
    return Production(
        security={"encryption": {"key_file": str(key_file), "current": "bench"}},
        environ=environ,
        api_key=issued.secret,
    )


def _secret_file(path: Path, text: str) -> Path:
    path.touch(mode=0o600)
    path.write_text(text)
    return path


def _bench_config(source: Path, folder: Path, listen: int, ehr: int) -> tuple[Path, Production]:
    settings = production(folder)
    shutil.copytree(source / "transforms", folder / "transforms")
    (folder / "channels").mkdir()
    channel = yaml.safe_load((source / "channels" / f"{CHANNEL}.yaml").read_text())
    channel["destinations"] = {"clinic-ehr": channel["destinations"]["clinic-ehr"]}
    channel["destinations"]["clinic-ehr"]["mllp"]["port"] = ehr
    channel.pop("tests", None)
    (folder / "channels" / f"{CHANNEL}.yaml").write_text(yaml.safe_dump(channel))
    routes = {
        "store": "sqlite:data/engine.db",
        "security": settings.security,
        "listeners": {"bench": {"mllp": {"port": listen}, "ack": "processed"}},
        "routes": {"bench": [CHANNEL]},
    }
    (folder / "routes.yaml").write_text(yaml.safe_dump(routes))
    return folder / "routes.yaml", settings


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def bench_engine(source: Path, count: int, connections: int) -> dict[str, Any]:
    payloads = make_messages((source / "samples" / "siu_s12_new_patient.hl7").read_bytes(), count)
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp:
        listen, ehr_port = free_port(), free_port()
        routes, settings = _bench_config(source, Path(tmp), listen, ehr_port)
        async with FakeEhr(port=ehr_port) as ehr:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "engine",
                    "run",
                    "--config",
                    str(routes),
                    "--log-level",
                    "warning",
                ],
                cwd=tmp,
                env=settings.environ,
            )
            try:
                await wait_port(listen, proc)
                started = time.perf_counter()
                load = await drive(listen, payloads, connections)
                acked = load.acks.get("AA", 0)
                last = [started]

                def progressed() -> bool:
                    last[0] = time.perf_counter()
                    return len(ehr.received) >= acked

                await ehr.wait_until(progressed, timeout=120.0)
                delivered_seconds = last[0] - started
            finally:
                stop_process(proc)
            received = Counter(peek_header(p).control_id for p in ehr.received)
    sent_ids = {f"BENCH{i:08d}" for i in range(count)}
    return {
        "messages": count,
        "connections": connections,
        "ack_per_second": round(load.rate),
        "ack_p50_ms": round(load.percentile(0.50), 2),
        "ack_p99_ms": round(load.percentile(0.99), 2),
        "acks": dict(load.acks),
        "delivered_per_second": round(len(received) / delivered_seconds),
        "lost": len(sent_ids - set(received)) if acked == count else count - len(received),
        "duplicated": sum(n - 1 for n in received.values() if n > 1),
    }


async def bench_baseline(source: Path, count: int, connections: int) -> dict[str, Any] | None:
    try:
        import hl7  # noqa: F401
    except ImportError:
        return None
    payloads = make_messages((source / "samples" / "siu_s12_new_patient.hl7").read_bytes(), count)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.testing.hl7_echo", str(port)], stdout=subprocess.DEVNULL
    )
    try:
        await wait_port(port, proc)
        load = await drive(port, payloads, connections)
    finally:
        stop_process(proc)
    return {
        "ack_per_second": round(load.rate),
        "ack_p50_ms": round(load.percentile(0.5), 2),
        "ack_p99_ms": round(load.percentile(0.99), 2),
    }


def run_bench(
    count: int, connections: int, baseline: bool, as_json: bool, source: Path | None = None
) -> int:
    source = source or Path(os.getcwd())
    if not (source / "channels" / f"{CHANNEL}.yaml").exists():
        sys.stderr.write(f"engine: run bench from the project folder ({CHANNEL} not found)\n")
        return 2

    async def both() -> dict[str, Any]:
        report: dict[str, Any] = {"engine": await bench_engine(source, count, connections)}
        if baseline:
            report["hl7_mllp_echo"] = await bench_baseline(source, count, connections)
        return report

    try:
        import uvloop

        report = uvloop.run(both())
    except ImportError:  # pragma: no cover
        report = asyncio.run(both())
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    engine = report["engine"]
    return 0 if engine["lost"] == 0 and engine["duplicated"] == 0 else 1


def _print(report: dict[str, Any]) -> None:
    e = report["engine"]
    print(
        f"engine bench: {e['messages']} SIU^S12 over {e['connections']} MLLP connections, "
        f"channel {CHANNEL} (map, set, remove) -> MLLP fake EHR"
    )
    print(
        f"  ACK           {e['ack_per_second']:>8} msg/s   p50 {e['ack_p50_ms']} ms   "
        f"p99 {e['ack_p99_ms']} ms   codes {e['acks']}"
    )
    print(f"  end to end    {e['delivered_per_second']:>8} msg/s delivered")
    print(f"  lost {e['lost']}   duplicated {e['duplicated']}")
    base = report.get("hl7_mllp_echo")
    if base:
        print(
            f"  hl7.mllp echo {base['ack_per_second']:>8} msg/s   p50 {base['ack_p50_ms']} ms   "
            f"p99 {base['ack_p99_ms']} ms   (parse + ACK, nothing stored)"
        )
        print(
            f"  ratio engine ACK / echo {e['ack_per_second'] / base['ack_per_second']:.2f}   "
            f"end to end / echo {e['delivered_per_second'] / base['ack_per_second']:.2f}"
        )
