"""The access watch on a real audit file with a fake clock: bursts (one alert at exactly
reads + 1, none while the burst goes on, a new one after a quiet spell, across two store
connections as two CLI processes would be), out-of-hours reads (days, ranges over midnight,
the time zone, at most once per identity per hour), and that a failing watch never fails the
append."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from engine.config.model import AccessHours, BurstWatch
from engine.security.audit import Actor, AuditEvent, AuditKey, AuditRecord
from engine.security.audit_store import AuditStore
from engine.security.watch import AccessWatch, WatchPolicy, inside
from tests.unit.security.audit_support import KEY_TEXT
from tests.unit.security.identity_support import FakeClock

KEY = AuditKey.from_bytes(KEY_TEXT.encode(), "test")
BERLIN = ZoneInfo("Europe/Berlin")
SHOW = AuditEvent("R", "engine show", message_ids=(7,), patient_ids=("PAT777",))
SEARCH = AuditEvent("E", "engine messages", patient_ids=("PAT777",), query={}, count=1)
REPLAY = AuditEvent("E", "engine replay", message_ids=(7,))
WORKDAY = AccessHours(start=7 * 60, end=19 * 60, days=(0, 1, 2, 3, 4), timezone="Europe/Berlin")
NIGHTS = AccessHours(start=22 * 60, end=6 * 60, days=(4,), timezone="UTC")  # Friday night


def at(y: int, mo: int, d: int, h: int, mi: int = 0, zone: ZoneInfo = BERLIN) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=zone).timestamp()


def alert_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "engine.alerts"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(at(2025, 6, 16, 10))  # a Monday, 10:00 in Berlin


def store(tmp_path: Path, clock: FakeClock, policy: WatchPolicy) -> AuditStore:
    return AuditStore(tmp_path / "audit.db", KEY, watch=AccessWatch(policy), now=clock)


def test_burst_alerts_once_at_reads_plus_one(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="engine.alerts")
    policy = WatchPolicy(burst=BurstWatch(reads=5, within=30.0))
    with store(tmp_path, clock, policy) as trail:
        for _ in range(5):
            trail.append(Actor("alice"), SHOW)
            clock.t += 1
        assert alert_lines(caplog) == []
        trail.append(Actor("alice"), SEARCH)  # the sixth read within 30 s
        assert alert_lines(caplog) == ["ALERT access burst: alice made 6 reads in 30s"]
        for _ in range(20):  # the burst goes on: no more alerts
            clock.t += 1
            trail.append(Actor("alice"), SHOW)
        trail.append(Actor("bob"), SHOW)  # someone else reading is not alice's burst
        trail.append(Actor("alice"), REPLAY)  # an operation is not a read
    assert len(alert_lines(caplog)) == 1
    record = next(r for r in caplog.records if r.name == "engine.alerts")
    assert record.alert_kind == "access_burst"  # type: ignore[attr-defined]
    assert "PAT777" not in repr(record.__dict__)


def test_a_new_burst_after_a_quiet_spell_alerts_again(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="engine.alerts")
    policy = WatchPolicy(burst=BurstWatch(reads=2, within=10.0))
    with store(tmp_path, clock, policy) as trail:
        for _ in range(3):
            trail.append(Actor("alice"), SHOW)
        clock.t += 10.5  # the window empties: the three reads are older than 10 s
        for _ in range(2):
            trail.append(Actor("alice"), SHOW)
        assert len(alert_lines(caplog)) == 1
        trail.append(Actor("alice"), SHOW)
    assert len(alert_lines(caplog)) == 2


def test_reads_from_two_processes_add_up_to_one_burst(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="engine.alerts")
    policy = WatchPolicy(burst=BurstWatch(reads=3, within=30.0))
    first, second = store(tmp_path, clock, policy), store(tmp_path, clock, policy)
    try:
        for trail in (first, second, first, second, first, second):
            trail.append(Actor("alice"), SHOW)
            clock.t += 1
    finally:
        first.close()
        second.close()
    assert alert_lines(caplog) == ["ALERT access burst: alice made 4 reads in 30s"]


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (at(2025, 6, 16, 6, 59), False),  # Monday before 07:00
        (at(2025, 6, 16, 7, 0), True),
        (at(2025, 6, 16, 18, 59), True),
        (at(2025, 6, 16, 19, 0), False),  # `to` is exclusive
        (at(2025, 6, 14, 10, 0), False),  # Saturday
        # 05:30 UTC is 07:30 in Berlin (summer time): inside, although 05:30 is not
        (at(2025, 6, 17, 5, 30, ZoneInfo("UTC")), True),
        (at(2025, 1, 14, 6, 30, ZoneInfo("UTC")), True),  # 07:30 in Berlin in winter
        (at(2025, 1, 14, 5, 30, ZoneInfo("UTC")), False),  # 06:30 in Berlin in winter
    ],
)
def test_hours_with_days_and_the_time_zone(when: float, expected: bool):
    assert inside(WORKDAY, when) is expected


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (at(2025, 6, 20, 22, 0, ZoneInfo("UTC")), True),  # Friday 22:00
        (at(2025, 6, 21, 3, 0, ZoneInfo("UTC")), True),  # Saturday 03:00: Friday's night
        (at(2025, 6, 21, 6, 0, ZoneInfo("UTC")), False),
        (at(2025, 6, 21, 22, 0, ZoneInfo("UTC")), False),  # Saturday night is not listed
        (at(2025, 6, 20, 3, 0, ZoneInfo("UTC")), False),  # Friday 03:00 is Thursday's night
        (at(2025, 6, 20, 12, 0, ZoneInfo("UTC")), False),
    ],
)
def test_hours_over_midnight_belong_to_the_day_they_start(when: float, expected: bool):
    assert inside(NIGHTS, when) is expected


def test_out_of_hours_alerts_at_most_once_per_identity_per_hour(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="engine.alerts")
    policy = WatchPolicy(burst=None, hours=WORKDAY)
    clock.t = at(2025, 6, 16, 20, 0)  # Monday 20:00
    with store(tmp_path, clock, policy) as trail:
        trail.append(Actor("alice"), SHOW)
        clock.t += 1800
        trail.append(Actor("alice"), SEARCH)
        trail.append(Actor("bob"), SHOW)
        clock.t += 2 * 3600  # alice's last out-of-hours read is two hours old
        trail.append(Actor("alice"), SHOW)
    # A second process (another CLI run) sees alice's read 10 minutes ago in the store.
    clock.t += 600
    with store(tmp_path, clock, policy) as trail:
        trail.append(Actor("alice"), SHOW)
    clock.t = at(2025, 6, 17, 10, 0)  # Tuesday 10:00: within hours
    with store(tmp_path, clock, policy) as trail:
        trail.append(Actor("alice"), SHOW)
    assert alert_lines(caplog) == [
        "ALERT access outside hours: alice",
        "ALERT access outside hours: bob",
        "ALERT access outside hours: alice",
    ]


def test_a_failing_watch_does_not_fail_the_append(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
):
    def broken(trail: AuditStore, record: AuditRecord) -> None:
        raise RuntimeError("PAT777")

    with AuditStore(tmp_path / "audit.db", KEY, watch=broken, now=clock) as trail:
        record = trail.append(Actor("alice"), SHOW)
        assert [r.seq for r in trail.records()] == [record.seq]
    errors = [r.getMessage() for r in caplog.records if r.name == "engine.audit"]
    assert errors == ["access watch failed on audit record 1: RuntimeError"]
