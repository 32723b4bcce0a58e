"""Message search benchmark: a page of 50, newest first, per filter, over a large sealed store.

Loads N synthetic messages (default 1,000,000) into a store sealed at rest with a key, as the
production profile runs it, so a patient id is found through the blind index. The spread is
meant to look like a clinic's months: many patients and appointments, unique control ids with
some resent, several channels and destinations, a few errors and rejections, AE/AR answers,
deliveries mostly sent, some failed (one destination had a two-day outage), queued or
discarded, received times over N/5,600 days (~180 days for 1M) a few seconds out of order.

Loading takes the bulk path: the engine's own write operations (sqlite_writes.ingest_many,
record_attempt_many, discard, so the rows, sealing and blind index are exactly what the engine
writes) run in transactions of a few thousand messages with synchronous=OFF, instead of one
group commit per burst of live traffic.

Then each filter, alone and with a time range, runs K times with values drawn from the data
(`SqliteStore.search`, the path the CLI and the admin API take, rows opened and all) and the
script prints p50/p95/max per filter and the store's size. The store lives in a temporary
directory under --dir (removed at the end) unless `--keep PATH` names a file to keep (loaded
when missing, reused when there; its key sits beside it as PATH.key, the data's shape as
PATH.json).

    .venv/bin/python benchmarks/search_bench.py [-n 1000000] [-k 50] [--keep PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.security.atrest import KeyRing, RowSealer, load_key_file, new_key_line
from engine.store import sqlite_writes as writes
from engine.store.base import (
    Attempt,
    Ingest,
    MessageFilter,
    MessageKeys,
    MessageStatus,
    NewChannelResult,
    NewDelivery,
    NewMessage,
)
from engine.store.sqlite import SqliteStore
from engine.store.sqlite_schema import connect, prepare

PAGE = 50
BATCH = 5000
SECONDS_PER_MESSAGE = 15.5  # 1M messages over ~180 days
# (value, weight): what a clinic's feed looks like, more or less.
TYPES = [("SIU^S12", 35), ("SIU^S13", 12), ("SIU^S14", 20), ("SIU^S15", 10), ("SIU^S26", 3),
         ("ADT^A04", 5), ("ADT^A08", 10), ("Appointment", 5)]
STATUSES: list[tuple[MessageStatus, int]] = [
    ("processed", 940), ("error", 30), ("rejected", 20), ("duplicate", 10)]
CHANNELS = [(f"channel-{n}", w) for n, w in enumerate((30, 25, 15, 10, 8, 6, 4, 2))]
OUTAGE_DESTINATION = "dest-3"

# Synthetic: invented names and ids only.
_HL7 = (
    "MSH|^~\\&|SRC_EHR|SRC_FAC|CLINIC|CLINIC_FAC|20250101120000||{type}|{cid}|P|2.5.1\r"
    "SCH|{apt}^SRC|{fil}^SRC|||||FOLLOWUP^Follow up^HL70276|Normal|30|min|"
    "^^30^20250102090000^20250102093000|||||DRW^Doe^Robin|555-0100||||Booked\r"
    "NTE|1||Synthetic benchmark appointment, not a real patient\r"
    "PID|1||{pat}^^^SRC^MR||Testperson^Alex^Q||19800101|U|||1 Example Way^^Sampletown^ST^"
    "00000||555-0199\r"
    "PV1|1|O|CLINIC^101^A|||||DRW^Doe^Robin^^^^MD|||||||||||V{n}\r"
    "RGS|1\r"
    "AIS|1||FOLLOWUP^Follow up visit|20250102090000|||30|min\r"
    "AIL|1||CLINIC^101^A|||20250102090000|||30|min\r"
    "AIP|1||DRW^Doe^Robin^^^^MD|ATND|||20250102090000|||30|min||Booked\r"
)


def destinations_of(channel: str) -> tuple[str, ...]:
    """Each channel feeds its own destination; the first half also feed the archive."""
    n = int(channel.rsplit("-", 1)[1])
    return (f"dest-{n}", "dest-archive") if n < 4 else (f"dest-{n}",)


class Feed:
    """The synthetic messages, deterministic for a seed."""

    def __init__(self, n: int, start: float, seed: int = 7) -> None:
        self.n = n
        self.start = start
        self.rng = random.Random(seed)
        self.patients = max(100, n // 5)
        self.appointments = max(100, n * 2 // 5)
        self.outage = (start + n * SECONDS_PER_MESSAGE * 0.25,
                       start + n * SECONDS_PER_MESSAGE * 0.25 + 2 * 86400)

    def message(self, i: int) -> Ingest:
        rng = self.rng
        received = self.start + i * SECONDS_PER_MESSAGE + rng.uniform(-3, 3)
        (status,) = rng.choices([s for s, _ in STATUSES], [w for _, w in STATUSES])
        (mtype,) = rng.choices([t for t, _ in TYPES], [w for _, w in TYPES])
        (channel,) = rng.choices([c for c, _ in CHANNELS], [w for _, w in CHANNELS])
        # A duplicate resends an earlier control id; the rest are unique.
        cid = f"C{rng.randrange(max(1, i)):09d}" if status == "duplicate" else f"C{i:09d}"
        pat = f"P{rng.randrange(self.patients):07d}"
        apt = rng.randrange(self.appointments)
        raw = _HL7.format(type=mtype, cid=cid, apt=f"A{apt:07d}", fil=f"F{apt:07d}", pat=pat,
                          n=i).encode()
        ack_code = {"processed": "AA", "duplicate": "AA", "rejected": "AR"}.get(status) or (
            "AE" if rng.random() < 0.7 else "AA")
        ack = (f"MSH|^~\\&|CLINIC|CLINIC_FAC|SRC_EHR|SRC_FAC|||ACK^S12^ACK|A{cid}|P|2.5.1\r"
               f"MSA|{ack_code}|{cid}\r").encode()
        message = NewMessage(
            received_at=received, listener="mllp-main", content_type="application/hl7-v2",
            charset="utf-8", raw=raw,
            keys=MessageKeys(sender="SRC_EHR", facility="SRC_FAC", control_id=cid,
                             message_type=mtype, version="2.5.1", patient_ids=(pat,),
                             appointment_ids=(f"A{apt:07d}", f"F{apt:07d}")),
            status=status, ack_code=ack_code, ack=ack,
            error="synthetic rejection" if status == "rejected" else "",
        )
        if status in ("rejected", "duplicate"):
            return Ingest(message=message)
        output = raw.replace(b"SRC_EHR", b"ENGINE")
        result = NewChannelResult(channel=channel, status="ok" if status == "processed" else
                                  "error", output=output)
        if status != "processed":
            return Ingest(message=message, results=(result,))
        deliveries = tuple(
            NewDelivery(channel=channel, destination=d, lane="", payload=output,
                        next_attempt_at=received)
            for d in destinations_of(channel)
        )
        return Ingest(message=message, results=(result,), deliveries=deliveries)

    def outcome(self, destination: str, received: float) -> str:
        """What became of a delivery: sent, failed, discarded or still queued."""
        if destination == OUTAGE_DESTINATION and self.outage[0] <= received < self.outage[1]:
            return "failed"
        roll = self.rng.random()
        return ("sent" if roll < 0.975 else "failed" if roll < 0.99
                else "discarded" if roll < 0.995 else "queued")


def load(path: Path, ring: KeyRing, n: int) -> float:
    """Write n messages with the engine's write operations; returns the seconds it took."""
    prepare(path)
    conn = connect(path, sealer=RowSealer(ring))
    conn.execute("PRAGMA synchronous = OFF")  # a bulk load: durability of each batch is moot
    conn.execute("PRAGMA cache_size = -1000000")
    start = time.time() - n * SECONDS_PER_MESSAGE
    feed = Feed(n, start)
    began = time.perf_counter()
    for first in range(0, n, BATCH):
        items = [feed.message(i) for i in range(first, min(n, first + BATCH))]
        conn.execute("BEGIN IMMEDIATE")
        done = writes.ingest_many(conn, [(item, item.message.received_at) for item in items])
        attempts: list[tuple[Attempt, float]] = []
        discard: list[int] = []
        for item, ingested in zip(items, done, strict=True):
            at = item.message.received_at + 0.5
            for d, delivery_id in zip(item.deliveries, ingested.delivery_ids, strict=True):
                outcome = feed.outcome(d.destination, item.message.received_at)
                if outcome == "queued":
                    continue
                sent = outcome == "sent"
                attempts.append((Attempt(
                    delivery_id=delivery_id, number=1, started_at=at, latency=0.02,
                    outcome="sent" if sent else "failed", code="AA" if sent else "AE",
                    response=b"MSH|^~\\&|DEST||ENGINE||||ACK|1|P|2.5.1\rMSA|"
                    + (b"AA" if sent else b"AE") + b"|1\r",
                    error="" if sent else "destination answered AE",
                ), at))
                if outcome == "discarded":
                    discard.append(delivery_id)
        writes.record_attempt_many(conn, attempts)
        writes.discard(conn, (discard, time.time()))
        conn.execute("COMMIT")
        if (first // BATCH) % 20 == 19:
            rate = (first + BATCH) / (time.perf_counter() - began)
            print(f"  loaded {first + BATCH:,} ({rate:,.0f} messages/s)", flush=True)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - began


def store_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")
               if p.suffix not in (".key", ".json"))


Draw = Callable[[random.Random], dict[str, Any]]


async def measure(path: Path, ring: KeyRing, shape: dict[str, Any], k: int) -> None:
    store = SqliteStore(path, sealer=RowSealer(ring))
    await store.open()
    try:
        rng = random.Random(11)
        samples = [d for d in [await store.get(rng.randrange(1, shape["n"] + 1))
                               for _ in range(4 * k)] if d is not None]
        first, last = shape["first"], shape["last"]

        def window(r: random.Random) -> dict[str, Any]:
            """An hour, a day, a week or a month anywhere in the data (or the last day)."""
            width = r.choice([3600, 86400, 7 * 86400, 30 * 86400, 0])
            if width == 0:
                return {"since": last - 86400}
            since = r.uniform(first, max(first, last - width))
            return {"since": since, "until": since + width}

        filters: dict[str, Draw] = {
            "status": lambda r: {"status": r.choice([s for s, _ in STATUSES])},
            "channel": lambda r: {"channel": r.choice(shape["channels"])},
            "destination": lambda r: {"destination": r.choice(shape["destinations"])},
            "destination + delivery status": lambda r: {
                "destination": r.choice(shape["destinations"]),
                "delivery_status": r.choice(["sent", "failed", "queued", "discarded"])},
            "delivery status": lambda r: {
                "delivery_status": r.choice(["sent", "failed", "queued", "discarded"])},
            "message type": lambda r: {"message_type": r.choice([t for t, _ in TYPES])},
            "ACK code": lambda r: {"ack_code": r.choice(["AA", "AE", "AR"])},
            "control id": lambda r: {"control_id": r.choice(samples).message.keys.control_id},
            "patient id (blind index)": lambda r: {
                "patient_id": r.choice(samples).message.keys.patient_ids[0]},
            "appointment id": lambda r: {
                "appointment_id": r.choice(r.choice(samples).message.keys.appointment_ids)},
        }
        cases: dict[str, Draw] = {
            "no filter": lambda r: {},
            "no filter, a page deep in (before_id)": lambda r: {
                "before_id": r.randrange(2, shape["n"])},
            "time range": window,
        }
        for name, draw in filters.items():
            cases[name] = draw
        for name, draw in filters.items():
            cases[f"time range + {name}"] = (
                lambda r, draw=draw: {**window(r), **draw(r)})  # type: ignore[misc]

        print(f"\nsearch, page of {PAGE}, newest first; {k} runs per row with varied values")
        print(f"{'filter':<46} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'rows':>6}")
        worst = 0.0
        for name, draw in cases.items():
            timings: list[float] = []
            rows = 0
            for _ in range(k):
                flt = MessageFilter(limit=PAGE, **draw(rng))
                began = time.perf_counter()
                found = await store.search(flt)
                timings.append(time.perf_counter() - began)
                rows += len(found)
            timings.sort()
            p95 = timings[min(len(timings) - 1, int(0.95 * len(timings)))]
            worst = max(worst, p95)
            print(f"{name:<46} {timings[len(timings) // 2] * 1e3:8.1f} {p95 * 1e3:8.1f}"
                  f" {timings[-1] * 1e3:8.1f} {rows / k:6.1f}")
        print(f"worst p95: {worst * 1e3:.1f} ms")
    finally:
        await store.close()


@contextmanager
def store_file(keep: Path | None, directory: Path) -> Iterator[Path]:
    if keep is not None:
        yield keep
        return
    with tempfile.TemporaryDirectory(dir=directory, prefix="search-bench-") as tmp:
        yield Path(tmp) / "search.db"


def ring_for(path: Path) -> KeyRing:
    """The store's key: made (owner-only) beside a new store, read beside a kept one."""
    key_file = Path(f"{path}.key")
    if not key_file.exists():
        fd = os.open(key_file, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(new_key_line("bench1") + "\n")
    keys = load_key_file(key_file)
    return KeyRing(keys, sorted(keys)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1_000_000, help="messages to load")
    parser.add_argument("-k", type=int, default=50, help="runs per filter")
    parser.add_argument("--dir", type=Path, default=Path.cwd(),
                        help="where the temporary store goes (not /tmp: it may be RAM)")
    parser.add_argument("--keep", type=Path, help="load into this file, or reuse it if there")
    args = parser.parse_args()
    with store_file(args.keep, args.dir) as path:
        shape_file = Path(f"{path}.json")
        ring = ring_for(path)
        if path.exists() and shape_file.exists():
            shape = json.loads(shape_file.read_text())
            print(f"reusing {path}: {shape['n']:,} messages")
        else:
            print(f"loading {args.n:,} messages into {path} (sealed, key bench1)")
            seconds = load(path, ring, args.n)
            conn = connect(path, readonly=True)
            first, last = conn.execute(
                "SELECT min(received_at), max(received_at) FROM messages").fetchone()
            conn.close()
            shape = {"n": args.n, "first": first, "last": last,
                     "channels": [c for c, _ in CHANNELS],
                     "destinations": sorted({d for c, _ in CHANNELS for d in destinations_of(c)})}
            shape_file.write_text(json.dumps(shape))
            print(f"loaded in {seconds:.0f} s ({args.n / seconds:,.0f} messages/s)")
        print(f"store size: {store_bytes(path) / 2**30:.2f} GiB")
        asyncio.run(measure(path, ring, shape, args.k))


if __name__ == "__main__":
    main()
