"""SIU -> FHIR -> SIU on every shipped sample, plus the table's individual rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from engine.conversions import ConversionError, fhir_to_siu, siu_to_fhir
from engine.fhir import parse_appointment
from engine.protocol.charset import decode_message
from engine.protocol.er7 import Message
from tests.unit.conversions.mapped import siu_mapped

SAMPLES = sorted((Path(__file__).parents[3] / "samples").glob("*.hl7"))
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def load(path: Path) -> Message:
    _, text, _ = decode_message(path.read_bytes())
    return Message.parse(text)


def valid(resource: dict[str, Any]) -> dict[str, Any]:
    return parse_appointment(json.dumps(resource).encode())


def test_there_are_samples() -> None:
    assert len(SAMPLES) >= 9


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_sample_round_trip_keeps_every_mapped_field(path: Path) -> None:
    original = load(path)
    resource = valid(siu_to_fhir(original))
    back = fhir_to_siu(resource, None, control_id="CTRL1", now=NOW)
    assert siu_mapped(Message.parse(back.to_er7()), UTC) == siu_mapped(original, UTC)
    # Practitioner names are not mapped (only shown as a display), so not compared.
    assert without_names(valid(siu_to_fhir(Message.parse(back.to_er7())))) == without_names(
        resource)


def without_names(resource: dict[str, Any]) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(resource))
    for participant in copy["participant"]:
        if participant["actor"]["type"] == "Practitioner":
            participant["actor"].pop("display", None)
    return copy


def test_new_patient_sample_maps_per_the_table() -> None:
    r = siu_to_fhir(load(SAMPLES[0].with_name("siu_s12_new_patient.hl7")))
    assert [i["value"] for i in r["identifier"]] == ["APT1001", "F5001"]
    assert r["identifier"][0]["system"] == "urn:engine:v2-namespace:EPIC"
    assert r["status"] == "booked"
    assert r["reasonCode"][0]["coding"][0]["code"] == "new_patient_consult"
    assert r["appointmentType"] == {"coding": [{"code": "Normal"}]}
    assert (r["start"], r["end"], r["minutesDuration"]) == (
        "2025-03-17T10:00:00Z", "2025-03-17T11:00:00Z", 60)
    assert r["comment"] == "Prefers morning appointments"
    assert r["serviceType"][0]["coding"][0]["code"] == "NPC"
    kinds = [(p["actor"]["type"], p["actor"].get("identifier", {}).get("value"), p["status"])
             for p in r["participant"]]
    assert kinds == [("Patient", "MRN100001", "accepted"), ("Device", "EXAM12", "accepted"),
                     ("Location", "MAIN", "accepted"), ("Practitioner", "P1001", "accepted")]
    practitioner = r["participant"][3]
    assert practitioner["type"][0]["coding"][0]["system"] == (
        "http://terminology.hl7.org/CodeSystem/v2-0443")
    assert "id" not in r


@pytest.mark.parametrize(("name", "status"), [
    ("siu_s15_cancel.hl7", "cancelled"), ("siu_s17_delete.hl7", "entered-in-error"),
    ("siu_s26_noshow.hl7", "noshow"), ("siu_s13_reschedule.hl7", "booked"),
])
def test_sample_status(name: str, status: str) -> None:
    assert siu_to_fhir(load(SAMPLES[0].with_name(name)))["status"] == status


def test_escapes_sample_decodes_free_text_and_keeps_oid_assigner() -> None:
    r = siu_to_fhir(load(SAMPLES[0].with_name("siu_s12_escapes.hl7")))
    assert r["comment"] == "Bring forms A|B^C&D\\E~F\nSecond line"
    ident = r["participant"][3]["actor"]["identifier"]
    assert ident == {"system": "urn:oid:2.25.4711", "assigner": {"display": "LOCAL"},
                     "value": "P1003"}
    back = fhir_to_siu(r, None, control_id="C", now=NOW)
    assert back.get("NTE-3") == r["comment"]
    assert "A\\F\\B\\S\\C\\T\\D\\E\\E\\R\\F\\.br\\Second" in back.to_er7()
    assert back.get("AIP-3.9") == "LOCAL&2.25.4711&ISO"


BASE = ("MSH|^~\\&|EPIC|H|ENGINE|C|20250301||SIU^{trigger}^SIU_S12|M1|P|2.5.1\r"
        "SCH|A1^EPIC|||||||Normal|{duration}|min|{timing}||||||||||||||{status}\r"
        "{tq1}PID|1||MRN1^^^H^MR\rRGS|1|A\rAIP|1|A|P1^Doe^Ann|AT^Attending^HL70443\r")


def build(trigger: str = "S12", status: str = "Booked", duration: str = "30",
          timing: str = "^^^202503171000", tq1: str = "") -> Message:
    return Message.parse(BASE.format(trigger=trigger, status=status, duration=duration,
                                     timing=timing, tq1=tq1))


@pytest.mark.parametrize(("v2", "fhir"), [
    ("Pending", "pending"), ("Waitlist", "waitlist"), ("Booked", "booked"),
    ("Started", "checked-in"), ("Complete", "fulfilled"), ("Cancelled", "cancelled"),
    ("Dc", "cancelled"), ("Discontinued", "cancelled"), ("Deleted", "entered-in-error"),
    ("Noshow", "noshow"), ("Blocked", "booked"), ("Overbook", "booked"), ("", "booked"),
])
def test_sch25_table(v2: str, fhir: str) -> None:
    assert siu_to_fhir(build(status=v2))["status"] == fhir


@pytest.mark.parametrize(("trigger", "fhir"), [
    ("S15", "cancelled"), ("S16", "cancelled"), ("S17", "entered-in-error"),
    ("S26", "noshow"), ("S14", "booked"),
])
def test_trigger_overrides_sch25(trigger: str, fhir: str) -> None:
    assert siu_to_fhir(build(trigger=trigger, status="Booked"))["status"] == fhir


def test_end_is_start_plus_duration_and_tz_applies_without_offset() -> None:
    r = siu_to_fhir(build(), tz=timezone(timedelta(hours=-5)))
    assert (r["start"], r["end"]) == ("2025-03-17T10:00:00-05:00", "2025-03-17T10:30:00-05:00")
    assert siu_to_fhir(build())["start"] == "2025-03-17T10:00:00Z"


def test_offset_in_the_timestamp_wins_over_tz() -> None:
    r = siu_to_fhir(build(timing="^^^202503171000+0130^202503171100.25+0130"),
                    tz=timezone(timedelta(hours=-5)))
    assert (r["start"], r["end"]) == ("2025-03-17T10:00:00+01:30",
                                      "2025-03-17T11:00:00.250000+01:30")


def test_tq1_is_used_when_sch11_is_empty() -> None:
    r = siu_to_fhir(build(timing="", tq1="TQ1|1||||||202503171000|202503171045\r"))
    assert (r["start"], r["end"]) == ("2025-03-17T10:00:00Z", "2025-03-17T10:45:00Z")


def test_other_duration_units_are_not_minutes() -> None:
    m = build(duration="1")
    m.set("SCH-10", "h")
    r = siu_to_fhir(m)
    assert "minutesDuration" not in r and "end" not in r


@pytest.mark.parametrize(("message", "field"), [
    (build(status="Bogus"), "SCH-25"),
    (build(timing="^^^2025031710xx"), "SCH-11.4.1"),
    (build(timing="^^^20250230"), "SCH-11.4.1"),
])
def test_unmappable_values_raise_naming_the_field_only(message: Message, field: str) -> None:
    with pytest.raises(ConversionError, match=field.replace(".", r"\.")) as info:
        siu_to_fhir(message)
    assert "Bogus" not in str(info.value) and "2025" not in str(info.value)


def test_a_message_without_appointment_ids_or_not_siu_is_refused() -> None:
    m = build()
    m.remove("SCH-1")
    with pytest.raises(ConversionError, match="SCH-1"):
        siu_to_fhir(m)
    with pytest.raises(ConversionError, match="MSH-9"):
        siu_to_fhir(Message.parse("MSH|^~\\&|A||B||2025||ADT^A01|1|P|2.5.1\r"))
