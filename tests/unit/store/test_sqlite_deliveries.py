"""The delivery outbox: claims, attempts, requeue and discard, including an operator's
command from another process while the engine's store is open."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

import pytest

from engine.store.base import Attempt, AttemptOutcome, Delivery, NewDelivery
from engine.store.sqlite import SqliteStore
from tests.unit.store.helpers import FakeClock, make_ingest

T0 = 1_750_000_000.0


def _attempt(delivery_id: int, outcome: AttemptOutcome, *, number: int = 1,
             next_at: float | None = None) -> Attempt:
    return Attempt(
        delivery_id=delivery_id, number=number, started_at=T0 + 1, latency=0.01,
        outcome=outcome, code={"sent": "AA", "retry": "AE", "failed": "AR"}[outcome],
        error="" if outcome == "sent" else "peer said no", next_attempt_at=next_at,
    )


async def _ingest_deliveries(store: SqliteStore, count: int, destination: str = "dest-a",
                             claimed: bool = True) -> list[int]:
    ids: list[int] = []
    for i in range(count):
        item = make_ingest(f"{destination}-{i}", destinations=(destination,), claimed=claimed)
        ids.extend((await store.ingest(item)).delivery_ids)
    return ids


async def _statuses(store: SqliteStore) -> dict[int, str]:
    return {d.id: d.status for d in await store.deliveries()}


async def test_ingested_deliveries_are_held_until_released(store: SqliteStore) -> None:
    ids = await _ingest_deliveries(store, 3)
    other = await _ingest_deliveries(store, 1, "dest-b")
    assert await store.claim_queued(["dest-a", "dest-b"], 10) == []
    assert await store.release_claims() == 4
    claimed = await store.claim_queued(["dest-a"], 2)
    assert [d.id for d in claimed] == ids[:2]  # oldest first, limit kept
    assert all(d.status == "queued" and d.destination == "dest-a" for d in claimed)
    assert claimed[0].payload == make_ingest("dest-a-0").deliveries[0].payload
    assert [d.id for d in await store.claim_queued(["dest-a", "dest-b"], 10)] == [ids[2], *other]
    assert await store.claim_queued(["dest-a", "dest-b"], 10) == []
    assert await store.claim_queued([], 10) == []


async def test_release_leaves_finished_deliveries_alone(store: SqliteStore) -> None:
    sent, failed, queued = await _ingest_deliveries(store, 3)
    await store.record_attempt(_attempt(sent, "sent"))
    await store.record_attempt(_attempt(failed, "failed"))
    assert await store.release_claims() == 1
    assert [d.id for d in await store.claim_queued(["dest-a"], 10)] == [queued]


async def test_unclaimed_ingest_is_left_for_the_poller(store: SqliteStore) -> None:
    held = await _ingest_deliveries(store, 1)
    left = await _ingest_deliveries(store, 1, claimed=False)
    assert [d.id for d in await store.claim_queued(["dest-a"], 10)] == left
    assert held != left


async def test_attempts_move_the_delivery(store: SqliteStore, clock: FakeClock) -> None:
    a, b, c = await _ingest_deliveries(store, 3)
    clock.now = T0 + 50
    await store.record_attempt(_attempt(a, "retry", next_at=T0 + 60))
    await store.record_attempt(_attempt(a, "retry", number=2))  # keeps next_attempt_at
    await store.record_attempt(_attempt(b, "sent"))
    await store.record_attempt(_attempt(c, "failed"))
    by_id = {d.id: d for d in await store.deliveries()}
    assert (by_id[a].status, by_id[a].attempts, by_id[a].next_attempt_at) == ("queued", 2,
                                                                              T0 + 60)
    assert (by_id[a].last_code, by_id[a].last_error, by_id[a].updated_at) == (
        "AE", "peer said no", T0 + 50)
    assert (by_id[b].status, by_id[b].last_code, by_id[b].last_error) == ("sent", "AA", "")
    assert by_id[c].status == "failed"
    assert await store.claim_queued(["dest-a"], 10) == []  # a retry stays with its runner


async def test_an_attempt_for_an_unknown_delivery_fails(store: SqliteStore) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        await store.record_attempt(_attempt(12345, "sent"))


async def test_requeue_brings_back_failed_only(store: SqliteStore, clock: FakeClock) -> None:
    failed, sent, queued = await _ingest_deliveries(store, 3)
    await store.record_attempt(_attempt(failed, "failed"))
    await store.record_attempt(_attempt(sent, "sent"))
    clock.now = T0 + 100
    assert await store.requeue([failed, sent, queued, 777]) == 1
    assert await store.requeue([]) == 0
    again = await store.claim_queued(["dest-a"], 10)
    assert [(d.id, d.status, d.next_attempt_at, d.attempts) for d in again] == [
        (failed, "queued", T0 + 100, 1)  # attempts ever are kept
    ]


async def test_requeue_failed_keeps_order_per_destination(store: SqliteStore) -> None:
    ids = await _ingest_deliveries(store, 4)
    other = await _ingest_deliveries(store, 1, "dest-b")
    for i in (*reversed(ids[:3]), *other):  # failing out of order must not reorder them
        await store.record_attempt(_attempt(i, "failed"))
    assert await store.requeue_failed("dest-a") == 3
    assert [d.id for d in await store.claim_queued(["dest-a", "dest-b"], 10)] == ids[:3]
    assert (await _statuses(store))[other[0]] == "failed"


async def test_discard_takes_only_failed(store: SqliteStore) -> None:
    queued, failed, sent = await _ingest_deliveries(store, 3)
    await store.record_attempt(_attempt(failed, "failed"))
    await store.record_attempt(_attempt(sent, "sent"))
    assert await store.discard([queued, failed, sent]) == 1
    assert await store.discard([]) == 0
    assert await _statuses(store) == {queued: "queued", failed: "discarded", sent: "sent"}
    assert await store.requeue([failed]) == 0


async def test_deliveries_lists_by_destination_and_status(store: SqliteStore) -> None:
    a1, a2 = await _ingest_deliveries(store, 2)
    (b1,) = await _ingest_deliveries(store, 1, "dest-b")
    await store.record_attempt(_attempt(a2, "failed"))
    assert [d.id for d in await store.deliveries()] == [a1, a2, b1]
    assert [d.id for d in await store.deliveries("dest-a")] == [a1, a2]
    assert [d.id for d in await store.deliveries(status="queued")] == [a1, b1]
    assert [d.id for d in await store.deliveries("dest-a", "failed")] == [a2]
    assert [d.id for d in await store.deliveries(limit=1)] == [a1]
    assert await store.deliveries(limit=0) == []
    with pytest.raises(ValueError, match="delivery status"):
        await store.deliveries(status="in_flight")


_OPERATOR = """
import asyncio, sys
from engine.security.atrest import RowSealer
from engine.store.sqlite import SqliteStore
from tests.unit.store.conftest import TEST_RING

async def main():
    store = SqliteStore(sys.argv[1], sealer=RowSealer(TEST_RING))
    await store.open()
    print(await store.requeue_failed("dest-a"))
    await store.close()

asyncio.run(main())
"""


async def test_an_operator_retry_from_another_process_is_claimed(
    store: SqliteStore, db_path: Path
) -> None:
    (failed,) = await _ingest_deliveries(store, 1)
    await store.record_attempt(_attempt(failed, "failed"))
    # Both processes write to the file while this store is open and holds its connections.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _OPERATOR, str(db_path), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0 and out.decode().strip() == "1"
    await _ingest_deliveries(store, 1)  # the engine keeps writing afterwards
    assert [d.id for d in await store.claim_queued(["dest-a"], 10)] == [failed]


async def test_added_deliveries_are_queued_like_ingested_ones(
    store: SqliteStore, clock: FakeClock, db_path: Path
) -> None:
    item = make_ingest("ADD1", destinations=("dest-a",))
    stored = await store.ingest(item)
    clock.now = T0 + 30
    output = item.results[0].output
    held = await store.add_deliveries(stored.message_id, (
        NewDelivery("chan-a", "hooks", "APT001", b'{"type":"appointment.sync_failed"}', T0 + 31),
        NewDelivery("chan-a", "dest-b", "", output, T0 + 32),
    ))
    (left,) = await store.add_deliveries(
        stored.message_id, (NewDelivery("chan-a", "hooks", "", b"{}", T0 + 33),), claimed=False
    )
    assert held[0] > stored.delivery_ids[0] and held[1] == held[0] + 1 and left == held[1] + 1
    detail = await store.get(stored.message_id)
    assert detail is not None
    assert detail.deliveries[1:] == (
        Delivery(held[0], stored.message_id, "chan-a", "hooks", "APT001", "queued", 0, T0 + 31,
                 b'{"type":"appointment.sync_failed"}', T0 + 30, T0 + 30),
        Delivery(held[1], stored.message_id, "chan-a", "dest-b", "", "queued", 0, T0 + 32,
                 output, T0 + 30, T0 + 30),
        Delivery(left, stored.message_id, "chan-a", "hooks", "", "queued", 0, T0 + 33, b"{}",
                 T0 + 30, T0 + 30),
    )
    with sqlite3.connect(db_path) as conn:
        (payload,) = conn.execute("SELECT payload FROM deliveries WHERE id = ?",
                                  (held[1],)).fetchone()
    assert payload is None  # the channel's output, stored once as for an ingest
    # Claimed ones are this process's; the others wait for a runner to claim them.
    assert [d.id for d in await store.claim_queued(["hooks", "dest-b"], 10)] == [left]
    # The ingest's own delivery, the two added held and the one claimed just now.
    assert await store.release_claims() == 4
    assert [d.id for d in await store.claim_queued(["hooks", "dest-b"], 10)] == [*held, left]


async def test_deliveries_for_an_unknown_message_are_refused(store: SqliteStore) -> None:
    with pytest.raises(LookupError, match="message 4242 does not exist"):
        await store.add_deliveries(4242, (NewDelivery("c", "hooks", "", b"{}", T0),))
    assert await store.deliveries() == []
    assert await store.add_deliveries(4242, ()) == ()
