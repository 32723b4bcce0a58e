"""`ingest_all`: several messages in one transaction, all or nothing, without failing the
other writes that share its group commit."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from engine.store.base import DuplicateHit, Ingested, MessageFilter, StaleJudgement
from engine.store.sqlite import SqliteStore
from tests.unit.store.appointment_helpers import KEY_A, KEY_B, T0, carrying, version
from tests.unit.store.helpers import FakeClock, WriterGate, make_ingest


def _counts(path: Path) -> dict[str, int]:
    tables = ("messages", "message_keys", "channel_results", "deliveries", "appointments",
              "appointment_actors", "appointment_versions")
    with sqlite3.connect(path) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


async def test_all_items_commit_together_in_list_order(store: SqliteStore) -> None:
    commits = store.stats().commits
    items = [
        carrying("B1", version(KEY_A, note="first")),
        make_ingest("B2", destinations=("d1", "d2")),
        carrying("B3", version(KEY_B)),
        carrying("B4", version(KEY_A, change="updated", note="second")),
    ]
    results = await store.ingest_all(items)
    assert store.stats().commits == commits + 1
    assert [r.message_id for r in results] == sorted(r.message_id for r in results)
    a1, plain, b1, a2 = results
    assert (a1.appointment_version, a2.appointment_version, b1.appointment_version) == (1, 2, 1)
    assert a1.appointment_id == a2.appointment_id != b1.appointment_id
    assert (plain.appointment_id, plain.appointment_version) == (None, None)
    assert len(plain.delivery_ids) == 2
    history = await store.appointment_history(KEY_A)
    assert [(json.loads(h.resource)["comment"], h.message_id) for h in history] == [
        ("first", a1.message_id), ("second", a2.message_id)]
    assert [m.keys.control_id for m in await store.search(MessageFilter())] == [
        "B4", "B3", "B2", "B1"]


async def test_a_failing_item_stores_nothing_of_the_batch_but_fails_no_one_else(
    store: SqliteStore, db_path: Path
) -> None:
    await store.ingest(carrying("EARLIER", version(KEY_A, note="v1")))
    before = _counts(db_path)
    gate = WriterGate(store.writer)
    await gate.hold()
    commits = store.stats().commits  # the gate's batch is not committed yet
    bundle = [
        carrying("T1", version(KEY_A, change="updated", note="v2")),
        carrying("T2", version(KEY_B)),
        make_ingest("T3", replay_of=424242),  # foreign key: fails inside the transaction
    ]
    outcome = await asyncio.gather(
        store.ingest_all(bundle),
        store.ingest(make_ingest("PLAIN")),
        gate.release(),
        return_exceptions=True,
    )
    assert isinstance(outcome[0], sqlite3.IntegrityError)
    assert isinstance(outcome[1], Ingested)
    assert store.stats().commits == commits + 2  # the gate's, then one shared by both
    after = _counts(db_path)
    assert after == {**before, "messages": before["messages"] + 1,
                     "message_keys": before["message_keys"] + 2,
                     "channel_results": before["channel_results"] + 1,
                     "deliveries": before["deliveries"] + 1}
    assert [m.keys.control_id for m in await store.search(MessageFilter())] == [
        "PLAIN", "EARLIER"]
    assert await store.appointment(KEY_B) is None
    row = await store.appointment(KEY_A)
    assert row is not None and row.version == 1
    assert store.stats().extra["pending_ingests"] == 0
    assert await store.find_duplicate("TEST_EHR", "T1", 0.0) is None
    # Nothing was used up: the same bundle without its bad item numbers from version 2.
    retried = await store.ingest_all(bundle[:2])
    assert [r.appointment_version for r in retried] == [2, 1]


async def test_a_stale_judgement_refuses_the_whole_bundle(store: SqliteStore) -> None:
    await store.ingest(carrying("O1", version(KEY_A)))
    with pytest.raises(StaleJudgement):
        await store.ingest_all([
            carrying("O2", version("urn:test|OTHER", base_version=0)),
            carrying("O3", version(KEY_A, base_version=0)),
        ])
    assert await store.appointment("urn:test|OTHER") is None
    assert [m.keys.control_id for m in await store.search(MessageFilter())] == ["O1"]


async def test_the_duplicate_check_waits_for_a_queued_bundle(store: SqliteStore) -> None:
    gate = WriterGate(store.writer)
    await gate.hold()
    items = [make_ingest("Q1", received_at=T0), make_ingest("Q2", received_at=T0)]
    results, hit, _ = await asyncio.gather(
        store.ingest_all(items), store.find_duplicate("TEST_EHR", "Q2", T0 - 60), gate.release()
    )
    assert isinstance(results, list)
    assert hit == DuplicateHit(results[1].message_id, T0, items[1].message.ack)
    assert store.stats().extra["pending_ingests"] == 0


async def test_an_empty_bundle_writes_nothing(store: SqliteStore) -> None:
    assert await store.ingest_all([]) == []
    assert store.stats().commits == 0


async def test_a_closed_store_refuses_a_bundle(db_path: Path, clock: FakeClock) -> None:
    store = SqliteStore(db_path, clock=clock)
    await store.open()
    await store.close()
    with pytest.raises(RuntimeError, match="not open"):
        await store.ingest_all([make_ingest("LATE")])
