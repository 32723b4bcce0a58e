"""Webhook event payloads: which event each assessment raises, and that they stay thin."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine.appointments import (
    EVENT_TYPES,
    Assessment,
    Change,
    Warning_,
    assess,
    event_for,
    sync_failed_event,
)
from tests.unit.appointments.builders import (
    DR_SYSTEM,
    ROOM_SYSTEM,
    appointment,
    key,
    known,
)

NOW = 1_893_576_600.25  # 2030-01-02T09:30:00.250Z
UNKNOWN = Warning_("unknown-appointment", "appointment is not known", (key("APT1"),))

# Marker values in every element that must never leave in an event.
NAME, GIVEN, BIRTH = "Qzmarkfamily", "Qzmarkgiven", "1901-02-03"
PHONE, STREET, EMAIL = "555-0199-7711", "77 Qzmarker Street", "qzmark@example.invalid"
NOTE, DISPLAY = "Qzmarknote allergic", "Dr Qzmarkdisplay"
MARKERS = (NAME, GIVEN, BIRTH, PHONE, STREET, EMAIL, NOTE, DISPLAY, "Qzmarkroom")


def rich() -> dict[str, Any]:
    """An appointment carrying names and contact details wherever a sender might put them."""
    resource = appointment(comment=NOTE, description=NOTE, patientInstruction=NOTE)
    resource["contained"] = [{"resourceType": "Patient", "id": "p", "birthDate": BIRTH,
                              "name": [{"family": NAME, "given": [GIVEN]}],
                              "telecom": [{"system": "phone", "value": PHONE},
                                          {"system": "email", "value": EMAIL}],
                              "address": [{"line": [STREET]}]}]
    patient, doctor, room = resource["participant"]
    patient["actor"]["display"] = f"{GIVEN} {NAME}"
    patient["actor"]["identifier"]["assigner"] = {"display": NAME}
    doctor["actor"]["display"] = DISPLAY
    room["actor"]["display"] = "Qzmarkroom"
    return resource


def test_created_carries_ids_times_and_status_only() -> None:
    event = event_for(Assessment("created", (), True), appointment(), now=NOW)
    assert event == {
        "type": "appointment.created",
        "timestamp": "2030-01-02T09:30:00.250Z",
        "data": {
            "appointment_id": key("APT1"),
            "patient_id": "urn:engine:v2-namespace:HOSP|MRN1",
            "provider_id": f"{DR_SYSTEM}|DR1",
            "location_id": f"{ROOM_SYSTEM}|ROOM1",
            "start": "2030-01-07T10:00:00Z",
            "end": "2030-01-07T10:30:00Z",
            "status": "booked",
        },
    }


@pytest.mark.parametrize(("change", "status", "expected"), [
    ("updated", "booked", "appointment.updated"),
    ("rescheduled", "booked", "appointment.updated"),
    ("cancelled", "cancelled", "appointment.cancelled"),
    ("no_show", "noshow", "appointment.no_show"),
    ("entered-in-error", "entered-in-error", "appointment.cancelled"),
])
def test_each_change_has_its_event(change: Change, status: str, expected: str) -> None:
    event = event_for(Assessment(change, (), True), appointment(status=status), now=NOW)
    assert event is not None
    assert event["type"] == expected
    assert event["data"]["status"] == status


@pytest.mark.parametrize(("status", "expected"), [("cancelled", "appointment.cancelled"),
                                                  ("noshow", "appointment.no_show")])
def test_an_unknown_appointment_seen_ended_is_announced_by_its_status(status: str,
                                                                      expected: str) -> None:
    resource = appointment(status=status)
    event = event_for(assess(resource, None, source_time=1.0), resource, now=NOW)
    assert event is not None
    assert event["type"] == expected


def test_an_unknown_appointment_entered_in_error_raises_no_event() -> None:
    resource = appointment(status="entered-in-error")
    result = assess(resource, None, source_time=1.0)
    assert result.warnings[0].kind == "unknown-appointment"
    assert event_for(result, resource, now=NOW) is None


def test_a_replay_raises_no_event() -> None:
    resource = appointment()
    result = assess(resource, known(appointment()), source_time=1_000.0)
    assert result.change == "unchanged"
    assert event_for(result, resource, now=NOW) is None


def test_an_out_of_order_version_raises_no_event() -> None:
    resource = appointment(status="cancelled")
    result = assess(resource, known(appointment(), source_time=2.0), source_time=1.0)
    assert not result.apply
    assert event_for(result, resource, now=NOW) is None


def test_flagged_changes_are_still_announced() -> None:
    result = Assessment("created", (UNKNOWN,), True)
    event = event_for(result, appointment(), now=NOW)
    assert event is not None
    assert event["type"] == "appointment.created"


def test_references_are_ids_and_missing_actors_are_null() -> None:
    resource = appointment(provider=None, room=None, end=None)
    resource["participant"] = [
        {"actor": {"reference": "Patient/pat-7", "display": DISPLAY}, "status": "accepted"},
        {"actor": {"reference": "PractitionerRole/role-2"}, "status": "declined"},
    ]
    event = event_for(Assessment("cancelled", (), True), resource, now=NOW)
    assert event is not None
    data = event["data"]
    assert (data["patient_id"], data["provider_id"], data["location_id"]) == (
        "Patient/pat-7", "PractitionerRole/role-2", None)
    assert (data["start"], data["end"]) == ("2030-01-07T10:00:00Z", None)


def test_times_are_utc_and_a_duration_gives_the_end() -> None:
    resource = appointment(start="2030-01-07T05:00:00-05:00", end=None, minutesDuration=45)
    event = event_for(Assessment("created", (), True), resource, now=0)
    assert event is not None
    assert (event["data"]["start"], event["data"]["end"]) == ("2030-01-07T10:00:00Z",
                                                              "2030-01-07T10:45:00Z")
    assert event["timestamp"] == "1970-01-01T00:00:00.000Z"


def test_a_status_that_is_not_a_code_is_not_echoed() -> None:
    event = event_for(Assessment("updated", (), True), appointment(status=NOTE), now=NOW)
    assert event is not None
    assert event["data"]["status"] is None


@pytest.mark.parametrize("change", ["created", "updated", "rescheduled", "cancelled", "no_show",
                                    "entered-in-error"])
def test_no_name_birth_date_phone_address_or_note_leaves_in_an_event(change: Change) -> None:
    event = event_for(Assessment(change, (), True), rich(), now=NOW)
    assert event is not None
    assert event["type"] in EVENT_TYPES
    text = json.dumps(event)
    assert [m for m in MARKERS if m in text] == []
    assert "MRN1" in text  # the ids are there: the check above can fail


def test_sync_failed_carries_the_booking_reference_and_a_code() -> None:
    event = sync_failed_event(rich(), destination="clinic-ehr", reason_code="retries-exhausted",
                              now=NOW)
    assert event["type"] == "appointment.sync_failed"
    assert event["timestamp"] == "2030-01-02T09:30:00.250Z"
    data = event["data"]
    assert data["booking_reference"] == "APT1"
    assert data["appointment_id"] == key("APT1")
    assert (data["destination"], data["reason_code"]) == ("clinic-ehr", "retries-exhausted")
    assert data["start"] == "2030-01-07T10:00:00Z"
    text = json.dumps(event)
    assert [m for m in MARKERS if m in text] == []


def test_sync_failed_reference_falls_back_to_the_filler_id() -> None:
    resource = appointment()
    resource["identifier"] = resource["identifier"][1:]
    event = sync_failed_event(resource, destination="fhir", reason_code="http-422", now=NOW)
    assert event["data"]["booking_reference"] == "F-APT1"


@pytest.mark.parametrize(("destination", "reason"), [
    ("clinic-ehr", "AE: patient Qzmarkfamily not found"),
    ("clinic-ehr", ""),
    ("clinic ehr", "AR"),
    ("clinic-ehr", "x" * 129),
])
def test_sync_failed_refuses_free_text(destination: str, reason: str) -> None:
    with pytest.raises(ValueError, match="short code") as caught:
        sync_failed_event(appointment(), destination=destination, reason_code=reason, now=NOW)
    assert "Qzmark" not in str(caught.value)
