"""Micro-benchmark of FHIR Appointment intake validation (µs per parse_appointment).

Run: .venv/bin/python benchmarks/fhir_validate_bench.py [--number 5000]
Prints the engine's full check (JSON read + fhir.resources R4B + engine rules) next to the
bare fhir.resources `model_validate_json` for scale. Best of several rounds, so the figure
shows the code, not the noise. The Appointment is synthetic (invented ids).
"""

from __future__ import annotations

import argparse
import json

from fhir.resources.R4B.appointment import Appointment
from timing import per_op_us  # benchmarks/timing.py (run as a script)

from engine.fhir import Invalid, parse_appointment

TYPICAL = {
    "resourceType": "Appointment",
    "id": "appt-bench-0001",
    "identifier": [
        {"system": "urn:example:placer", "value": "PLC-BENCH-0001"},
        {"system": "urn:example:filler", "value": "FIL-BENCH-0001"},
    ],
    "status": "booked",
    "serviceType": [{"coding": [{"system": "urn:example:svc", "code": "FOLLOWUP"}]}],
    "appointmentType": {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0276", "code": "FOLLOWUP"}]
    },
    "reasonCode": [{"text": "synthetic follow-up"}],
    "start": "2031-03-04T09:00:00-05:00",
    "end": "2031-03-04T09:30:00-05:00",
    "minutesDuration": 30,
    "created": "2031-02-01T12:00:00Z",
    "comment": "synthetic benchmark booking",
    "participant": [
        {
            "actor": {"reference": "Patient/pat-bench-01", "display": "Test Patient"},
            "required": "required",
            "status": "accepted",
        },
        {
            "type": [{"coding": [{"code": "ATND"}]}],
            "actor": {"reference": "Practitioner/prac-bench-01"},
            "status": "accepted",
        },
        {"actor": {"reference": "Location/loc-bench-01"}, "status": "accepted"},
    ],
}
BAD = {**TYPICAL, "status": "bogus", "end": "2031-03-04T08:00:00-05:00", "participant": "x"}


def rejected(raw: bytes) -> None:
    try:
        parse_appointment(raw)
    except Invalid:
        return
    raise AssertionError("BAD must be rejected")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=5_000)
    args = parser.parse_args()
    good, bad = json.dumps(TYPICAL).encode(), json.dumps(BAD).encode()
    parse_appointment(good)  # fail loudly before timing if the sample is not valid
    print(f"typical Appointment: {len(good)} bytes")
    rows = [
        ("parse_appointment (valid)", lambda: parse_appointment(good)),
        ("parse_appointment (3 issues -> Invalid)", lambda: rejected(bad)),
        ("fhir.resources model_validate_json only", lambda: Appointment.model_validate_json(good)),
    ]
    for name, fn in rows:
        print(f"{name:42s} {per_op_us(fn, args.number):8.1f} µs")


if __name__ == "__main__":
    main()
