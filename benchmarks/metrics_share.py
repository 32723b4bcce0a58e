"""The share of the engine's event-loop CPU that metrics take under the bench's load, measured
by profiling, which a noisy machine does not blur as it blurs msg/s.

Runs the engine in this process on `engine bench`'s configuration (production profile, channel
siu-to-clinic-ehr, MLLP out to a fake EHR), drives N messages over C connections (the load
generator and the fake EHR share the loop, so the share is of all three), and prints the time
cProfile saw inside prometheus_client and engine/runtime/metrics.py against the whole.

Run: .venv/bin/python benchmarks/metrics_share.py [--messages 5000 --connections 8]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import tempfile
from pathlib import Path

from engine.bench import _bench_config, drive, free_port, make_messages
from engine.config import load
from engine.runtime.engine import Engine
from engine.testing.fake_ehr import FakeEhr

ROOT = Path(__file__).resolve().parents[1]
METRICS_CODE = ("prometheus_client", os.path.join("engine", "runtime", "metrics.py"))


async def profile(count: int, connections: int) -> pstats.Stats:
    payloads = make_messages((ROOT / "samples" / "siu_s12_new_patient.hl7").read_bytes(), count)
    with tempfile.TemporaryDirectory(prefix="engine-metrics-share-") as tmp:
        listen, ehr_port = free_port(), free_port()
        routes, settings = _bench_config(ROOT, Path(tmp), listen, ehr_port)
        os.environ.update(settings.environ)  # the audit key and identities of the profile
        os.chdir(tmp)
        async with FakeEhr(port=ehr_port) as ehr:
            engine = Engine(load(routes))
            await engine.start()
            profiler = cProfile.Profile()
            try:
                profiler.enable()
                load_result = await drive(listen, payloads, connections)
                await ehr.wait_until(lambda: len(ehr.received) >= count, timeout=300.0)
                profiler.disable()
            finally:
                await engine.stop()
    if load_result.acks.get("AA", 0) != count:
        raise SystemExit(f"not every message was accepted: {dict(load_result.acks)}")
    return pstats.Stats(profiler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    rows = asyncio.run(profile(args.messages, args.connections)).stats  # type: ignore[attr-defined]
    total = sum(row[2] for row in rows.values())  # tottime of every function
    inside = sum(row[2] for (file, _, _), row in rows.items()
                 if any(part in file for part in METRICS_CODE))  # fmt: skip
    print(f"{args.messages} messages over {args.connections} connections, profiled: "
          f"{total:.2f} s on the loop thread, {inside * 1000:.1f} ms in metrics "
          f"({100 * inside / total:.2f}%, {inside / args.messages * 1e6:.1f} µs per message "
          f"under the profiler)")  # fmt: skip


if __name__ == "__main__":
    main()
