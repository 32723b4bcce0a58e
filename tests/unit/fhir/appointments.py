"""Synthetic FHIR Appointments for the fhir tests (invented ids, no real people)."""

from __future__ import annotations

import copy
import json
from typing import Any

BOOKED: dict[str, Any] = {
    "resourceType": "Appointment",
    "id": "appt-test-0001",
    "identifier": [{"system": "urn:example:placer", "value": "PLC-TEST-0001"}],
    "status": "booked",
    "serviceType": [{"coding": [{"system": "urn:example:svc", "code": "FOLLOWUP"}]}],
    "start": "2031-03-04T09:00:00Z",
    "end": "2031-03-04T09:30:00Z",
    "minutesDuration": 30,
    "comment": "synthetic test booking",
    "participant": [
        {"actor": {"reference": "Patient/pat-test-01"}, "status": "accepted"},
        {"actor": {"reference": "Practitioner/prac-test-01"}, "status": "accepted"},
        {"actor": {"reference": "Location/loc-test-01"}, "status": "accepted"},
    ],
}


def appointment(**changes: Any) -> dict[str, Any]:
    """A copy of BOOKED with top-level `changes`; a value of None removes the element."""
    resource = copy.deepcopy(BOOKED)
    for key, value in changes.items():
        if value is None:
            resource.pop(key, None)
        else:
            resource[key] = value
    return resource


def body(resource: Any) -> bytes:
    return json.dumps(resource).encode()
