from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome

from engine.fhir import Invalid, Issue, check_appointment, operation_outcome, parse_appointment
from engine.fhir.validation import APPOINTMENT_STATUSES, MAX_ISSUES
from tests.unit.fhir.appointments import BOOKED, appointment, body


def rejected(raw: bytes, **kwargs: Any) -> Invalid:
    with pytest.raises(Invalid) as info:
        parse_appointment(raw, **kwargs)
    # Whatever the failure, the answer must be a valid OperationOutcome.
    OperationOutcome.model_validate(operation_outcome(info.value.issues))
    return info.value


def at(exc: Invalid, expression: str) -> list[Issue]:
    return [i for i in exc.issues if expression in i.expression]


# --- accepted ---------------------------------------------------------------------------


def test_valid_appointment_returns_the_json_unchanged() -> None:
    raw = body(BOOKED)
    assert parse_appointment(raw) == BOOKED
    assert check_appointment(copy.deepcopy(BOOKED)) == []


@pytest.mark.parametrize("status", sorted(APPOINTMENT_STATUSES))
def test_every_r4_status_code_is_accepted(status: str) -> None:
    assert parse_appointment(body(appointment(status=status)))["status"] == status


@pytest.mark.parametrize("status", ["proposed", "cancelled", "waitlist"])
def test_open_time_statuses_may_omit_start_and_end(status: str) -> None:
    resource = appointment(status=status, start=None, end=None, minutesDuration=None)
    assert parse_appointment(body(resource)) == resource


def test_end_equal_to_start_and_offsets_compare_as_instants() -> None:
    # 10:00+02:00 is 08:00Z: before the start in wall-clock text, after it in time.
    later = appointment(start="2031-03-04T07:30:00Z", end="2031-03-04T10:00:00+02:00")
    assert parse_appointment(body(later)) == later
    same = appointment(end=BOOKED["start"])
    assert parse_appointment(body(same)) == same


def test_utf8_bom_and_non_ascii_text_are_accepted() -> None:
    resource = appointment(comment="Rückruf erwünscht")
    assert parse_appointment(b"\xef\xbb\xbf" + body(resource)) == resource


# --- 400: not an Appointment ------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b'{"resourceType": "Appointment",}', b"not json", b"\xff\xfe{}"],
)
def test_malformed_json_is_400_structure(raw: bytes) -> None:
    exc = rejected(raw)
    assert exc.status == 400
    assert [i.code for i in exc.issues] == ["structure"]


def test_array_body_is_400() -> None:
    exc = rejected(body([BOOKED]))
    assert (exc.status, exc.issues[0].code) == (400, "structure")


def test_wrong_resource_type_is_400_not_supported() -> None:
    exc = rejected(body(appointment(resourceType="Patient")))
    assert (exc.status, exc.issues[0].code) == (400, "not-supported")
    assert "Appointment" in exc.issues[0].diagnostics


def test_missing_resource_type_is_400_invalid() -> None:
    # fhir.resources itself accepts a body without resourceType; the engine must not.
    exc = rejected(body(appointment(resourceType=None)))
    assert (exc.status, exc.issues[0].code) == (400, "invalid")


def test_oversized_body_is_400_too_long() -> None:
    raw = body(appointment(comment="x" * 2_000))
    assert parse_appointment(raw, max_bytes=len(raw)) is not None
    exc = rejected(raw, max_bytes=len(raw) - 1)
    assert (exc.status, exc.issues[0].code) == (400, "too-long")
    assert str(len(raw) - 1) in exc.issues[0].diagnostics


@pytest.mark.parametrize(
    "raw",
    [
        b'{"resourceType": "Appointment", "status": "booked", "status": "noshow"}',
        b'{"resourceType": "Appointment", "minutesDuration": NaN}',
    ],
)
def test_json_that_fhir_forbids_is_400(raw: bytes) -> None:
    exc = rejected(raw)
    assert (exc.status, exc.issues[0].code) == (400, "structure")


def test_deeply_nested_body_is_400_not_a_crash() -> None:
    exc = rejected(b"[" * 100_000 + b"]" * 100_000, max_bytes=1_000_000)
    assert exc.status == 400


# --- 422: the engine's rules ------------------------------------------------------------


def test_unknown_status_is_422_at_appointment_status() -> None:
    exc = rejected(body(appointment(status="bogus")))
    assert exc.status == 422
    [issue] = at(exc, "Appointment.status")
    assert issue.code == "code-invalid"
    assert "booked" in issue.diagnostics  # names the expected codes


def test_end_before_start_is_422_at_appointment_end() -> None:
    exc = rejected(body(appointment(end="2031-03-04T08:59:59Z")))
    assert exc.status == 422
    assert [(i.code, i.expression) for i in exc.issues] == [("business-rule", ("Appointment.end",))]


@pytest.mark.parametrize("participant", [None, []])
def test_no_participant_is_422(participant: Any) -> None:
    exc = rejected(body(appointment(participant=participant)))
    assert exc.status == 422
    # Reported once, whether fhir.resources (missing) or the engine (empty) noticed it.
    [issue] = at(exc, "Appointment.participant")
    assert issue.code == "required"


@pytest.mark.parametrize(
    "identifier", [None, [], [{"system": "urn:example:placer"}], [{"value": ""}]]
)
def test_no_identifier_value_is_422(identifier: Any) -> None:
    exc = rejected(body(appointment(identifier=identifier)))
    assert exc.status == 422
    assert at(exc, "Appointment.identifier")


@pytest.mark.parametrize("missing", ["start", "end"])
def test_booked_without_start_or_end_breaks_app_3(missing: str) -> None:
    exc = rejected(body(appointment(**{missing: None})))
    [issue] = exc.issues
    assert (issue.code, issue.expression) == ("invariant", (f"Appointment.{missing}",))
    assert issue.diagnostics.startswith("app-3")


def test_proposed_with_only_a_start_breaks_app_2() -> None:
    exc = rejected(body(appointment(status="proposed", end=None)))
    [issue] = exc.issues
    assert issue.expression == ("Appointment.end",)
    assert issue.diagnostics.startswith("app-2")


def test_participant_needs_type_or_actor_and_a_real_status() -> None:
    people = [{"status": "accepted"}, {"actor": {"reference": "Patient/p"}, "status": "maybe"}]
    exc = rejected(body(appointment(participant=people)))
    assert [i.expression for i in exc.issues] == [
        ("Appointment.participant[0]",),
        ("Appointment.participant[1].status",),
    ]


def test_cancelation_reason_only_when_cancelled_app_4() -> None:
    reason = {"text": "synthetic reason"}
    exc = rejected(body(appointment(cancelationReason=reason)))
    assert [i.expression for i in exc.issues] == [("Appointment.cancelationReason",)]
    cancelled = appointment(status="cancelled", cancelationReason=reason)
    assert parse_appointment(body(cancelled)) == cancelled


def test_check_appointment_survives_any_shape() -> None:
    issues = check_appointment({"status": 7, "participant": "x", "identifier": {}, "start": 1})
    assert {e for i in issues for e in i.expression} >= {
        "Appointment.status",
        "Appointment.participant",
        "Appointment.identifier",
    }


# --- 422: structure (fhir.resources) ----------------------------------------------------


def test_participant_as_a_string_is_422_with_expression() -> None:
    exc = rejected(body(appointment(participant="not a list")))
    assert exc.status == 422
    [issue] = at(exc, "Appointment.participant")
    assert issue.code == "structure"


def test_nested_structural_error_points_at_the_element() -> None:
    people = [{"actor": "Patient/p", "status": "accepted"}]
    exc = rejected(body(appointment(participant=people)))
    assert [i.expression for i in exc.issues] == [("Appointment.participant[0].actor",)]


def test_unknown_element_is_rejected_422_at_its_parent() -> None:
    # fhir.resources forbids extra fields (model_config extra="forbid"), at any depth. The
    # unknown name is the client's own text, so the issue points at the parent element.
    exc = rejected(body(appointment(colour="blue")))
    assert exc.status == 422
    [issue] = exc.issues
    assert (issue.code, issue.expression) == ("structure", ("Appointment",))
    assert "colour" not in json.dumps(operation_outcome(exc.issues))
    people = [{"actor": {"reference": "Patient/p"}, "status": "accepted", "mood": "ok"}]
    exc = rejected(body(appointment(participant=people)))
    assert exc.issues[0].expression == ("Appointment.participant[0]",)


def test_unknown_element_with_an_odd_name_is_not_quoted() -> None:
    exc = rejected(body(appointment(**{"Jane Doe 555-0100": 1})))
    assert exc.issues[0].expression == ("Appointment",)
    assert "Jane" not in json.dumps(operation_outcome(exc.issues))


def test_bad_primitive_formats_are_422_values() -> None:
    exc = rejected(body(appointment(minutesDuration="thirty", start="next tuesday")))
    assert {i.expression for i in exc.issues} == {
        ("Appointment.minutesDuration",),
        ("Appointment.start",),
    }


def test_several_problems_are_reported_together() -> None:
    resource = appointment(
        status="bogus",
        identifier=None,
        end="2031-03-04T08:00:00Z",
        minutesDuration="thirty",
        participant=[{"actor": {"reference": "Patient/p"}, "status": "accepted", "x": 1}],
    )
    exc = rejected(body(resource))
    assert exc.status == 422
    expressions = {e for i in exc.issues for e in i.expression}
    assert expressions == {
        "Appointment.status",
        "Appointment.identifier",
        "Appointment.end",
        "Appointment.minutesDuration",
        "Appointment.participant[0]",
    }


def test_issue_count_is_bounded() -> None:
    exc = rejected(body(appointment(**{f"extra{n}": n for n in range(500)})))
    assert len(exc.issues) == MAX_ISSUES
    assert exc.issues[-1].code == "too-costly"


def test_contained_resource_of_unknown_type_is_422_not_a_crash() -> None:
    # fhir.resources raises a bare KeyError here rather than a ValidationError.
    exc = rejected(body(appointment(contained=[{"resourceType": "NoSuchType"}])))
    assert exc.status == 422
    assert exc.issues[0].code == "structure"
    assert "NoSuchType" not in str(exc)
