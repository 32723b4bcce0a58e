"""Round trips on generated data: SIU -> FHIR -> SIU keeps every mapped field (see
mapped.py) and FHIR -> SIU -> FHIR keeps every mapped element; plus `trigger_for`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.conversions import fhir_to_siu, siu_to_fhir, trigger_for
from engine.conversions.codes import codeable_concept, fhir_instant, identifier_system
from engine.fhir import parse_appointment
from engine.protocol.er7 import Message
from tests.unit.conversions.mapped import siu_mapped

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=150,
                    suppress_health_check=[HealthCheck.too_slow])
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
TZ = timezone(timedelta(hours=-5))

_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcxyz0123456789"
# Separators and the escape character are in every free-text alphabet on purpose.
_TEXT = _ALNUM + " |^~\\&-.,'éß"
codes = st.text(_ALNUM + "_-.", min_size=1, max_size=10)
ids = st.text(_TEXT, min_size=1, max_size=12).map(str.strip).filter(bool)
texts = st.text(_TEXT, min_size=1, max_size=20).map(str.strip).filter(bool)
notes = st.text(_TEXT + "\n", min_size=1, max_size=40).filter(lambda s: s.strip() == s and s)
systems = st.sampled_from(["", "LOCAL", "HL70443", "99ZZZ", "SCT"])
offsets = st.integers(-12 * 4, 14 * 4).map(lambda q: timezone(timedelta(minutes=15 * q)))
moments = st.builds(
    lambda day, minute, second, tenth, tz: datetime(2025, 1, 1, tzinfo=tz)
    + timedelta(days=day, minutes=minute, seconds=second, microseconds=tenth * 100_000),
    st.integers(0, 700), st.integers(0, 1439), st.integers(0, 59), st.integers(0, 9), offsets)
v2_statuses = st.sampled_from(["Pending", "Waitlist", "Booked", "Started", "Complete",
                               "Cancelled", "Dc", "Deleted", "Noshow", "Blocked", "Overbook", ""])
hd = st.one_of(st.tuples(st.sampled_from(["", "MAIN", "CLINIC_A", "X Y"]), st.just(""),
                         st.just("")),
               st.tuples(st.sampled_from(["", "LOCAL"]), st.sampled_from(["2.25.1", "1.2.3"]),
                         st.just("ISO")))


def _cwe(m: Message, path: str, cwe: tuple[str, str, str]) -> None:
    for n, value in enumerate(cwe, 1):
        if value:
            m.set(f"{path}.{n}", value)


cwes = st.tuples(codes, st.one_of(st.just(""), texts), systems)


@st.composite
def siu_messages(draw: st.DrawFn) -> Message:
    trigger = draw(st.sampled_from(["S12", "S13", "S14", "S15", "S16", "S17", "S26"]))
    m = Message.parse(f"MSH|^~\\&|EPIC|H|ENGINE|C|20250301||SIU^{trigger}^SIU_S12|M1|P|2.5.1\r")
    for field in (1, 2):
        if draw(st.booleans()) or field == 1:
            m.set(f"SCH-{field}.1", draw(ids))
            for n, value in enumerate(draw(hd), 2):
                if value:
                    m.set(f"SCH-{field}.{n}", value)
    _cwe(m, "SCH-7", draw(cwes))
    _cwe(m, "SCH-8", draw(cwes))
    minutes = draw(st.integers(1, 600))
    m.set("SCH-9", str(minutes))
    m.set("SCH-10", draw(st.sampled_from(["min", "MIN", "minutes"])))
    start = draw(moments)
    naive = draw(st.booleans())
    form = "%Y%m%d%H%M%S" if naive else "%Y%m%d%H%M%S%z"
    stamp = start.strftime(form)
    end = "" if draw(st.booleans()) else (start + timedelta(minutes=draw(st.integers(0, 300)))
                                         ).strftime(form)
    use_tq1 = draw(st.booleans())
    if not use_tq1:
        m.set("SCH-11.4", stamp)
        if end:
            m.set("SCH-11.5", end)
    m.set("SCH-25", draw(v2_statuses))
    if use_tq1:
        m.set("TQ1-1", "1")
        m.set("TQ1-7", stamp)
        if end:
            m.set("TQ1-8", end)
    for k, note in enumerate(draw(st.lists(notes, max_size=3)), 1):
        m.set(f"NTE[{k}]-1", str(k))
        m.set(f"NTE[{k}]-3", note)
    m.set("PID-1", "1")
    m.set("PID-3.1", draw(ids))
    for n, value in enumerate(draw(hd), 1):
        if value:
            m.set(f"PID-3.4.{n}", value)
    m.set("PID-3.5", draw(st.sampled_from(["MR", "PI"])))
    m.set("RGS-1", "1")
    for k, service in enumerate(draw(st.lists(cwes, max_size=2)), 1):
        _cwe(m, f"AIS[{k}]-3", service)
    for name, hd_comp, status_field in (("AIG", 0, 14), ("AIL", 4, 12), ("AIP", 9, 12)):
        for k in range(1, draw(st.integers(0, 2)) + 1):
            seg = f"{name}[{k}]"
            m.set(f"{seg}-1", str(k))
            if name == "AIG":
                _cwe(m, f"{seg}-3", (draw(ids), draw(texts), draw(systems)))
            else:
                m.set(f"{seg}-3.1", draw(ids))
                if name == "AIP":
                    m.set(f"{seg}-3.2", draw(texts))
                for n, value in enumerate(draw(hd), 1):
                    if value:
                        m.set(f"{seg}-3.{hd_comp}.{n}", value)
            _cwe(m, f"{seg}-4", draw(cwes))
            m.set(f"{seg}-{status_field}", draw(v2_statuses))
    return Message.parse(m.to_er7())


def valid(resource: dict[str, Any]) -> dict[str, Any]:
    return parse_appointment(json.dumps(resource).encode())


@SETTINGS
@given(siu_messages())
def test_siu_fhir_siu_keeps_every_mapped_field(original: Message) -> None:
    resource = valid(siu_to_fhir(original, tz=TZ))
    back = Message.parse(fhir_to_siu(resource, None, control_id="C1", now=NOW).to_er7())
    assert siu_mapped(back, TZ) == siu_mapped(original, TZ)


def fhir_concept(code: str, text: str, system: str) -> dict[str, Any]:
    concept = codeable_concept(code, text, system)
    assert concept is not None
    return concept


# Generated elements take the canonical shapes the forward conversion produces.
concepts = cwes.map(lambda c: fhir_concept(*c))
identifier_hds = hd.map(lambda h: identifier_system(*h))
statuses = st.sampled_from(["pending", "waitlist", "booked", "checked-in", "fulfilled",
                            "cancelled", "entered-in-error", "noshow"])
participant_statuses = st.sampled_from(["accepted", "declined", "tentative", "needs-action"])


@st.composite
def appointments(draw: st.DrawFn) -> dict[str, Any]:
    status = draw(statuses)
    identifiers = []
    for code in ("PLAC", "FILL"):
        if code == "PLAC" or draw(st.booleans()):
            identifiers.append({
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                     "code": code}]},
                **draw(identifier_hds), "value": draw(ids)})
    r: dict[str, Any] = {"resourceType": "Appointment", "identifier": identifiers,
                         "status": status}
    services = draw(st.lists(concepts, max_size=2))
    if services:
        r["serviceType"] = services
    if draw(st.booleans()):
        r["appointmentType"] = draw(concepts)
    if draw(st.booleans()):
        r["reasonCode"] = [draw(concepts)]
    if status not in ("cancelled", "waitlist") or draw(st.booleans()):
        start = draw(moments)
        end = start + timedelta(minutes=draw(st.integers(0, 300)))
        r["start"], r["end"] = fhir_instant(start), fhir_instant(end.astimezone(draw(offsets)))
    if draw(st.booleans()):
        r["minutesDuration"] = draw(st.integers(1, 600))
    if draw(st.booleans()):
        r["comment"] = draw(notes)
    participants: list[dict[str, Any]] = [{
        "actor": {"type": "Patient", "identifier": {
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                 "code": "MR"}]},
            **draw(identifier_hds), "value": draw(ids)}},
        "status": "accepted"}]
    for kind in ("Device", "Location", "Practitioner"):
        for _ in range(draw(st.integers(0, 2))):
            if kind == "Device":
                system = draw(systems)
                ident = fhir_concept("x", "", system)["coding"][0]
                ident.pop("code")
                actor = {"type": kind, "identifier": {**ident, "value": draw(ids)},
                         "display": draw(texts)}
            else:
                actor = {"type": kind, "identifier": {**draw(identifier_hds),
                                                      "value": draw(ids)}}
            participant: dict[str, Any] = {"actor": actor, "status": draw(participant_statuses)}
            if draw(st.booleans()):
                participant["type"] = [draw(concepts)]
            participants.append(participant)
    r["participant"] = participants
    return r


@SETTINGS
@given(appointments())
def test_fhir_siu_fhir_keeps_every_mapped_element(resource: dict[str, Any]) -> None:
    valid(resource)
    message = fhir_to_siu(resource, None, control_id="C1", now=NOW)
    assert valid(siu_to_fhir(Message.parse(message.to_er7()))) == resource


BOOKED = {"resourceType": "Appointment", "status": "booked",
          "start": "2025-03-17T10:00:00Z", "end": "2025-03-17T11:00:00Z"}


def test_trigger_for_follows_the_project_rule() -> None:
    assert trigger_for(BOOKED, None) == "S12"
    assert trigger_for({**BOOKED, "comment": "x"}, BOOKED) == "S14"
    assert trigger_for({**BOOKED, "end": "2025-03-17T11:30:00Z"}, BOOKED) == "S13"
    assert trigger_for({**BOOKED, "start": "2025-03-17T09:00:00Z"}, BOOKED) == "S13"
    # the same instant written with another offset is no change
    assert trigger_for({**BOOKED, "start": "2025-03-17T05:00:00-05:00"}, BOOKED) == "S14"
    for status, trigger in (("cancelled", "S15"), ("entered-in-error", "S17"),
                            ("noshow", "S26")):
        assert trigger_for({**BOOKED, "status": status}, BOOKED) == trigger
        assert trigger_for({**BOOKED, "status": status}, None) == trigger


def test_fhir_to_siu_header_and_action_codes() -> None:
    resource = valid(siu_to_fhir(Message.parse(
        "MSH|^~\\&|A||B||2025||SIU^S12|1|P|2.5.1\rSCH|X1^NS|||||||||||||||||||||||||Booked\r"
        "TQ1|1||||||202503171000|202503171100\rPID|1||M1\rRGS|1\rAIP|1||P1\r")))
    m = fhir_to_siu({**resource, "status": "cancelled"}, resource, control_id="A|B",
                    now=datetime(2025, 3, 1, 7, 30, tzinfo=TZ), sender="ENG", receiver="EHR")
    assert m.get("MSH-9") == "SIU^S15^SIU_S12"
    assert (m.get("MSH-3"), m.get("MSH-5"), m.get("MSH-10")) == ("ENG", "EHR", "A|B")
    assert m.get("MSH-7") == "202503010730-0500"
    assert (m.get("RGS-2"), m.get("AIP-2"), m.get("SCH-25")) == ("D", "D", "Cancelled")
    assert fhir_to_siu(resource, None, control_id="1", now=NOW).get("AIP-2") == "A"
    assert fhir_to_siu(resource, resource, control_id="1", now=NOW).get("MSH-9.2") == "S14"
