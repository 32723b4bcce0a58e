from __future__ import annotations

import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome

from engine.fhir import Invalid, Issue, operation_outcome


def test_outcome_json_is_a_valid_r4b_operation_outcome() -> None:
    issues = [
        Issue("error", "code-invalid", "status is not a code", ("Appointment.status",)),
        Issue("warning", "business-rule", "end is before start", ("Appointment.end",)),
        Issue("error", "too-long", "body over the limit"),
    ]
    outcome = operation_outcome(issues)
    parsed = OperationOutcome.model_validate(outcome)
    assert [i.code for i in parsed.issue] == ["code-invalid", "business-rule", "too-long"]
    assert parsed.issue[0].expression == ["Appointment.status"]
    assert "expression" not in outcome["issue"][2]


def test_empty_issue_list_reads_as_all_ok() -> None:
    outcome = operation_outcome([])
    OperationOutcome.model_validate(outcome)
    assert outcome["issue"] == [
        {"severity": "information", "code": "informational", "diagnostics": "All OK"}
    ]


def test_invalid_carries_status_issues_and_outcome() -> None:
    first = Issue("error", "required", "participant missing", ("Appointment.participant",))
    second = Issue("error", "required", "identifier missing", ("Appointment.identifier",))
    exc = Invalid(422, [first, second])
    assert exc.status == 422
    assert exc.issues == (first, second)
    assert str(exc) == "422 required: Appointment.participant: participant missing (+1 more)"
    assert exc.outcome() == operation_outcome([first, second])


def test_invalid_without_issues_is_refused() -> None:
    with pytest.raises(ValueError):
        Invalid(400, [])
