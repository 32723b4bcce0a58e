"""`CompiledChannel.run` on the repository samples: accept, filter, steps, per-destination
payloads and lanes, the output charset, and every failure turned into an `error` outcome."""

from __future__ import annotations

import logging

import pytest

from engine.config.model import Condition
from engine.pipeline.channel import compile_channels
from engine.pipeline.steps.base import CompileContext
from engine.protocol.er7 import Message
from tests.unit.pipeline.support import (
    POS,
    REPO,
    TABLES,
    channel_config,
    compile_channel,
    destination,
    run,
    sample,
)

NEW_PATIENT = "siu_s12_new_patient.hl7"
LATIN1 = "siu_s12_latin1.hl7"
NOT_PENDING = Condition("not_in", POS, field="SCH-25.1", value=("Pending",))
MAP_TYPES = ("map", {"field": "SCH-7.1", "table": "appointment_types", "to": "ehr_code"})
MAP_PROVIDERS = ("map", {"field": "AIP-3.1", "table": "providers", "to": "ehr_id"})


def test_accepts_listed_types_or_every_type_when_none_is_listed() -> None:
    listed = compile_channel(channel_config(accept=("SIU^S12", "SIU^S15")))
    assert listed.accepts("SIU^S12") and listed.accepts("SIU^S15")
    assert not listed.accepts("SIU^S13") and not listed.accepts("ADT^A01")
    assert compile_channel(channel_config()).accepts("ADT^A01")


def test_a_delivered_message_has_one_payload_per_destination() -> None:
    decoded = sample(NEW_PATIENT)
    config = channel_config(
        MAP_TYPES,
        MAP_PROVIDERS,
        ("set", {"MSH-5": "CLINIC_EHR"}),
        ("remove", ["PID-11", "PID-13"]),
        filter=NOT_PENDING,
        destinations=(destination("clinic-ehr", order_by="SCH-1.1"), destination("archive")),
    )
    outcome = compile_channel(config).run(decoded.text, decoded.codec)
    assert (outcome.status, outcome.channel, outcome.error, outcome.codec) == (
        "ok", "test", "", "utf-8"
    )
    out = Message.parse(outcome.output.decode("utf-8"))
    assert (out.get("SCH-7.1"), out.get("AIP-3.1"), out.get("MSH-5")) == (
        "NP_EVAL_60", "EHR-DR-0001", "CLINIC_EHR"
    )
    assert (out.get("PID-11"), out.get("PID-13"), out.get("PID-5.1")) == ("", "", "Testperson")
    assert [(p.destination.name, p.lane, p.data) for p in outcome.payloads] == [
        ("clinic-ehr", "APT1001", outcome.output),
        ("archive", "", outcome.output),
    ]
    # Segments no step touched go out exactly as received.
    received = decoded.text.split("\r")
    sent = outcome.output.decode("utf-8").split("\r")
    assert [s for s in sent if s[:3] in ("NTE", "PV1", "RGS", "AIS", "AIG", "AIL")] == [
        s for s in received if s[:3] in ("NTE", "PV1", "RGS", "AIS", "AIG", "AIL")
    ]


def test_the_lane_is_read_after_the_steps() -> None:
    config = channel_config(
        ("set", {"SCH-1.1": "APT-RENUMBERED"}),
        destinations=(destination("clinic-ehr", order_by="SCH-1.1"),),
    )
    outcome = compile_channel(config).run(sample(NEW_PATIENT).text, "utf-8")
    assert [p.lane for p in outcome.payloads] == ["APT-RENUMBERED"]


def test_only_restricts_the_payloads_to_one_destination() -> None:
    config = channel_config(destinations=(destination("clinic-ehr"), destination("archive")))
    channel = compile_channel(config)
    text = sample(NEW_PATIENT).text
    assert [p.destination.name for p in channel.run(text, "utf-8", only="archive").payloads] == [
        "archive"
    ]
    assert channel.run(text, "utf-8", only="nowhere").payloads == []


def test_a_filtered_message_has_no_output_and_no_payload() -> None:
    pending = sample(NEW_PATIENT).text.replace("||Booked\r", "||Pending\r", 1)
    outcome = compile_channel(channel_config(MAP_TYPES, filter=NOT_PENDING)).run(pending, "utf-8")
    assert (outcome.status, outcome.output, outcome.payloads, outcome.error) == (
        "filtered", b"", [], ""
    )


def test_a_step_error_names_the_step_and_the_field_and_stops_the_steps() -> None:
    text = sample(NEW_PATIENT).text.replace("P1001^Rivera", "P7777^Rivera")
    outcome = run(MAP_TYPES, MAP_PROVIDERS, ("set", {"MSH-5": "CLINIC_EHR"}), text=text)
    assert (outcome.status, outcome.error_step, outcome.error_field, outcome.error_code) == (
        "error", "steps[2] map", "AIP-3.1", 103
    )
    assert "P7777" not in outcome.error and "providers" in outcome.error
    assert (outcome.output, outcome.payloads, outcome.message) == (b"", [], None)


def test_latin1_input_goes_out_in_latin1() -> None:
    decoded = sample(LATIN1)
    assert decoded.codec == "latin-1"
    outcome = run(("set", {"MSH-5": "CLINIC_EHR", "NTE-3": "Grüße à bientôt"}),
                  text=decoded.text, codec=decoded.codec)
    assert (outcome.status, outcome.codec) == ("ok", "latin-1")
    assert "Grünwaldtest".encode("latin-1") in outcome.output
    assert "Grüße à bientôt".encode("latin-1") in outcome.output
    assert "ü".encode() not in outcome.output
    assert Message.parse(outcome.output.decode("latin-1")).get("PID-5.1") == "Grünwaldtest"


def test_text_the_charset_cannot_hold_is_an_error_outcome() -> None:
    decoded = sample(LATIN1)
    outcome = run(("set", {"NTE-3": "Preis 20 €"}), text=decoded.text, codec=decoded.codec)
    assert (outcome.status, outcome.error_step, outcome.payloads) == ("error", "encode", [])
    assert outcome.error == "the output cannot be written in latin-1 (MSH-18)"
    assert "Preis" not in outcome.error


def test_a_step_that_changes_msh18_changes_the_output_charset() -> None:
    decoded = sample(LATIN1)
    outcome = run(("set", {"MSH-18": "UNICODE UTF-8", "NTE-3": "Preis 20 €"}),
                  text=decoded.text, codec=decoded.codec)
    assert (outcome.status, outcome.codec) == ("ok", "utf-8")
    out = Message.parse(outcome.output.decode("utf-8"))
    assert (out.get("PID-5.1"), out.get("NTE-3")) == ("Grünwaldtest", "Preis 20 €")


def test_a_step_that_sets_an_unknown_charset_fails_naming_msh18() -> None:
    outcome = run(("set", {"MSH-18": "KLINGON-8"}), text=sample(NEW_PATIENT).text)
    assert (outcome.status, outcome.error_step, outcome.error_field, outcome.error_code) == (
        "error", "encode", "MSH-18", 103
    )


def test_an_unexpected_exception_in_a_step_is_an_error_naming_its_type_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Built without the configuration check, which refuses it: the step raises at run time.
    with caplog.at_level(logging.ERROR, logger="engine.pipeline"):
        outcome = run(("set", {"PID-5.1": "Renamed"}), ("set", {"MSH-2": "Zzyzx"}))
    assert (outcome.status, outcome.error_step) == ("error", "steps[2] set")
    assert outcome.error == "steps[2] set: internal error (PathError)"
    assert outcome.error_detail.startswith("PathError: MSH-2 holds the separators")
    assert [r.getMessage() for r in caplog.records] == [
        "channel test: unexpected PathError in steps[2] set"
    ]


def test_unparseable_text_is_an_error_outcome_not_an_exception() -> None:
    outcome = run(text="PID|1||MRN1\r")
    assert (outcome.status, outcome.error_step, outcome.error_code) == ("error", "parse", 100)


def test_each_channel_works_on_its_own_copy_of_the_message() -> None:
    ctx = CompileContext(dict(TABLES), REPO / "transforms")
    channels = compile_channels(
        {
            "a": channel_config(("set", {"MSH-5": "A_EHR"}), MAP_TYPES, name="a"),
            "b": channel_config(("remove", "SCH"), name="b"),
        },
        ctx,
    )
    text = sample(NEW_PATIENT).text
    a, b = (channels[n].run(text, "utf-8") for n in ("a", "b"))
    assert a.message is not None and b.message is not None
    assert (a.message.get("MSH-5"), a.message.get("SCH-7.1")) == ("A_EHR", "NP_EVAL_60")
    assert (b.message.get("MSH-5"), b.message.get("SCH-7.1")) == ("ENGINE", "")
    assert channels["a"].run(text, "utf-8").output == a.output  # nothing carried over
