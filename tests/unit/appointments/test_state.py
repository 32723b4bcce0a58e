"""assess: created / updated / rescheduled / cancelled / no_show / entered-in-error /
unchanged, and the unknown-appointment, update-after-cancel and out-of-order warnings."""

from __future__ import annotations

import copy

import pytest

from engine.appointments import Assessment, Change, Warning_, assess
from tests.unit.appointments.builders import appointment, key, known

T0 = 1_000.0


def kinds(result: Assessment) -> list[str]:
    return [w.kind for w in result.warnings]


@pytest.mark.parametrize("status", ["booked", "pending", "proposed", "waitlist", "arrived",
                                    "checked-in", "fulfilled"])
def test_first_sighting_is_created_without_warning(status: str) -> None:
    result = assess(appointment(status=status), None, source_time=T0)
    assert result == Assessment("created", (), apply=True)


@pytest.mark.parametrize("status", ["cancelled", "noshow"])
def test_first_sighting_of_an_ended_appointment_is_created_and_flagged_unknown(
        status: str) -> None:
    result = assess(appointment(status=status), None, source_time=T0)
    assert result.change == "created"
    assert result.apply
    assert result.warnings == (Warning_("unknown-appointment", result.warnings[0].text,
                                        (key("APT1"),)),)
    assert key("APT1") in result.warnings[0].text


def test_first_sighting_of_a_deletion_is_entered_in_error_and_flagged_unknown() -> None:
    result = assess(appointment(status="entered-in-error"), None, source_time=T0)
    assert result.change == "entered-in-error"
    assert kinds(result) == ["unknown-appointment"]


def test_an_update_trigger_for_an_unknown_appointment_is_flagged() -> None:
    result = assess(appointment(), None, source_time=T0, expects_existing=True)
    assert result.change == "created"
    assert kinds(result) == ["unknown-appointment"]


def test_replay_of_the_same_resource_is_unchanged() -> None:
    resource = appointment()
    current = known(copy.deepcopy(resource))
    assert assess(resource, current, source_time=T0) == Assessment("unchanged", (), True)


def test_replay_of_a_cancelled_appointment_is_unchanged_and_not_flagged() -> None:
    resource = appointment(status="cancelled")
    result = assess(resource, known(copy.deepcopy(resource)), source_time=T0,
                    expects_existing=True)
    assert result == Assessment("unchanged", (), True)


def test_server_id_meta_and_instant_spelling_do_not_count_as_changes() -> None:
    stored = appointment(id="srv-1",
                         meta={"versionId": "3", "lastUpdated": "2030-01-01T00:00:00Z"})
    again = appointment(start="2030-01-07T05:00:00-05:00", end="2030-01-07T10:30:00+00:00",
                        text={"status": "generated", "div": "<div>x</div>"})
    assert assess(again, known(stored), source_time=T0).change == "unchanged"


def test_an_older_replay_of_the_current_content_is_unchanged_not_out_of_order() -> None:
    resource = appointment()
    result = assess(resource, known(copy.deepcopy(resource), source_time=T0),
                    source_time=T0 - 60)
    assert result == Assessment("unchanged", (), True)


@pytest.mark.parametrize(("start", "end"), [
    ("2030-01-07T11:00:00Z", "2030-01-07T11:30:00Z"),  # both moved
    ("2030-01-07T10:00:00Z", "2030-01-07T10:45:00Z"),  # longer
    ("2030-01-07T09:45:00Z", "2030-01-07T10:30:00Z"),  # earlier start
])
def test_moving_start_or_end_is_rescheduled(start: str, end: str) -> None:
    result = assess(appointment(start=start, end=end), known(appointment()), source_time=T0)
    assert result == Assessment("rescheduled", (), True)


def test_removing_the_end_is_rescheduled() -> None:
    result = assess(appointment(end=None), known(appointment()), source_time=T0)
    assert result.change == "rescheduled"


def test_other_changes_are_updated() -> None:
    result = assess(appointment(comment="Interpreter requested"), known(appointment()),
                    source_time=T0)
    assert result == Assessment("updated", (), True)


def test_same_instant_in_another_offset_with_another_change_is_updated() -> None:
    moved_spelling = appointment(start="2030-01-07T11:00:00+01:00", comment="Bring referral")
    assert assess(moved_spelling, known(appointment()), source_time=T0).change == "updated"


@pytest.mark.parametrize(("status", "change"), [
    ("cancelled", "cancelled"), ("noshow", "no_show"), ("entered-in-error", "entered-in-error"),
])
def test_status_changes_win_over_a_time_change(status: str, change: Change) -> None:
    new = appointment(status=status, start="2030-01-08T10:00:00Z", end="2030-01-08T10:30:00Z")
    result = assess(new, known(appointment()), source_time=T0)
    assert result == Assessment(change, (), True)


def test_a_cancelled_appointment_changed_again_is_updated_not_cancelled_twice() -> None:
    old = appointment(status="cancelled")
    result = assess(appointment(status="cancelled", comment="Patient called"), known(old),
                    source_time=T0)
    assert result == Assessment("updated", (), True)


@pytest.mark.parametrize("old_status", ["cancelled", "entered-in-error"])
@pytest.mark.parametrize("new_status", ["booked", "arrived", "noshow"])
def test_an_update_after_a_cancel_is_flagged(old_status: str, new_status: str) -> None:
    current = known(appointment(status=old_status), version=4)
    result = assess(appointment(status=new_status), current, source_time=T0 + 1)
    assert kinds(result) == ["update-after-cancel"]
    warning = result.warnings[0]
    assert warning.related == (key("APT1"),)
    assert "version 4" in warning.text
    assert result.apply


def test_an_older_message_is_out_of_order_and_not_applied() -> None:
    current = known(appointment(comment="v2"), version=2, source_time=T0)
    result = assess(appointment(comment="v1"), current, source_time=T0 - 1)
    assert result.change == "updated"
    assert kinds(result) == ["out-of-order"]
    assert not result.apply
    assert result.warnings[0].related == (key("APT1"),)


def test_a_late_booking_after_its_cancellation_is_out_of_order_only() -> None:
    current = known(appointment(status="cancelled"), source_time=T0)
    result = assess(appointment(status="booked"), current, source_time=T0 - 3600)
    assert kinds(result) == ["out-of-order"]
    assert not result.apply


@pytest.mark.parametrize(("new_time", "old_time"), [(T0, T0), (T0 + 1, T0), (None, T0),
                                                    (T0, None), (None, None)])
def test_equal_newer_or_unknown_times_are_in_order(new_time: float | None,
                                                    old_time: float | None) -> None:
    current = known(appointment(comment="v1"), source_time=old_time)
    result = assess(appointment(comment="v2"), current, source_time=new_time)
    assert result == Assessment("updated", (), True)


def test_warning_texts_carry_ids_not_names() -> None:
    marker = "Zyxwvut Markername"
    new = appointment(status="booked")
    new["participant"][0]["actor"]["display"] = marker
    old = appointment(status="cancelled")
    old["participant"][0]["actor"]["display"] = marker
    texts = [w.text for w in assess(new, known(old), source_time=T0).warnings]
    texts += [w.text for w in assess(new, None, source_time=T0,
                                     expects_existing=True).warnings]
    texts += [w.text for w in assess(new, known(old, source_time=T0 + 1),
                                     source_time=T0).warnings]
    assert len(texts) == 3
    assert not any(marker in t or "MRN1" in t for t in texts)


def test_every_warning_kind_has_a_text_for_senders() -> None:
    from typing import get_args

    from engine.appointments.state import CALLER_TEXT, WarningKind

    assert set(CALLER_TEXT) == set(get_args(WarningKind))
