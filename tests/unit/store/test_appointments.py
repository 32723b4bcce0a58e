"""Appointment state in the SQLite store, on real files: numbering and ids, dispositions,
actors and the overlap lookup, history, message detail, flagged search, restart, and the
migration of a version-1 file."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
from pathlib import Path

import pytest

from engine.store import sqlite_search
from engine.store.base import (
    AppointmentDisposition,
    AppointmentRow,
    AppointmentVersionRow,
    AppointmentWarning,
    Ingested,
    MessageFilter,
    StaleJudgement,
)
from engine.store.sqlite import SqliteStore
from engine.store.sqlite_schema import MIGRATIONS, prepare, user_version
from tests.unit.store.appointment_helpers import (
    HOUR,
    KEY_A,
    KEY_B,
    KEY_C,
    T0,
    carrying,
    clash,
    version,
)
from tests.unit.store.helpers import FakeClock, WriterGate, make_ingest

FHIR_ID = r"[A-Za-z0-9\-.]{1,64}"


async def _keys(store: SqliteStore, actors: tuple[str, ...], start: float, end: float) -> list[str]:
    return [r.key for r in await store.overlapping(actors, start, end)]


# --------------------------------------------------------------------------- numbering


async def test_current_versions_are_numbered_and_keep_their_id(
    store: SqliteStore, clock: FakeClock
) -> None:
    first = await store.ingest(carrying("V1", version(note="one")))
    assert first.appointment_version == 1 and first.appointment_id is not None
    assert len(first.appointment_id) == 16 and int(first.appointment_id, 16) >= 0
    clock.now = T0 + 7
    second = await store.ingest(
        carrying("V2", version(change="rescheduled", start=T0 + 3 * HOUR, end=T0 + 4 * HOUR,
                               source_time=T0 + 5, note="two"))
    )
    assert (second.appointment_id, second.appointment_version) == (first.appointment_id, 2)
    third = await store.ingest(
        carrying("V3", version(status="cancelled", change="cancelled"), received_at=T0 + 7)
    )
    assert (third.appointment_id, third.appointment_version) == (first.appointment_id, 3)

    row = await store.appointment(KEY_A)
    assert row == AppointmentRow(
        key=KEY_A, id=first.appointment_id, version=3,
        resource=version(status="cancelled", change="cancelled").resource, status="cancelled",
        source_time=T0, start=T0 + HOUR, end=T0 + 2 * HOUR, updated_at=T0 + 7,
        message_id=third.message_id,
    )
    assert await store.appointment_by_id(first.appointment_id) == row
    assert await store.appointment("urn:test:placer|NOPE") is None
    assert await store.appointment_by_id("0000000000000000") is None


async def test_each_new_key_gets_its_own_random_id(store: SqliteStore) -> None:
    ids = [
        (await store.ingest(carrying(f"K{i}", version(f"urn:test|K{i}")))).appointment_id
        for i in range(20)
    ]
    assert len(set(ids)) == 20
    assert all(i is not None and len(i) == 16 for i in ids)


async def test_a_version_judged_against_an_old_one_fails_that_ingest_only(
    store: SqliteStore,
) -> None:
    await store.ingest(carrying("T1", version(KEY_A, base_version=0)))
    with pytest.raises(StaleJudgement):  # judged as new, but KEY_A has version 1 now
        await store.ingest(carrying("T2", version(KEY_A, base_version=0, note="late")))
    with pytest.raises(StaleJudgement):  # an unchanged one must name the current version too
        await store.ingest(carrying("T3", version(KEY_A, base_version=7,
                                                  disposition="unchanged")))
    row = await store.appointment(KEY_A)
    assert row is not None and row.version == 1
    assert [m.keys.control_id for m in await store.search(MessageFilter())] == ["T1"]
    assert len(await store.appointment_history(KEY_A)) == 1
    # A rejected version is history only: what it was judged against does not matter.
    await store.ingest(carrying("T4", version(KEY_A, base_version=0, disposition="rejected")))
    again = await store.ingest(carrying("T5", version(KEY_A, base_version=1, note="v2")))
    assert again.appointment_version == 2


@pytest.mark.parametrize("disposition", ["unchanged", "stale", "rejected"])
async def test_other_dispositions_are_history_only(
    store: SqliteStore, disposition: AppointmentDisposition
) -> None:
    current = await store.ingest(carrying("D1", version(actors=("Practitioner/DR1",))))
    other = await store.ingest(
        carrying("D2", version(disposition=disposition, status="cancelled", change="cancelled",
                               actors=("Practitioner/DR2",), start=T0, end=T0 + 9 * HOUR))
    )
    # The known appointment's id and version are reported, and nothing of it moved.
    assert (other.appointment_id, other.appointment_version) == (
        current.appointment_id, current.appointment_version)
    row = await store.appointment(KEY_A)
    assert row is not None and (row.version, row.status, row.message_id) == (
        1, "booked", current.message_id)
    assert await _keys(store, ("Practitioner/DR1",), T0, T0 + 9 * HOUR) == [KEY_A]
    assert await _keys(store, ("Practitioner/DR2",), T0, T0 + 9 * HOUR) == []
    history = await store.appointment_history(KEY_A)
    assert [(h.version, h.disposition, h.status) for h in history] == [
        (1, "current", "booked"), (None, disposition, "cancelled")]
    following = await store.ingest(carrying("D3", version(change="updated", note="next")))
    assert following.appointment_version == 2  # non-current ones took no number


async def test_a_non_current_version_of_an_unknown_key_is_recorded_without_an_id(
    store: SqliteStore,
) -> None:
    rejected = await store.ingest(
        carrying("U1", version(disposition="rejected", warnings=(clash(KEY_B),)))
    )
    assert (rejected.appointment_id, rejected.appointment_version) == (None, None)
    assert await store.appointment(KEY_A) is None
    assert [h.disposition for h in await store.appointment_history(KEY_A)] == ["rejected"]
    assert await _keys(store, ("Practitioner/DR1",), T0, T0 + 9 * HOUR) == []
    created = await store.ingest(carrying("U2", version()))
    assert created.appointment_version == 1 and created.appointment_id is not None


async def test_a_message_without_an_appointment_reports_none(store: SqliteStore) -> None:
    plain = await store.ingest(make_ingest("P1"))
    assert (plain.appointment_id, plain.appointment_version) == (None, None)
    detail = await store.get(plain.message_id)
    assert detail is not None and detail.appointment is None


async def test_versions_of_one_key_in_one_group_commit_are_numbered_in_order(
    store: SqliteStore,
) -> None:
    results = await asyncio.gather(
        *(store.ingest(carrying(f"G{i}", version(note=str(i)))) for i in range(30))
    )
    assert store.stats().commits < 30  # they did share commits
    assert [r.appointment_version for r in results] == list(range(1, 31))
    assert len({r.appointment_id for r in results}) == 1
    history = await store.appointment_history(KEY_A)
    assert [json.loads(h.resource)["comment"] for h in history] == [str(i) for i in range(30)]


async def test_a_failing_ingest_in_a_group_does_not_disturb_the_numbering(
    store: SqliteStore,
) -> None:
    gate = WriterGate(store.writer)
    await gate.hold()
    # The group is rolled back and re-run op by op: numbers come from what is stored then.
    outcome = await asyncio.gather(
        store.ingest(carrying("F1", version(note="1"))),
        store.ingest(carrying("F2", version(note="bad"), replay_of=424242)),
        store.ingest(carrying("F3", version(note="2"))),
        gate.release(),
        return_exceptions=True,
    )
    assert isinstance(outcome[1], sqlite3.IntegrityError)
    first, third = outcome[0], outcome[2]
    assert isinstance(first, Ingested) and isinstance(third, Ingested)
    assert (first.appointment_version, third.appointment_version) == (1, 2)
    assert [json.loads(h.resource)["comment"] for h in await store.appointment_history(KEY_A)] \
        == ["1", "2"]


async def test_two_stores_on_one_file_never_hand_out_a_number_twice(
    db_path: Path, clock: FakeClock
) -> None:
    one, two = SqliteStore(db_path, clock=clock), SqliteStore(db_path, clock=clock)
    await one.open()
    await two.open()
    try:
        results = await asyncio.gather(
            *((one if i % 2 else two).ingest(carrying(f"W{i}", version(note=str(i))))
              for i in range(40))
        )
    finally:
        await one.close()
        await two.close()
    assert sorted(r.appointment_version or 0 for r in results) == list(range(1, 41))
    assert len({r.appointment_id for r in results}) == 1
    reader = SqliteStore(db_path)
    await reader.open()
    history = await reader.appointment_history(KEY_A)
    await reader.close()
    assert [h.version for h in history] == list(range(1, 41))  # recorded in number order


# --------------------------------------------------------------------------- actors, overlap


async def test_a_new_current_version_replaces_the_actors(store: SqliteStore) -> None:
    span = (T0, T0 + 9 * HOUR)
    await store.ingest(carrying("R1", version(actors=("Practitioner/DR1", "Location/ROOM1"))))
    assert await _keys(store, ("Location/ROOM1",), *span) == [KEY_A]
    await store.ingest(carrying("R2", version(actors=("Practitioner/DR2",), note="2")))
    assert await _keys(store, ("Practitioner/DR1", "Location/ROOM1"), *span) == []
    assert await _keys(store, ("Practitioner/DR2",), *span) == [KEY_A]
    # Without a start and end the version holds nobody's time.
    await store.ingest(carrying("R3", version(actors=("Practitioner/DR2",), start=None,
                                              end=None, note="3")))
    assert await _keys(store, ("Practitioner/DR2",), *span) == []
    row = await store.appointment(KEY_A)
    assert row is not None and (row.version, row.start, row.end) == (3, None, None)


async def test_an_empty_or_reversed_interval_holds_nobody(store: SqliteStore) -> None:
    await store.ingest(carrying("E1", version(KEY_A, start=T0 + HOUR, end=T0 + HOUR)))
    await store.ingest(carrying("E2", version(KEY_B, start=T0 + 2 * HOUR, end=T0 + HOUR)))
    assert await _keys(store, ("Practitioner/DR1",), T0, T0 + 9 * HOUR) == []


async def test_overlap_is_half_open(store: SqliteStore) -> None:
    start, end = T0 + 10 * HOUR, T0 + 11 * HOUR
    await store.ingest(carrying("O1", version(start=start, end=end)))
    dr1 = ("Practitioner/DR1",)
    assert await _keys(store, dr1, end, end + HOUR) == []  # touching after
    assert await _keys(store, dr1, start - HOUR, start) == []  # touching before
    assert await _keys(store, dr1, end - 1, end + HOUR) == [KEY_A]
    assert await _keys(store, dr1, start - HOUR, start + 1) == [KEY_A]
    assert await _keys(store, dr1, start + 60, end - 60) == [KEY_A]  # inside
    assert await _keys(store, dr1, start - HOUR, end + HOUR) == [KEY_A]  # around
    assert await _keys(store, dr1, start, end) == [KEY_A]  # the same interval
    assert await _keys(store, ("Practitioner/DR9",), start, end) == []  # another actor
    assert await _keys(store, dr1, start + 60, start + 60) == []  # an empty interval
    assert await _keys(store, dr1, end, start) == []
    assert await _keys(store, (), start, end) == []


async def test_overlap_with_several_actors_returns_each_appointment_once(
    store: SqliteStore,
) -> None:
    await store.ingest(carrying("S1", version(KEY_A, start=T0 + 10 * HOUR, end=T0 + 12 * HOUR,
                                              actors=("Practitioner/DR1", "Location/ROOM1"))))
    await store.ingest(carrying("S2", version(KEY_B, start=T0 + 11 * HOUR, end=T0 + 13 * HOUR,
                                              actors=("Practitioner/DR2",))))
    await store.ingest(carrying("S3", version(KEY_C, start=T0 + 5 * HOUR, end=T0 + 6 * HOUR,
                                              actors=("Practitioner/DR1", "Practitioner/DR1"))))
    everyone = ("Practitioner/DR1", "Location/ROOM1", "Practitioner/DR2")
    assert await _keys(store, everyone, T0, T0 + 24 * HOUR) == [KEY_C, KEY_A, KEY_B]  # by start
    assert await _keys(store, ("Location/ROOM1", "Practitioner/DR1"), T0 + 10 * HOUR,
                       T0 + 12 * HOUR) == [KEY_A]
    rows = await store.overlapping(everyone, T0 + 11.5 * HOUR, T0 + 11.75 * HOUR)
    assert [(r.key, r.version, r.start, r.end) for r in rows] == [
        (KEY_A, 1, T0 + 10 * HOUR, T0 + 12 * HOUR), (KEY_B, 1, T0 + 11 * HOUR, T0 + 13 * HOUR)]


# --------------------------------------------------------------------------- history, get


async def test_history_and_message_detail_keep_every_field(store: SqliteStore) -> None:
    warning = AppointmentWarning("update-after-cancel", f"appointment {KEY_A} was cancelled",
                                 (KEY_A,))
    first = await store.ingest(
        carrying("H1", version(source_time=None, note="a"), received_at=T0 + 1)
    )
    stale = await store.ingest(carrying("H2", version(disposition="stale", change="updated",
                                                      source_time=T0 - 50, note="b"),
                                        received_at=T0 + 2))
    flagged = await store.ingest(carrying("H3", version(change="updated", warnings=(
        warning, clash(KEY_B, KEY_C)), source_time=T0 + 2.5, note="c"), received_at=T0 + 3))
    history = await store.appointment_history(KEY_A)
    assert history == [
        AppointmentVersionRow(KEY_A, first.message_id, T0 + 1, 1, "current", "created",
                              "booked", None, version(note="a").resource, ()),
        AppointmentVersionRow(KEY_A, stale.message_id, T0 + 2, None, "stale", "updated",
                              "booked", T0 - 50, version(note="b").resource, ()),
        AppointmentVersionRow(KEY_A, flagged.message_id, T0 + 3, 2, "current", "updated",
                              "booked", T0 + 2.5, version(note="c").resource,
                              (warning, clash(KEY_B, KEY_C))),
    ]
    assert await store.appointment_history(KEY_B) == []
    for ingested, row in zip((first, stale, flagged), history, strict=True):
        detail = await store.get(ingested.message_id)
        assert detail is not None and detail.appointment == row


async def test_flagged_search_finds_versions_with_warnings(store: SqliteStore) -> None:
    clean = await store.ingest(carrying("FL1", version(KEY_A)))
    flagged = await store.ingest(carrying("FL2", version(KEY_B, warnings=(clash(KEY_A),))))
    plain = await store.ingest(make_ingest("FL3"))
    refused = await store.ingest(carrying("FL4", version(KEY_C, disposition="rejected",
                                                         warnings=(clash(KEY_A),))))

    async def ids(**kwargs: object) -> list[int]:
        return [m.id for m in await store.search(MessageFilter(**kwargs))]  # type: ignore[arg-type]

    assert await ids(flagged=True) == [refused.message_id, flagged.message_id]
    assert await ids(flagged=False) == [plain.message_id, clean.message_id]
    assert await ids(flagged=True, control_id="FL2") == [flagged.message_id]
    assert await ids(flagged=True, limit=1) == [refused.message_id]
    assert await ids(flagged=True, before_id=refused.message_id) == [flagged.message_id]
    assert len(await ids()) == 4


def test_flagged_search_reads_the_partial_index(db_path: Path) -> None:
    prepare(db_path)
    with sqlite3.connect(db_path) as conn:
        for flagged in (True, False):
            sql, params = sqlite_search.search_sql(MessageFilter(flagged=flagged))
            plan = " ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
            assert "appointment_versions_flagged" in plan, plan


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"key": ""}, "key must be"),
        ({"resource": "not bytes"}, "resource must be"),
        ({"disposition": "maybe"}, "disposition must be"),
        ({"start": float("nan")}, "start must be"),
        ({"end": float("inf")}, "end must be"),
        ({"source_time": True}, "source_time must be"),
        ({"actors": ["Practitioner/DR1"]}, "actors must be"),
        ({"actors": ("",)}, "actors must be"),
        ({"warnings": ("text",)}, "warnings must be"),
        ({"base_version": -1}, "base_version must be"),
        ({"base_version": True}, "base_version must be"),
    ],
)
async def test_a_version_the_store_cannot_keep_is_refused_clearly(
    store: SqliteStore, change: dict[str, object], message: str
) -> None:
    bad = dataclasses.replace(version(), **change)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"invalid appointment version: {message}"):
        await store.ingest(carrying("BAD", bad))
    with pytest.raises(ValueError, match=message):
        await store.ingest_all([carrying("BAD2", bad)])
    assert await store.search(MessageFilter()) == []
    ok = await store.ingest(carrying("OK", version()))  # the store carries on
    assert ok.appointment_version == 1


# --------------------------------------------------------------------------- restart, migration


async def test_a_restart_keeps_appointments_history_and_actors(
    db_path: Path, clock: FakeClock
) -> None:
    store = SqliteStore(db_path, clock=clock)
    await store.open()
    first = await store.ingest(carrying("RS1", version(KEY_A)))
    await store.ingest(carrying("RS2", version(KEY_A, change="updated", note="2")))
    await store.ingest(carrying("RS3", version(KEY_A, disposition="stale", note="old")))
    await store.ingest(carrying("RS4", version(KEY_B, warnings=(clash(KEY_A),))))
    before = (
        await store.appointment(KEY_A),
        await store.appointment(KEY_B),
        await store.appointment_history(KEY_A),
        await store.overlapping(("Practitioner/DR1",), T0, T0 + 9 * HOUR),
        await store.search(MessageFilter(flagged=True)),
    )
    await store.close()

    again = SqliteStore(db_path, clock=clock)
    await again.open()
    try:
        after = (
            await again.appointment(KEY_A),
            await again.appointment(KEY_B),
            await again.appointment_history(KEY_A),
            await again.overlapping(("Practitioner/DR1",), T0, T0 + 9 * HOUR),
            await again.search(MessageFilter(flagged=True)),
        )
        assert after == before
        assert [r.key for r in after[3]] == [KEY_A, KEY_B] and len(after[4]) == 1
        assert (await again.appointment_by_id(str(first.appointment_id))) == before[0]
        detail = await again.get(first.message_id)
        assert detail is not None and detail.appointment == before[2][0]
        later = await again.ingest(carrying("RS5", version(KEY_A, note="3")))
        assert (later.appointment_id, later.appointment_version) == (first.appointment_id, 3)
    finally:
        await again.close()


def _dump_v1(path: Path) -> dict[str, list[tuple[object, ...]]]:
    tables = ("messages", "message_keys", "channel_results", "deliveries", "attempts")
    with sqlite3.connect(path) as conn:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in tables}


async def test_a_version_1_file_migrates_and_keeps_its_messages(
    db_path: Path, clock: FakeClock
) -> None:
    # Migrations are append-only, so the first one alone is exactly the released schema.
    old = SqliteStore(db_path, clock=clock, migrations=MIGRATIONS[:1])
    await old.open()
    stored = [await old.ingest(make_ingest(f"OLD{i}", destinations=("d1", "d2"))) for i in range(3)]
    await old.close()
    before = _dump_v1(db_path)
    with sqlite3.connect(db_path) as conn:
        assert user_version(conn) == 1
        assert conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'appointments'").fetchone() == (0,)
    assert len(before["messages"]) == 3 and len(before["deliveries"]) == 6

    store = SqliteStore(db_path, clock=clock)
    await store.open()
    try:
        with sqlite3.connect(db_path) as conn:
            assert user_version(conn) == len(MIGRATIONS)
        assert _dump_v1(db_path) == before
        for s in stored:
            detail = await store.get(s.message_id)
            assert detail is not None and detail.appointment is None
            assert detail.message.keys.control_id == f"OLD{stored.index(s)}"
            assert tuple(d.id for d in detail.deliveries) == s.delivery_ids
        assert [m.id for m in await store.search(MessageFilter(flagged=False))] == [
            s.message_id for s in reversed(stored)]
        made = await store.ingest(carrying("NEW1", version()))
        assert made.message_id == stored[-1].message_id + 1 and made.appointment_version == 1
        assert await store.claim_queued(["d1", "d2"], 10) == []  # still held, as before
    finally:
        await store.close()


async def test_overlapping_leaves_out_the_excluded_and_stops_at_the_limit(
    store: SqliteStore,
) -> None:
    for key, status in ((KEY_A, "booked"), (KEY_B, "cancelled"), (KEY_C, "booked")):
        await store.ingest(carrying(key[-5:], version(key, status=status)))
    everyone = await store.overlapping(("Practitioner/DR1",), T0, T0 + 24 * HOUR)
    assert len(everyone) == 3
    kept = await store.overlapping(("Practitioner/DR1",), T0, T0 + 24 * HOUR,
                                   exclude_key=KEY_A, exclude_statuses=frozenset({"cancelled"}))
    assert [r.key for r in kept] == [KEY_C]
    first = await store.overlapping(("Practitioner/DR1",), T0, T0 + 24 * HOUR, limit=1)
    assert len(first) == 1
