"""Synthetic FHIR R4B Appointments for the appointment-state tests (invented ids and names)."""

from __future__ import annotations

from typing import Any

from engine.appointments import Known, appointment_key
from engine.conversions.codes import IDENTIFIER_TYPE_SYSTEM

PLACER_SYSTEM = "urn:engine:v2-namespace:EPIC"
FILLER_SYSTEM = "urn:engine:v2-namespace:CLINIC"
DR_SYSTEM = "urn:engine:v2-namespace:NPI"
ROOM_SYSTEM = "urn:engine:v2-namespace:CLINIC_A"


def ident(code: str, system: str, value: str) -> dict[str, Any]:
    return {"type": {"coding": [{"system": IDENTIFIER_TYPE_SYSTEM, "code": code}]},
            "system": system, "value": value}


def participant(kind: str, system: str, value: str, status: str = "accepted",
                display: str | None = None) -> dict[str, Any]:
    actor: dict[str, Any] = {"type": kind, "identifier": {"system": system, "value": value}}
    if display is not None:
        actor["display"] = display
    return {"actor": actor, "status": status}


def appointment(placer: str = "APT1", *, status: str = "booked",
                start: str = "2030-01-07T10:00:00Z", end: str | None = "2030-01-07T10:30:00Z",
                provider: str | None = "DR1", room: str | None = "ROOM1",
                patient: str = "MRN1", **extra: Any) -> dict[str, Any]:
    """A booked 30-minute appointment with a placer and filler id, a patient, a
    practitioner and a location; keyword extras are added as elements."""
    resource: dict[str, Any] = {
        "resourceType": "Appointment",
        "identifier": [ident("PLAC", PLACER_SYSTEM, placer),
                       ident("FILL", FILLER_SYSTEM, "F-" + placer)],
        "status": status,
        "start": start,
    }
    if end is not None:
        resource["end"] = end
    people = [participant("Patient", "urn:engine:v2-namespace:HOSP", patient)]
    if provider is not None:
        people.append(participant("Practitioner", DR_SYSTEM, provider))
    if room is not None:
        people.append(participant("Location", ROOM_SYSTEM, room))
    resource["participant"] = people
    resource.update(extra)
    return resource


def key(placer: str) -> str:
    return f"{PLACER_SYSTEM}|{placer}"


def known(resource: dict[str, Any], *, version: int = 1,
          source_time: float | None = 1_000.0) -> Known:
    return Known(appointment_key(resource), version, resource, source_time)
