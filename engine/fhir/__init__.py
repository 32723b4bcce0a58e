"""FHIR R4B support: Appointment validation and OperationOutcome building (pure, no I/O).

The HTTP listener calls `parse_appointment` on each body and answers `Invalid.status` with
`operation_outcome(Invalid.issues)`; no text produced here quotes a value from the body.
"""

from engine.fhir.outcome import Invalid, Issue, operation_outcome
from engine.fhir.validation import (
    check_appointment,
    parse_appointment,
    read_json,
    validate_appointment,
)

__all__ = [
    "Invalid",
    "Issue",
    "check_appointment",
    "operation_outcome",
    "parse_appointment",
    "read_json",
    "validate_appointment",
]
