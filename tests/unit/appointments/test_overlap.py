"""Double booking: another active appointment holding a shared actor over an overlapping
half-open [start, end) interval. The store proposes candidates; assess re-checks them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.appointments import Assessment, Known, assess
from tests.unit.appointments.builders import appointment, key, known

T0 = 1_000.0
BASE = datetime(2030, 1, 7, 8, 0, tzinfo=UTC)


def at(minutes: int) -> str:
    return (BASE + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def slot(placer: str, begin: int, end: int, **kw: Any) -> dict[str, Any]:
    return appointment(placer, start=at(begin), end=at(end), **kw)


def clashes(new: dict[str, Any], *others: Known,
            current: Known | None = None) -> tuple[str, ...]:
    result = assess(new, current, source_time=T0, overlapping=others)
    found = [w for w in result.warnings if w.kind == "double-booking"]
    assert len(found) <= 1
    return found[0].related if found else ()


def test_same_provider_at_an_overlapping_time_is_double_booked() -> None:
    other = known(slot("APT2", 15, 45, room="ROOM9"))
    result = assess(slot("APT1", 0, 30, room="ROOM1"), None, source_time=T0,
                    overlapping=[other])
    assert result.change == "created"
    assert result.apply
    (warning,) = result.warnings
    assert warning.kind == "double-booking"
    assert warning.related == (key("APT2"),)
    assert key("APT2") in warning.text
    assert "DR1" in warning.text
    assert "MRN1" not in warning.text


def test_same_room_with_another_provider_is_double_booked() -> None:
    other = known(slot("APT2", 10, 20, provider="DR2"))
    assert clashes(slot("APT1", 0, 30), other) == (key("APT2"),)


def test_an_update_into_a_clash_is_flagged_and_the_old_version_is_not_a_clash() -> None:
    current = known(slot("APT1", 0, 30))
    other = known(slot("APT2", 60, 90))
    moved = slot("APT1", 75, 105)
    result = assess(moved, current, source_time=T0 + 1, overlapping=[current, other])
    assert result.change == "rescheduled"
    assert [w.related for w in result.warnings] == [(key("APT2"),)]


@pytest.mark.parametrize(("begin", "end"), [(30, 60), (-30, 0)])
def test_touching_intervals_do_not_overlap(begin: int, end: int) -> None:
    assert clashes(slot("APT1", 0, 30), known(slot("APT2", begin, end))) == ()


@pytest.mark.parametrize(("begin", "end"), [(29, 60), (-30, 1), (10, 20), (-10, 40), (0, 30)])
def test_any_shared_minute_overlaps(begin: int, end: int) -> None:
    assert clashes(slot("APT1", 0, 30), known(slot("APT2", begin, end))) == (key("APT2"),)


@pytest.mark.parametrize("status", ["cancelled", "noshow", "entered-in-error", "waitlist",
                                    "proposed"])
def test_an_inactive_other_appointment_does_not_count(status: str) -> None:
    assert clashes(slot("APT1", 0, 30), known(slot("APT2", 0, 30, status=status))) == ()


@pytest.mark.parametrize("status", ["cancelled", "noshow", "waitlist"])
def test_an_inactive_new_version_books_nothing(status: str) -> None:
    assert clashes(slot("APT1", 0, 30, status=status), known(slot("APT2", 0, 30))) == ()


def test_the_same_appointment_is_never_its_own_clash() -> None:
    itself = known(slot("APT1", 0, 30))
    assert clashes(slot("APT1", 10, 40), itself) == ()
    assert clashes(slot("APT1", 10, 40), itself, current=itself) == ()


def test_candidates_without_a_shared_actor_or_time_are_rechecked_and_dropped() -> None:
    elsewhere = known(slot("APT2", 0, 30, provider="DR2", room="ROOM2"))
    later = known(slot("APT3", 120, 150))
    assert clashes(slot("APT1", 0, 30), elsewhere, later) == ()


def test_a_declined_participant_is_not_held() -> None:
    other = slot("APT2", 0, 30, room=None)
    other["participant"][1]["status"] = "declined"
    assert clashes(slot("APT1", 0, 30), known(other)) == ()


def test_several_clashes_give_one_warning_naming_each_once_in_order() -> None:
    others = [known(slot("APT9", 0, 30)), known(slot("APT3", 20, 40, provider="DR2")),
              known(slot("APT9", 0, 30))]
    assert clashes(slot("APT1", 0, 30), *others) == (key("APT3"), key("APT9"))


def test_duration_stands_in_for_a_missing_end_and_offsets_are_compared_as_instants() -> None:
    new = appointment("APT1", start="2030-01-07T10:00:00+01:00", end=None, minutesDuration=30)
    other = appointment("APT2", start="2030-01-07T09:15:00Z", end="2030-01-07T09:45:00Z")
    assert clashes(new, known(other)) == (key("APT2"),)


def test_an_appointment_without_end_or_duration_takes_part_in_no_clash() -> None:
    assert clashes(appointment("APT1", end=None), known(appointment("APT2"))) == ()
    assert clashes(appointment("APT1"), known(appointment("APT2", end=None))) == ()


def test_an_out_of_order_message_is_not_checked_for_clashes() -> None:
    current = known(slot("APT1", 0, 30, comment="v2"), source_time=T0)
    result = assess(slot("APT1", 0, 30, comment="v1"), current, source_time=T0 - 1,
                    overlapping=[known(slot("APT2", 0, 30))])
    assert [w.kind for w in result.warnings] == ["out-of-order"]


def test_double_booking_and_unknown_appointment_are_both_reported() -> None:
    result = assess(slot("APT1", 0, 30), None, source_time=T0, expects_existing=True,
                    overlapping=[known(slot("APT2", 0, 30))])
    assert [w.kind for w in result.warnings] == ["unknown-appointment", "double-booking"]
    assert result == Assessment("created", result.warnings, True)


@settings(derandomize=True, database=None, max_examples=300, deadline=None)
@given(st.integers(0, 120), st.integers(1, 60), st.integers(0, 120), st.integers(1, 60))
def test_overlap_matches_integer_half_open_intervals(a: int, la: int, b: int, lb: int) -> None:
    expected = a < b + lb and b < a + la
    forward = clashes(slot("APT1", a, a + la), known(slot("APT2", b, b + lb)))
    backward = clashes(slot("APT2", b, b + lb), known(slot("APT1", a, a + la)))
    assert bool(forward) == bool(backward) == expected
