"""appointment_key and actors: which identifier keys an appointment, who it holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.appointments import actors, appointment_key
from engine.conversions import siu_to_fhir
from engine.protocol.charset import decode_message
from engine.protocol.er7 import Message
from tests.unit.appointments.builders import (
    DR_SYSTEM,
    FILLER_SYSTEM,
    PLACER_SYSTEM,
    ROOM_SYSTEM,
    appointment,
    ident,
    participant,
)

SAMPLES = Path(__file__).parents[3] / "samples"


def test_key_is_the_placer_identifier_wherever_it_sits() -> None:
    resource = {"identifier": [ident("FILL", FILLER_SYSTEM, "F9"),
                               {"system": "urn:x", "value": "OTHER"},
                               ident("PLAC", PLACER_SYSTEM, "P9")]}
    assert appointment_key(resource) == f"{PLACER_SYSTEM}|P9"


def test_key_falls_back_to_the_filler_then_the_first_identifier() -> None:
    filler = {"identifier": [{"system": "urn:x", "value": "OTHER"},
                             ident("FILL", FILLER_SYSTEM, "F9")]}
    assert appointment_key(filler) == f"{FILLER_SYSTEM}|F9"
    untyped = {"identifier": [{"system": "urn:x", "value": "A"}, {"system": "urn:y",
                                                                  "value": "B"}]}
    assert appointment_key(untyped) == "urn:x|A"


def test_key_of_an_identifier_without_system_says_no_system() -> None:
    assert appointment_key({"identifier": [{"value": "A7"}]}) == "|A7"


def test_key_skips_identifiers_without_a_value() -> None:
    resource = {"identifier": [ident("PLAC", PLACER_SYSTEM, ""), {"system": "urn:x",
                                                                  "value": "A"}]}
    assert appointment_key(resource) == "urn:x|A"


@pytest.mark.parametrize("resource", [{}, {"identifier": []}, {"identifier": [{"value": ""}]},
                                      {"identifier": [{"system": "urn:x"}]}])
def test_key_of_an_appointment_without_identifier_is_an_error(resource: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="no identifier"):
        appointment_key(resource)


def test_key_of_the_siu_conversion_is_sch1() -> None:
    _, text, _ = decode_message((SAMPLES / "siu_s12_new_patient.hl7").read_bytes())
    resource = siu_to_fhir(Message.parse(text))
    assert appointment_key(resource) == "urn:engine:v2-namespace:EPIC|APT1001"


def test_actors_are_practitioners_locations_and_devices_not_patients() -> None:
    resource = appointment(provider="DR1", room="ROOM1")
    assert actors(resource) == (f"Practitioner|{DR_SYSTEM}|DR1", f"Location|{ROOM_SYSTEM}|ROOM1")


def test_actors_keep_references_and_drop_history() -> None:
    resource = {"participant": [
        {"actor": {"reference": "Practitioner/p1"}, "status": "accepted"},
        {"actor": {"reference": "Location/l1/_history/3"}, "status": "accepted"},
        {"actor": {"reference": "Patient/pat1"}, "status": "accepted"},
        {"actor": {"reference": "PractitionerRole/r1", "type": "Patient"},
         "status": "tentative"},
    ]}
    assert actors(resource) == ("Practitioner/p1", "Location/l1", "PractitionerRole/r1")


def test_actors_leave_out_declined_duplicates_and_actors_without_id() -> None:
    resource = {"participant": [
        participant("Practitioner", DR_SYSTEM, "DR1", status="declined"),
        participant("Location", ROOM_SYSTEM, "ROOM1"),
        participant("Location", ROOM_SYSTEM, "ROOM1"),
        {"actor": {"type": "Device", "display": "Exam room"}, "status": "accepted"},
        {"actor": {"type": "HealthcareService", "identifier": {"value": "HS1"}},
         "status": "accepted"},
        {"status": "accepted"},
    ]}
    assert actors(resource) == (f"Location|{ROOM_SYSTEM}|ROOM1",)


def test_actors_of_the_siu_conversion_include_room_location_and_provider() -> None:
    _, text, _ = decode_message((SAMPLES / "siu_s12_new_patient.hl7").read_bytes())
    found = actors(siu_to_fhir(Message.parse(text)))
    assert {a.split("|", 1)[0] for a in found} == {"Device", "Location", "Practitioner"}
    assert not any(a.startswith("Patient") for a in found)
