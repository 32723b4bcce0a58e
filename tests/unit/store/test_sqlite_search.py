"""Searching messages: every filter, newest first, paging by before_id."""

from __future__ import annotations

from typing import Any

import pytest

from engine.store.base import Attempt, MessageFilter
from engine.store.sqlite import SqliteStore
from tests.unit.store.helpers import make_ingest

T0 = 1_750_000_000.0


@pytest.fixture
async def ids(store: SqliteStore) -> dict[str, int]:
    """Six messages; names say what sets each apart."""
    items = {
        "plain": make_ingest("M1", received_at=T0),
        "error": make_ingest("M2", received_at=T0 + 10, status="error", ack_code="AE",
                            channels=("chan-b",)),
        "patient": make_ingest("M3", received_at=T0 + 20, patients=("PAT9", "PAT7"),
                               appointments=()),
        "appointment": make_ingest("M4", received_at=T0 + 30, appointments=("APT5", "FIL5"),
                                   destinations=("dest-b",)),
        "s15": make_ingest("M5", received_at=T0 + 40, message_type="SIU^S15",
                           destinations=()),
        "retry": make_ingest("M1", received_at=T0 + 50, sender="OTHER_EHR"),
    }
    out = {}
    for name, item in items.items():
        out[name] = (await store.ingest(item)).message_id
    detail = await store.get(out["retry"])
    assert detail is not None
    await store.record_attempt(
        Attempt(delivery_id=detail.deliveries[0].id, number=1, started_at=T0 + 51, latency=0.1,
                outcome="failed", code="AR")
    )
    return out


async def _found(store: SqliteStore, **criteria: Any) -> list[int]:
    return [r.id for r in await store.search(MessageFilter(**criteria))]


async def test_no_filter_lists_everything_newest_first(
    store: SqliteStore, ids: dict[str, int]
) -> None:
    assert await _found(store) == sorted(ids.values(), reverse=True)


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ({"status": "error"}, ["error"]),
        ({"status": "processed", "channel": "chan-b"}, []),
        ({"channel": "chan-b"}, ["error"]),
        ({"destination": "dest-b"}, ["appointment"]),
        ({"destination": "dest-a", "delivery_status": "failed"}, ["retry"]),
        ({"delivery_status": "failed"}, ["retry"]),
        ({"delivery_status": "queued"}, ["appointment", "patient", "error", "plain"]),
        ({"since": T0 + 20}, ["retry", "s15", "appointment", "patient"]),
        ({"until": T0 + 20}, ["error", "plain"]),
        ({"since": T0 + 10, "until": T0 + 30}, ["patient", "error"]),
        ({"control_id": "M1"}, ["retry", "plain"]),
        ({"patient_id": "PAT7"}, ["patient"]),
        ({"patient_id": "PAT001"}, ["retry", "s15", "appointment", "error", "plain"]),
        ({"appointment_id": "FIL5"}, ["appointment"]),
        ({"appointment_id": "NOPE"}, []),
        ({"message_type": "SIU^S15"}, ["s15"]),
        ({"control_id": "M1", "delivery_status": "failed"}, ["retry"]),
        ({"ack_code": "AE"}, ["error"]),
        ({"ack_code": "AR"}, []),
        ({"ack_code": "AA", "status": "error"}, []),
        ({"ack_code": "AA", "since": T0 + 40}, ["retry", "s15"]),
    ],
)
async def test_each_filter(
    store: SqliteStore, ids: dict[str, int], criteria: dict[str, Any], expected: list[str]
) -> None:
    assert await _found(store, **criteria) == [ids[n] for n in expected]


async def test_paging_by_before_id(store: SqliteStore, ids: dict[str, int]) -> None:
    everything = sorted(ids.values(), reverse=True)
    pages: list[list[int]] = []
    before: int | None = None
    while page := await _found(store, limit=4, before_id=before):
        pages.append(page)
        before = page[-1]
    assert pages == [everything[:4], everything[4:]]
    assert await _found(store, limit=0) == []


async def test_rows_carry_the_keys(store: SqliteStore, ids: dict[str, int]) -> None:
    (row,) = await store.search(MessageFilter(patient_id="PAT9"))
    assert row.keys.patient_ids == ("PAT9", "PAT7")
    assert row.keys.appointment_ids == ()
    assert (row.keys.sender, row.keys.control_id, row.status) == ("TEST_EHR", "M3", "processed")


async def test_unknown_status_values_are_refused(store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="message status"):
        await store.search(MessageFilter(status="lost"))
    with pytest.raises(ValueError, match="delivery status"):
        await store.search(MessageFilter(delivery_status="'; DROP TABLE messages; --"))
