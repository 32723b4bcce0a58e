"""Channels on JSON documents: a FHIR Appointment dict as the source (copied per channel),
its bytes and content type, what HL7 v2 steps and filters say when handed JSON, lanes read by
element paths, and `python` functions that take the run context, return a dict or decide
there is nothing to send."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.config.model import Condition
from engine.pipeline.channel import lane_key
from engine.pipeline.context import RunContext
from engine.pipeline.documents import content_type, copy_document, describe, kind_of
from engine.pipeline.elements import element_text, parse_element_path
from engine.protocol.er7 import Message
from tests.unit.pipeline.support import (
    MULTI,
    POS,
    appointment,
    channel_config,
    compile_channel,
    destination,
    message,
)

TRANSFORMS = '''\
"""Synthetic transforms working on JSON documents and the run context."""
from engine.pipeline.errors import StepFiltered


def stamp(doc, context):
    doc["comment"] = f"seen at {context.now:.0f} as {context.control_id}"
    return doc


def as_summary(doc):
    return {"kind": "summary", "status": doc["status"], "count": len(doc["participant"])}


def only_booked(doc, context):
    if doc["status"] != "booked":
        raise StepFiltered("not booked: only booked appointments are sent")


def with_default(doc, context=None):
    doc["context_given"] = context is not None


def not_json(doc):
    doc["when"] = object()


def not_a_number(doc):
    doc["minutesDuration"] = float("nan")


def lone_surrogate(doc):
    doc["comment"] = "\\ud800"


def too_many(doc, context, extra):
    return doc
'''


@pytest.fixture
def transforms(tmp_path: Path) -> Path:
    folder = tmp_path / "transforms"
    folder.mkdir()
    (folder / "docs.py").write_text(TRANSFORMS, encoding="utf-8")
    return folder


def test_a_dict_source_goes_out_as_compact_utf8_fhir_json() -> None:
    source = appointment(comment="Grüße | ok")
    outcome = compile_channel(channel_config()).run(source, "utf-8")
    assert outcome.status == "ok"
    assert outcome.content_type == "application/fhir+json"
    assert outcome.codec == "utf-8" and outcome.message is None
    assert outcome.output == json.dumps(
        source, ensure_ascii=False, separators=(",", ":")
    ).encode("utf-8")
    assert "Grüße".encode() in outcome.output and b", " not in outcome.output
    assert [p.data for p in outcome.payloads] == [outcome.output]


def test_each_channel_changes_its_own_copy_of_a_dict(transforms: Path) -> None:
    source = appointment()
    before = json.dumps(source)
    channel = compile_channel(channel_config(("python", "docs.stamp")), transforms)
    first = channel.run(source, "utf-8", context=RunContext(1700000000.0, "CTL-A"))
    second = channel.run(source, "utf-8", context=RunContext(1700000001.0, "CTL-B"))
    assert json.dumps(source) == before  # the source is never touched
    assert first.document is not None and second.document is not None
    assert isinstance(first.document, dict) and isinstance(second.document, dict)
    assert first.document["comment"] == "seen at 1700000000 as CTL-A"
    assert second.document["comment"] == "seen at 1700000001 as CTL-B"
    # Nested containers are copies too, not shared with the source.
    first.document["participant"][0]["status"] = "declined"
    assert source["participant"][0]["status"] == "accepted"


def test_a_json_document_without_resource_type_is_plain_json(transforms: Path) -> None:
    outcome = compile_channel(
        channel_config(("python", "docs.as_summary")), transforms
    ).run(appointment(), "utf-8")
    assert outcome.status == "ok"
    assert outcome.content_type == "application/json"
    assert outcome.output == b'{"kind":"summary","status":"booked","count":2}'


def test_an_hl7_output_keeps_its_content_type() -> None:
    outcome = compile_channel(channel_config(("set", {"MSH-5": "X"}))).run(MULTI, "utf-8")
    assert (outcome.status, outcome.content_type) == ("ok", "application/hl7-v2")
    assert isinstance(outcome.document, Message) and outcome.message is outcome.document


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (("set", {"MSH-5": "X"}), "steps[1] set edits HL7 v2 fields; the channel holds a "
                                  "FHIR resource here: add `- convert: fhir_to_siu` before it"),
        (("copy", {"from": "PID-3.1", "to": "PV1-19"}), "steps[1] copy edits HL7 v2 fields"),
        (("map", {"field": "SCH-7.1", "table": "appointment_types", "to": "ehr_code"}),
         "steps[1] map edits HL7 v2 fields"),
        (("remove", ["PID-11"]), "steps[1] remove edits HL7 v2 fields"),
    ],
)
def test_hl7_steps_refuse_a_fhir_resource_saying_what_to_do(
    step: tuple[str, object], expected: str
) -> None:
    outcome = compile_channel(channel_config(step)).run(appointment(), "utf-8")
    assert outcome.status == "error"
    assert outcome.error.startswith(expected)
    assert outcome.error_step == f"steps[1] {step[0]}"
    assert "BK-2001" not in outcome.error and "MRN-ZZ-1" not in outcome.error


def test_an_hl7_step_after_a_plain_json_document_names_that_kind(transforms: Path) -> None:
    config = channel_config(("python", "docs.as_summary"), ("set", {"MSH-5": "X"}))
    outcome = compile_channel(config, transforms).run(appointment(), "utf-8")
    assert outcome.status == "error"
    assert outcome.error == (
        "steps[2] set edits HL7 v2 fields; the channel holds a JSON document (not FHIR) here: "
        "HL7 v2 steps go before the convert step that makes the JSON document"
    )


def test_a_filter_handed_a_fhir_resource_is_an_error_not_a_pass() -> None:
    booked = Condition("equals", POS, field="SCH-25.1", value="Booked")
    outcome = compile_channel(channel_config(filter=booked)).run(appointment(), "utf-8")
    assert outcome.status == "error"
    assert outcome.error == (
        "filter: filters read HL7 v2 fields; the channel holds a FHIR Appointment"
    )
    assert outcome.error_step == "filter" and outcome.payloads == []


def test_the_same_filter_still_reads_an_hl7_message() -> None:
    booked = Condition("equals", POS, field="SCH-25.1", value="Booked")
    assert compile_channel(channel_config(filter=booked)).run(MULTI, "utf-8").status == (
        "filtered"
    )


def test_a_python_step_may_decide_there_is_nothing_to_send(transforms: Path) -> None:
    channel = compile_channel(channel_config(("python", "docs.only_booked")), transforms)
    kept = channel.run(appointment(), "utf-8")
    dropped = channel.run(appointment(status="pending"), "utf-8")
    assert kept.status == "ok"
    assert (dropped.status, dropped.error, dropped.error_step) == (
        "filtered", "not booked: only booked appointments are sent", "steps[1] python"
    )
    assert dropped.payloads == [] and dropped.output == b""


def test_a_second_parameter_with_a_default_still_gets_the_context(transforms: Path) -> None:
    outcome = compile_channel(channel_config(("python", "docs.with_default")), transforms).run(
        appointment(), "utf-8"
    )
    assert isinstance(outcome.document, dict) and outcome.document["context_given"] is True


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        ("docs.not_json", "encode: the document cannot be written as JSON (it holds a value "
                          "JSON has no form for: TypeError)"),
        ("docs.not_a_number", "encode: the document cannot be written as JSON (it holds a "
                              "value JSON has no form for: ValueError)"),
        ("docs.lone_surrogate", "encode: the document holds text UTF-8 cannot carry "
                                "(an unpaired surrogate)"),
    ],
)
def test_a_document_json_cannot_carry_is_an_error(
    transforms: Path, function: str, expected: str
) -> None:
    outcome = compile_channel(channel_config(("python", function)), transforms).run(
        appointment(), "utf-8"
    )
    assert (outcome.status, outcome.error, outcome.error_step) == ("error", expected, "encode")


def test_a_function_taking_three_parameters_is_refused_by_the_check(transforms: Path) -> None:
    from engine.pipeline.steps import REGISTRY
    from tests.unit.pipeline.support import check_context, described

    [problem] = described(REGISTRY["python"].check("docs.too_many", check_context(transforms)))
    assert problem == (
        "(args): docs.too_many must take (document) or (document, context), "
        "but its parameters are (doc, context, extra)"
    )


# ---------------------------------------------------------------------------- lanes


def test_lanes_read_an_element_path_from_json_and_a_field_path_from_hl7() -> None:
    config = channel_config(
        destinations=(
            destination("by-booking", order_by="identifier.0.value"),
            destination("by-placer", order_by="SCH-1.1"),
            destination("one-lane"),
        )
    )
    channel = compile_channel(config)
    json_lanes = [p.lane for p in channel.run(appointment(), "utf-8").payloads]
    hl7_lanes = [p.lane for p in channel.run(MULTI, "utf-8").payloads]
    # A path of the other kind puts everything in the one strict FIFO lane "".
    assert json_lanes == ["BK-2001", "", ""]
    assert hl7_lanes == ["", "APT9001", ""]


def test_lane_key_of_a_bare_segment_name_stays_a_field_path() -> None:
    assert lane_key("NTE")(message()) == "NTE|1||first note"
    assert lane_key("NTE")(appointment()) == ""


# ---------------------------------------------------------------------------- helpers


def test_kinds_descriptions_and_content_types() -> None:
    hl7, fhir, event = message(), appointment(), {"type": "appointment.created"}
    assert [kind_of(d) for d in (hl7, fhir, event)] == ["hl7v2", "fhir", "json"]
    assert [content_type(d) for d in (hl7, fhir, event)] == [
        "application/hl7-v2", "application/fhir+json", "application/json"
    ]
    assert [describe(d) for d in (hl7, fhir, event)] == [
        "an HL7 v2 message", "a FHIR Appointment", "a JSON document (not FHIR)"
    ]
    # A resource type that is not a plain word is not quoted into an error text.
    assert describe({"resourceType": "Patient Zzyzx, Quinn"}) == "a FHIR resource"


def test_copy_document_copies_messages_too() -> None:
    original = message()
    copied = copy_document(original)
    assert isinstance(copied, Message)
    copied.set("MSH-5", "CHANGED")
    assert original.get("MSH-5") == "ENGINE"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("status", "booked"),
        ("minutesDuration", "30"),
        ("participant.1.actor.identifier.value", "PR-77"),
        ("participant.1.actor.identifier", '{"system":"urn:example:npi","value":"PR-77"}'),
        ("participant.7.actor", ""),  # past the end of the list
        ("status.0", ""),  # into a string
        ("cancelationReason", ""),  # absent
    ],
)
def test_element_text(path: str, expected: str) -> None:
    assert element_text(appointment(), parse_element_path(path)) == expected


def test_element_text_of_booleans_and_null() -> None:
    document = {"data": {"ok": True, "provider_id": None}}
    assert element_text(document, ("data", "ok")) == "true"
    assert element_text(document, ("data", "provider_id")) == ""


@pytest.mark.parametrize("text", ["", "SCH-1", "status.", "0.status", "Status", "a..b"])
def test_bad_element_paths(text: str) -> None:
    with pytest.raises(ValueError, match="expected an element path"):
        parse_element_path(text)
