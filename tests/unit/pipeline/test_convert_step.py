"""The `convert` step inside channels: siu_to_fhir (time zone, validation, conversion errors),
fhir_to_siu (trigger from the previous version, control id and clock from the run context),
appointment_event (events, nothing to announce, no appointment), versions that are not the
appointment's current state, custom converters, and the step's configuration check."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from engine.appointments.canonical import from_fhir, from_siu
from engine.appointments.state import Known, appointment_key, assess
from engine.config.model import StepSpec
from engine.pipeline.channel import ChannelOutcome, CompiledChannel
from engine.pipeline.context import AppointmentContext, RunContext
from engine.pipeline.steps import REGISTRY
from engine.pipeline.steps.base import CompileContext
from engine.protocol.er7 import Message
from engine.store.base import AppointmentDisposition
from tests.unit.pipeline.support import (
    MULTI,
    SAMPLES,
    TABLES,
    appointment,
    channel_config,
    check_context,
    described,
    sample,
)

NOW = 1_741_608_000.0  # 2025-03-10T12:00:00Z
CONTROL_ID = "CTL-CONV-1"

CONVERTERS = '''\
"""Synthetic custom converters."""
from engine.conversions import ConversionError


def to_partner(doc, context):
    return {"booking": doc["identifier"][0]["value"], "at": context.now,
            "current": context.appointment.current if context.appointment else None}


def forgets_to_return(doc, context):
    doc["status"] = "booked"


def refuses(doc, context):
    raise ConversionError("PID-3 is empty: the partner needs a patient id")


def crashes(doc, context):
    raise ValueError(doc["participant"][0]["actor"]["identifier"]["value"])


def three(doc, context, extra):
    return doc
'''


@pytest.fixture
def transforms(tmp_path: Path) -> Path:
    folder = tmp_path / "transforms"
    folder.mkdir()
    (folder / "partner.py").write_text(CONVERTERS, encoding="utf-8")
    return folder


def channel(
    *steps: tuple[str, Any], transforms: Path = SAMPLES, tz: str = "UTC"
) -> CompiledChannel:
    return CompiledChannel(
        channel_config(*steps), CompileContext(dict(TABLES), transforms, timezone=tz)
    )


def context(
    resource: dict[str, Any] | None,
    previous: dict[str, Any] | None = None,
    disposition: AppointmentDisposition = "current",
) -> RunContext:
    """The run context intake gives a message carrying `resource` (canonical form)."""
    if resource is None:
        return RunContext(NOW, CONTROL_ID)
    known = Known(appointment_key(previous), 1, previous, None) if previous else None
    assessment = assess(resource, known, source_time=None)
    return RunContext(
        NOW, CONTROL_ID, AppointmentContext(resource, previous, assessment, disposition)
    )


def fhir(resource: dict[str, Any]) -> dict[str, Any]:
    canonical = from_fhir(resource)
    assert canonical is not None
    return canonical


def run_siu(name: str, *steps: tuple[str, Any], tz: str = "UTC") -> ChannelOutcome:
    decoded = sample(name)
    assert decoded.message is not None
    resource = from_siu(decoded.message, ZoneInfo(tz))
    return channel(*steps, tz=tz).run(decoded.source, decoded.codec, context=context(resource))


def output_message(outcome: ChannelOutcome) -> Message:
    assert outcome.status == "ok", outcome.error
    assert outcome.content_type == "application/hl7-v2"
    return Message.parse(outcome.output.decode(outcome.codec))


# ---------------------------------------------------------------------------- siu_to_fhir


def test_siu_to_fhir_gives_the_canonical_appointment_without_an_id() -> None:
    outcome = run_siu("siu_s12_new_patient.hl7", ("convert", "siu_to_fhir"))
    assert (outcome.status, outcome.content_type) == ("ok", "application/fhir+json")
    decoded = sample("siu_s12_new_patient.hl7")
    assert decoded.message is not None
    assert outcome.document == from_siu(decoded.message, ZoneInfo("UTC"))
    assert isinstance(outcome.document, dict) and "id" not in outcome.document
    assert outcome.document["status"] == "booked"


def test_times_without_an_offset_are_read_in_the_configured_zone() -> None:
    # SCH-11 holds 202503171000 (no offset); MSH-7's -0500 does not apply to it.
    default = run_siu("siu_s12_new_patient.hl7", ("convert", "siu_to_fhir"))
    berlin = run_siu("siu_s12_new_patient.hl7", ("convert", "siu_to_fhir"), tz="Europe/Berlin")
    chicago = run_siu(
        "siu_s12_new_patient.hl7",
        ("convert", {"name": "siu_to_fhir", "tz": "America/Chicago"}),
        tz="Europe/Berlin",  # the step's own tz wins over the configuration's
    )
    starts = [o.document["start"] for o in (default, berlin, chicago)
              if isinstance(o.document, dict)]
    assert starts == [
        "2025-03-17T10:00:00Z", "2025-03-17T10:00:00+01:00", "2025-03-17T10:00:00-05:00"
    ]


def test_a_message_without_appointment_ids_fails_naming_the_field() -> None:
    text = (SAMPLES / "siu_s12_new_patient.hl7").read_text()
    text = text.replace("SCH|APT1001^EPIC|F5001^CLINIC|", "SCH|||")
    outcome = channel(("convert", "siu_to_fhir")).run(text, "utf-8")
    assert outcome.status == "error"
    assert outcome.error == (
        "steps[1] convert (siu_to_fhir): SCH-1 and SCH-2 are both empty: the appointment "
        "has no id"
    )
    assert (outcome.error_field, outcome.error_step) == ("SCH-1", "steps[1] convert")


def test_an_unreadable_time_fails_naming_the_field_not_the_value() -> None:
    text = (SAMPLES / "siu_s12_new_patient.hl7").read_text()
    text = text.replace("^^^202503171000^", "^^^2025-03-17 10h^", 1)
    outcome = channel(("convert", "siu_to_fhir")).run(text, "utf-8")
    assert outcome.status == "error"
    assert outcome.error_field == "SCH-11.4.1"
    assert "SCH-11.4.1" in outcome.error and "10h" not in outcome.error


def test_an_appointment_that_breaks_the_engines_rules_fails_naming_the_element() -> None:
    # Booked, but no time anywhere (no SCH-11, no TQ1): FHIR's app-3 wants start and end.
    text = (SAMPLES / "siu_s12_new_patient.hl7").read_text()
    text = text.replace("|^^^202503171000^202503171100|", "||", 1)
    outcome = channel(("convert", "siu_to_fhir")).run(text, "utf-8")
    assert outcome.status == "error"
    assert outcome.error == (
        "steps[1] convert (siu_to_fhir): the Appointment made from this message is not valid: "
        "Appointment.start: app-3: start and end are required unless status is proposed, "
        "cancelled or waitlist (+1 more)"
    )
    assert outcome.error_field == "Appointment.start"


def test_a_message_that_is_not_siu_fails_naming_msh9() -> None:
    adt = MULTI.replace("SIU^S12^SIU_S12", "ADT^A01^ADT_A01")
    outcome = channel(("convert", "siu_to_fhir")).run(adt, "utf-8")
    assert (outcome.status, outcome.error_field) == ("error", "MSH-9")


def test_siu_to_fhir_refuses_a_fhir_resource() -> None:
    outcome = channel(("convert", "siu_to_fhir")).run(appointment(), "utf-8")
    assert outcome.status == "error"
    assert outcome.error == (
        "steps[1] convert (siu_to_fhir) takes an HL7 v2 SIU message; the channel holds a FHIR "
        "resource here: remove this step"
    )


# ---------------------------------------------------------------------------- fhir_to_siu


def test_fhir_to_siu_without_a_previous_version_is_s12_with_the_runs_id_and_time() -> None:
    resource = fhir(appointment())
    outcome = channel(("convert", "fhir_to_siu"), ("set", {"MSH-5": "CLINIC_EHR"})).run(
        appointment(), "utf-8", context=context(resource)
    )
    m = output_message(outcome)
    assert m.get("MSH-9") == "SIU^S12^SIU_S12"
    assert (m.get("MSH-10"), m.get("MSH-7")) == (CONTROL_ID, "202503101200+0000")
    assert m.get("MSH-5") == "CLINIC_EHR"  # an HL7 v2 step after the conversion works
    assert (m.get("SCH-1.1"), m.get("SCH-25")) == ("BK-2001", "Booked")
    assert m.get("NTE-3") == "Bring the | form"  # escaped on the wire, read back whole
    assert b"Bring the \\F\\ form" in outcome.output


@pytest.mark.parametrize(
    ("previous", "current", "trigger"),
    [
        ({}, {"start": "2025-04-01T10:00:00Z", "end": "2025-04-01T10:30:00Z"}, "S13"),
        ({}, {"comment": "Interpreter requested"}, "S14"),
        ({}, {"status": "cancelled"}, "S15"),
        ({"status": "cancelled"}, {"status": "noshow"}, "S26"),
    ],
)
def test_fhir_to_siu_picks_the_trigger_from_the_previous_version(
    previous: dict[str, Any], current: dict[str, Any], trigger: str
) -> None:
    before = fhir(appointment(**previous))
    now = fhir(appointment(**current))
    outcome = channel(("convert", "fhir_to_siu")).run(
        appointment(**current), "utf-8", context=context(now, before)
    )
    assert output_message(outcome).get("MSH-9.2") == trigger


def test_fhir_to_siu_needs_a_control_id_from_the_run() -> None:
    outcome = channel(("convert", "fhir_to_siu")).run(appointment(), "utf-8")
    assert outcome.status == "error"
    assert outcome.error == (
        "steps[1] convert (fhir_to_siu) needs a control id for MSH-10, and this run gave none"
    )


def test_fhir_to_siu_refuses_another_resource_and_hl7() -> None:
    patient = {"resourceType": "Patient", "id": "p1"}
    other = channel(("convert", "fhir_to_siu")).run(patient, "utf-8", context=context(None))
    hl7 = channel(("convert", "fhir_to_siu")).run(MULTI, "utf-8", context=context(None))
    assert other.error == (
        "steps[1] convert (fhir_to_siu) takes a FHIR Appointment; the channel holds a FHIR "
        "Patient here"
    )
    assert hl7.error == (
        "steps[1] convert (fhir_to_siu) takes a FHIR Appointment; the channel holds an HL7 v2 "
        "message here: remove this step"
    )


def test_an_unmappable_status_fails_naming_the_element() -> None:
    bogus = appointment(status="bogus")
    outcome = channel(("convert", "fhir_to_siu")).run(bogus, "utf-8", context=context(None))
    assert outcome.status == "error"
    assert outcome.error == (
        "steps[1] convert (fhir_to_siu): Appointment.status is not an appointmentstatus code"
    )
    assert outcome.error_field == "Appointment.status"


# ---------------------------------------------------------------------------- appointment_event


def test_a_new_appointment_gives_a_created_event_with_ids_only() -> None:
    resource = fhir(appointment())
    outcome = channel(("convert", "appointment_event")).run(
        appointment(), "utf-8", context=context(resource)
    )
    assert (outcome.status, outcome.content_type) == ("ok", "application/json")
    assert outcome.document == {
        "type": "appointment.created",
        "timestamp": "2025-03-10T12:00:00.000Z",
        "data": {
            "appointment_id": "urn:example:booking|BK-2001",
            "patient_id": "urn:example:mrn|MRN-ZZ-1",
            "provider_id": "urn:example:npi|PR-77",
            "location_id": None,
            "start": "2025-04-01T09:00:00Z",
            "end": "2025-04-01T09:30:00Z",
            "status": "booked",
        },
    }
    assert b"Bring the" not in outcome.output  # no free text in an event


def test_a_change_and_a_cancellation_from_siu_messages() -> None:
    s12, s15 = sample("siu_s12_new_patient.hl7"), sample("siu_s15_cancel.hl7")
    assert s12.message is not None and s15.message is not None
    booked = from_siu(s12.message, ZoneInfo("UTC"))
    cancelled = from_siu(s15.message, ZoneInfo("UTC"))
    outcome = channel(("convert", "appointment_event")).run(
        s15.source, s15.codec, context=context(cancelled, booked)
    )
    assert isinstance(outcome.document, dict)
    assert (outcome.document["type"], outcome.document["data"]["status"]) == (
        "appointment.cancelled", "cancelled"
    )


def test_a_repeat_is_filtered_with_the_reason() -> None:
    resource = fhir(appointment())
    outcome = channel(("convert", "appointment_event")).run(
        appointment(), "utf-8", context=context(resource, resource, "unchanged")
    )
    assert (outcome.status, outcome.error, outcome.error_step) == (
        "filtered",
        "steps[1] convert (appointment_event): no event: the appointment is unchanged "
        "(a repeat of its current version)",
        "steps[1] convert",
    )


def test_an_unknown_appointment_entered_in_error_announces_nothing() -> None:
    resource = fhir(appointment(status="entered-in-error"))
    outcome = channel(("convert", "appointment_event")).run(
        appointment(status="entered-in-error"), "utf-8", context=context(resource)
    )
    assert outcome.status == "filtered"
    assert outcome.error.endswith("no event: an appointment never announced was entered in error")


def test_an_event_needs_the_appointment_in_the_context() -> None:
    outcome = channel(("convert", "appointment_event")).run(MULTI, "utf-8")
    assert outcome.status == "error"
    assert outcome.error.startswith(
        "steps[1] convert (appointment_event) needs the appointment the message carries"
    )


# ---------------------------------------------------------------------------- not current


@pytest.mark.parametrize("name", ["siu_to_fhir", "fhir_to_siu", "appointment_event"])
@pytest.mark.parametrize(
    ("disposition", "why"),
    [
        ("stale", "is older than the appointment's current version"),
        ("rejected", "was rejected as an appointment conflict"),
    ],
)
def test_a_version_that_is_not_current_is_not_sent(
    name: str, disposition: AppointmentDisposition, why: str
) -> None:
    source: str | dict[str, Any] = MULTI if name == "siu_to_fhir" else appointment()
    resource = fhir(appointment())
    outcome = channel(("convert", name), ("set", {"MSH-5": "X"})).run(
        source, "utf-8", context=context(resource, None, disposition)
    )
    assert (outcome.status, outcome.payloads) == ("filtered", [])
    assert outcome.error == (
        f"steps[1] convert ({name}): not sent: this version {why}; sending it on would undo "
        "newer state downstream"
    )


# ---------------------------------------------------------------------------- custom


def test_a_custom_converter_gets_the_document_and_the_context(transforms: Path) -> None:
    resource = fhir(appointment())
    outcome = channel(("convert", "partner.to_partner"), transforms=transforms).run(
        appointment(), "utf-8", context=context(resource, None, "stale")
    )
    # A custom converter decides for itself what a stale version means.
    assert (outcome.status, outcome.content_type) == ("ok", "application/json")
    assert outcome.document == {"booking": "BK-2001", "at": NOW, "current": False}


@pytest.mark.parametrize(
    ("function", "error", "field"),
    [
        ("partner.forgets_to_return",
         "steps[1] convert (partner.forgets_to_return) returned NoneType, expected a document "
         "(a Message or a dict)", ""),
        ("partner.refuses",
         "steps[1] convert (partner.refuses): PID-3 is empty: the partner needs a patient id",
         "PID-3"),
        ("partner.crashes", "steps[1] convert (partner.crashes) raised ValueError", ""),
    ],
)
def test_custom_converter_failures(
    transforms: Path, function: str, error: str, field: str
) -> None:
    outcome = channel(("convert", function), transforms=transforms).run(appointment(), "utf-8")
    assert (outcome.status, outcome.error, outcome.error_field) == ("error", error, field)
    assert "MRN-ZZ-1" not in outcome.error  # the ValueError's text quotes the resource


# ---------------------------------------------------------------------------- check


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("siu_to_fhir", []),
        ({"name": "siu_to_fhir", "tz": "Europe/Berlin"}, []),
        ("partner.to_partner", []),
        ({"name": "fhir_to_siu", "tz": "Europe/Berlin"},
         ["tz: tz is only used by siu_to_fhir (the zone of HL7 times without an offset)"]),
        ({"name": "siu_to_fhir", "tz": "Mars/Olympus"},
         ["tz: expected an IANA time zone like Europe/Berlin, got 'Mars/Olympus'"]),
        ("missing.convert", ["(args): transforms/missing.py does not exist"]),
        ({"name": "partner.absent"}, ["name: transforms/partner.py has no function 'absent'"]),
        ("partner.three", ["(args): partner.three must take (document) or (document, "
                           "context), but its parameters are (doc, context, extra)"]),
    ],
)
def test_the_check(transforms: Path, args: Any, expected: list[str]) -> None:
    assert described(REGISTRY["convert"].check(args, check_context(transforms))) == expected


def test_the_flow_of_each_converter() -> None:
    flows = {
        name: REGISTRY["convert"].flow_of(name)
        for name in ("siu_to_fhir", "fhir_to_siu", "appointment_event", "partner.to_partner")
    }
    assert {n: (sorted(f.takes), f.gives) for n, f in flows.items()} == {
        "siu_to_fhir": (["hl7v2"], "fhir"),
        "fhir_to_siu": (["fhir"], "hl7v2"),
        "appointment_event": (["fhir", "hl7v2"], "json"),
        "partner.to_partner": (["fhir", "hl7v2", "json"], "unknown"),
    }
    assert REGISTRY["convert"].flow_of({"name": "fhir_to_siu"}) == flows["fhir_to_siu"]


def test_a_step_spec_compiles_with_the_contexts_zone() -> None:
    from engine.pipeline.steps import compile_step

    step = compile_step(
        StepSpec("convert", "siu_to_fhir", channel_config().pos, 3),
        CompileContext({}, SAMPLES, timezone="Asia/Tokyo"),
    )
    decoded = sample("siu_s12_new_patient.hl7")
    assert decoded.message is not None
    out = step.apply(decoded.message.copy(), RunContext())
    assert isinstance(out, dict) and out["start"] == "2025-03-17T10:00:00+09:00"
    assert step.label == "steps[3] convert"
