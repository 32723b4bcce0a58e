"""`engine bench --fhir`: POSTed Appointments per second through the FHIR listener.

What runs: the engine as its own process on a copy of the shipped `fhir-to-siu` channel
(store in a temporary folder, free ports), a fake MLLP EHR and the load generator in this
process. N synthetic Appointments (unique identifiers, one practitioner, back-to-back
half-hour slots so none overlaps) are POSTed over C keep-alive HTTP connections, each
connection waiting for its answer before the next request.

Each request is validated (fhir.resources R4B plus the engine's rules), judged against the
appointment state, converted to SIU, mapped, and committed durably with its appointment
version and queued delivery before the 201 is sent.

What it prints: created/s and request latency p50/p99 (the client's view: 201 only after the
durable commit), end-to-end/s (first request to last S12 received by the fake EHR), lost
(201 but never delivered) and duplicated counts.
"""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from engine.bench import (
    LoadResult,
    Production,
    free_port,
    production,
    stop_process,
    wait_port,
)
from engine.protocol.er7 import Message
from engine.testing.fake_ehr import FakeEhr

CHANNEL = "fhir-to-siu"
SAMPLE = "fhir_appointment_booked.json"
SLOT = timedelta(minutes=30)


def make_appointments(template: dict[str, Any], count: int) -> list[bytes]:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    out = []
    for i in range(count):
        resource = copy.deepcopy(template)
        resource["identifier"][0]["value"] = f"BENCH{i:08d}"
        begin = start + i * SLOT
        resource["start"] = begin.isoformat().replace("+00:00", "Z")
        resource["end"] = (begin + SLOT).isoformat().replace("+00:00", "Z")
        out.append(json.dumps(resource).encode())
    return out


def _config(source: Path, folder: Path, http_port: int, ehr_port: int) -> tuple[Path, Production]:
    settings = production(folder)
    shutil.copytree(source / "transforms", folder / "transforms")
    (folder / "channels").mkdir()
    channel = yaml.safe_load((source / "channels" / f"{CHANNEL}.yaml").read_text())
    (destination,) = channel["destinations"].values()
    destination["mllp"]["port"] = ehr_port
    channel.pop("tests", None)
    (folder / "channels" / f"{CHANNEL}.yaml").write_text(yaml.safe_dump(channel))
    routes = {
        "store": "sqlite:data/engine.db",
        "security": settings.security,
        "listeners": {"api": {"http": {"port": http_port}, "ack": "processed"}},
        "routes": {"api": [CHANNEL]},
    }
    (folder / "routes.yaml").write_text(yaml.safe_dump(routes))
    return folder / "routes.yaml", settings


async def _client(
    port: int, path: str, api_key: str, bodies: list[bytes], result: LoadResult
) -> None:
    """One keep-alive HTTP/1.1 connection sending its share one request at a time.

    A few lines of HTTP rather than aiohttp's client: on two cores the load generator shares
    the machine with the engine, and aiohttp's client costs about as much CPU per request as
    the engine's whole intake, so the figure would measure the client (measured: 480/s with
    it). Only what this bench sends and the engine answers is handled: a status line,
    headers, a Content-Length body.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {api_key}\r\n"
        "Content-Type: application/fhir+json\r\nPrefer: return=minimal\r\n"
    )
    try:
        for body in bodies:
            started = time.perf_counter()
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            result.latencies.append(time.perf_counter() - started)
            result.acks[str(status)] += 1
    finally:
        writer.close()


async def bench_fhir(source: Path, count: int, connections: int) -> dict[str, Any]:
    template = json.loads((source / "samples" / SAMPLE).read_text())
    bodies = make_appointments(template, count)
    with tempfile.TemporaryDirectory(prefix="engine-bench-fhir-") as tmp:
        http_port, ehr_port = free_port(), free_port()
        routes, settings = _config(source, Path(tmp), http_port, ehr_port)
        async with FakeEhr(port=ehr_port) as ehr:
            command = [sys.executable, "-m", "engine", "run", "--config", str(routes),
                       "--log-level", "warning"]
            proc = subprocess.Popen(command, cwd=tmp, env=settings.environ)
            try:
                await wait_port(http_port, proc)
                load = LoadResult(count, 0.0, Counter(), [])
                started = time.perf_counter()
                await asyncio.gather(*(
                    _client(http_port, "/fhir/Appointment", settings.api_key,
                            bodies[i::connections], load)
                    for i in range(connections)
                ))
                load.seconds = time.perf_counter() - started
                created = load.acks.get("201", 0)
                last = [started]

                def progressed() -> bool:
                    last[0] = time.perf_counter()
                    return len(ehr.received) >= created

                await ehr.wait_until(progressed, timeout=120.0)
            finally:
                stop_process(proc)
            received = Counter(Message.parse(p.decode()).get("SCH-1.1") for p in ehr.received)
    sent = {f"BENCH{i:08d}" for i in range(count)}
    return {
        "appointments": count,
        "connections": connections,
        "created_per_second": round(load.rate),
        "p50_ms": round(load.percentile(0.50), 2),
        "p99_ms": round(load.percentile(0.99), 2),
        "statuses": dict(load.acks),
        "delivered_per_second": round(len(received) / (last[0] - started)),
        "lost": len(sent - set(received)) if created == count else count - len(received),
        "duplicated": sum(n - 1 for n in received.values() if n > 1),
    }


def run_fhir_bench(count: int, connections: int, as_json: bool, source: Path) -> int:
    if not (source / "channels" / f"{CHANNEL}.yaml").exists():
        sys.stderr.write(f"engine: run bench from the project folder ({CHANNEL} not found)\n")
        return 2
    try:
        import uvloop

        report = uvloop.run(bench_fhir(source, count, connections))
    except ImportError:  # pragma: no cover
        report = asyncio.run(bench_fhir(source, count, connections))
    if as_json:
        print(json.dumps({"fhir": report}, indent=2))
    else:
        print(
            f"engine bench --fhir: {report['appointments']} Appointments POSTed over "
            f"{report['connections']} HTTP connections, channel {CHANNEL} "
            "(validate, judge, convert to SIU, map) -> MLLP fake EHR"
        )
        print(
            f"  created       {report['created_per_second']:>8} /s   p50 {report['p50_ms']} ms"
            f"   p99 {report['p99_ms']} ms   statuses {report['statuses']}"
        )
        print(f"  end to end    {report['delivered_per_second']:>8} /s delivered as SIU")
        print(f"  lost {report['lost']}   duplicated {report['duplicated']}")
    return 0 if report["lost"] == 0 and report["duplicated"] == 0 else 1
