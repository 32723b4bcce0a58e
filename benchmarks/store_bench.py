"""Store benchmark: group-commit ingest and record_attempt throughput of the SQLite store.

N ingests (an ~800-byte synthetic SIU^S12, one channel result, one queued delivery) from C
concurrent tasks, then one record_attempt per delivery from the same C tasks. Prints ingests/s,
commits, mean rows and ops per commit, p50/p99 ingest latency, the cost of one duplicate
check and attempts/s. The database
lives in a fresh temporary directory on the disk given by --dir (default: the current
directory, not /tmp, which may be RAM-backed and would hide the fsync). `--sealed` runs the
store with an at-rest key, as the production profile does (engine.security.atrest).

    .venv/bin/python benchmarks/store_bench.py -n 50000 -c 256 [--sealed]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from engine.security.atrest import KEY_BYTES, KeyRing, RowSealer
from engine.store.base import (
    Attempt,
    Ingest,
    MessageKeys,
    NewChannelResult,
    NewDelivery,
    NewMessage,
)
from engine.store.sqlite import SqliteStore

# Synthetic: invented names and ids only.
_SIU = (
    "MSH|^~\\&|BENCH_EHR|BENCH_FAC|CLINIC|CLINIC_FAC|20250101120000||SIU^S12|{cid}|P|2.5.1\r"
    "SCH|APT{n}^BENCH|FIL{n}^BENCH|||||FOLLOWUP^Follow up^HL70276|Normal|30|min|"
    "^^30^20250102090000^20250102093000|||||DRW^Doe^Robin|555-0100||||Booked\r"
    "TQ1|1||||||20250102090000|20250102093000\r"
    "NTE|1||Synthetic benchmark appointment, not a real patient\r"
    "PID|1||PAT{n}^^^BENCH^MR||Testperson^Alex^Q||19800101|U|||1 Example Way^^Sampletown^ST^"
    "00000||555-0199\r"
    "PV1|1|O|CLINIC^101^A|||||DRW^Doe^Robin^^^^MD|||||||||||V{n}\r"
    "DG1|1||Z00.00^Encounter for general adult medical examination^I10\r"
    "RGS|1\r"
    "AIS|1||FOLLOWUP^Follow up visit|20250102090000|||30|min\r"
    "AIG|1||ROOM101^Exam room 101\r"
    "AIL|1||CLINIC^101^A|||20250102090000|||30|min\r"
    "AIP|1||DRW^Doe^Robin^^^^MD|ATND|||20250102090000|||30|min||Booked\r"
)


def make_ingest(n: int) -> Ingest:
    cid = f"BENCH{n:09d}"
    raw = _SIU.format(cid=cid, n=n).encode()
    keys = MessageKeys(
        sender="BENCH_EHR", facility="BENCH_FAC", control_id=cid, message_type="SIU^S12",
        version="2.5.1", patient_ids=(f"PAT{n}",), appointment_ids=(f"APT{n}", f"FIL{n}"),
    )
    ack = f"MSH|^~\\&|CLINIC|CLINIC_FAC|BENCH_EHR|BENCH_FAC|||ACK^S12^ACK|A{cid}|P|2.5.1\r"
    message = NewMessage(
        received_at=time.time(), listener="bench", content_type="application/hl7-v2",
        charset="utf-8", raw=raw, keys=keys, status="processed", ack_code="AA",
        ack=(ack + f"MSA|AA|{cid}\r").encode(),
    )
    return Ingest(
        message=message,
        results=(NewChannelResult(channel="bench-channel", status="ok", output=raw),),
        deliveries=(
            NewDelivery(
                channel="bench-channel", destination="bench-dest", lane="", payload=raw,
                next_attempt_at=message.received_at,
            ),
        ),
    )


async def run_concurrently(
    count: int, tasks: int, work: Callable[[int], Awaitable[None]]
) -> list[float]:
    """`work(i)` for i in range(count), from `tasks` workers; returns per-call latencies."""
    latencies: list[float] = []
    counter = iter(range(count))

    async def worker() -> None:
        for i in counter:
            started = time.perf_counter()
            await work(i)
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(tasks)))
    return latencies


def _pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def bench(n: int, concurrency: int, directory: Path, sealed: bool) -> None:
    ring = KeyRing({"bench": secrets.token_bytes(KEY_BYTES)}, "bench") if sealed else None
    with tempfile.TemporaryDirectory(dir=directory, prefix="store-bench-") as tmp:
        store = SqliteStore(Path(tmp) / "bench.db", sealer=RowSealer(ring))
        await store.open()
        items = [make_ingest(i) for i in range(n)]
        delivery_ids: list[int] = [0] * n

        async def ingest(i: int) -> None:
            delivery_ids[i] = (await store.ingest(items[i])).delivery_ids[0]

        started = time.perf_counter()
        latencies = await run_concurrently(n, concurrency, ingest)
        elapsed = time.perf_counter() - started
        s = store.stats()
        latencies.sort()
        print(f"ingest: {n} messages from {concurrency} tasks in {elapsed:.2f}s")
        print(f"  ingests/s          {n / elapsed:,.0f}")
        print(f"  commits            {s.commits}")
        print(f"  rows per commit    {s.rows / max(1, s.commits):.1f} (mean)")
        print(f"  ingests per commit {s.extra['ops'] / max(1, s.commits):.1f} (mean)")
        print(f"  commit (fsync) s   {s.commit_seconds:.2f} of {elapsed:.2f}")
        print(f"  latency p50/p99    {_pct(latencies, 0.5) * 1e3:.2f} / "
              f"{_pct(latencies, 0.99) * 1e3:.2f} ms")

        # The duplicate check runs once per message on the event loop: time it inline.
        started = time.perf_counter()
        for i in range(n):
            hit = await store.find_duplicate("BENCH_EHR", f"BENCH{i:09d}", 0.0)
            assert hit is not None
        elapsed = time.perf_counter() - started
        print(f"find_duplicate (hit, on the loop): {elapsed / n * 1e6:.1f} us per call")

        commits_before = s.commits

        async def attempt(i: int) -> None:
            now = time.time()
            await store.record_attempt(
                Attempt(delivery_id=delivery_ids[i], number=1, started_at=now, latency=0.002,
                        outcome="sent", code="AA", response=b"MSA|AA|x\r")
            )

        started = time.perf_counter()
        await run_concurrently(n, concurrency, attempt)
        elapsed = time.perf_counter() - started
        print(f"record_attempt: {n} from {concurrency} tasks in {elapsed:.2f}s")
        print(f"  attempts/s         {n / elapsed:,.0f}")
        print(f"  commits            {store.stats().commits - commits_before}")
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50_000, help="ingests (and attempts)")
    parser.add_argument("-c", "--concurrency", type=int, default=256, help="concurrent tasks")
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="where the db goes")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    parser.add_argument("--sealed", action="store_true", help="encrypt at rest (one key)")
    args = parser.parse_args()
    coro = bench(args.n, args.concurrency, args.dir, args.sealed)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


if __name__ == "__main__":
    main()
