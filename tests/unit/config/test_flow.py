"""`engine check`'s walk over what kind of document each channel holds, with the engine's own
steps: HL7 v2 steps on FHIR, converters fed the wrong kind, filters on FHIR-only channels,
order_by of the wrong kind; and the mixed or unknown cases it must leave alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import ConfigError, load
from engine.config.flow import input_kind
from tests.unit.config.support import ConfigDir

FILE = "channels/feed.yaml"

ROUTES = """\
    listeners:
      fhir:
        http: {port: 8080}
    routes:
      fhir: [feed]
    """


def problems(root: Path, channel: str) -> list[str]:
    """Every problem of a configuration with this one channel, loaded with the engine's own
    step and destination registries ([] when it loads)."""
    cfg = ConfigDir(root)
    cfg.routes(ROUTES)
    cfg.channel("feed", channel)
    cfg.write("transforms/custom.py", "def reshape(doc, context):\n    return doc\n")
    cfg.table("types", "new_patient_consult: {code: NP60}\n")
    try:
        load(cfg.routes_file)
    except ConfigError as exc:
        return [f"{p.pos.file.relative_to(root)}:{p.pos.line}:{p.pos.column}: {p.message}"
                for p in exc.problems]
    return []


def test_an_hl7_step_on_a_fhir_channel_is_reported_at_the_step(tmp_path: Path) -> None:
    assert problems(tmp_path, """\
        accept: {type: Appointment}
        steps:
          - set: {MSH-5: CLINIC_EHR}
        destinations:
          out: {file: {directory: out}}
        """) == [
        f"{FILE}:3:5: steps[1] set edits HL7 v2 fields; the channel holds a FHIR resource "
        "here: add `- convert: fhir_to_siu` before it",
    ]


def test_after_fhir_to_siu_hl7_steps_are_fine(tmp_path: Path) -> None:
    assert problems(tmp_path, """\
        accept: {type: [Appointment]}
        steps:
          - convert: fhir_to_siu
          - set: {MSH-5: CLINIC_EHR}
          - remove: [PID-11]
        destinations:
          out: {file: {directory: out}, order_by: SCH-1.1}
        """) == []


def test_an_hl7_step_after_siu_to_fhir_and_a_converter_fed_the_wrong_kind(
    tmp_path: Path,
) -> None:
    assert problems(tmp_path, """\
        accept: {type: [SIU^S12, SIU^S14]}
        steps:
          - convert: fhir_to_siu
          - convert: siu_to_fhir
          - map: {field: SCH-7.1, table: types, to: code}
          - convert: {name: siu_to_fhir}
        destinations:
          out: {file: {directory: out}}
        """) == [
        f"{FILE}:3:5: steps[1] convert (fhir_to_siu) takes a FHIR Appointment; the channel "
        "holds an HL7 v2 message here: remove this step",
        # The walk goes on with what fhir_to_siu gives (HL7 v2), so the next step is fine.
        f"{FILE}:5:5: steps[3] map edits HL7 v2 fields; the channel holds a FHIR resource "
        "here: add `- convert: fhir_to_siu` before it",
        f"{FILE}:6:5: steps[4] convert (siu_to_fhir) takes an HL7 v2 SIU message; the channel "
        "holds a FHIR resource here: remove this step",
    ]


def test_steps_after_an_event_hold_json(tmp_path: Path) -> None:
    assert problems(tmp_path, """\
        accept: {type: [SIU^S12, Appointment]}
        steps:
          - convert: appointment_event
          - set: {MSH-5: HOOKS}
          - convert: appointment_event
        destinations:
          hooks: {file: {directory: out}, order_by: SCH-1.1}
        """) == [
        f"{FILE}:4:5: steps[2] set edits HL7 v2 fields; the channel holds a JSON document "
        "(not FHIR) here: HL7 v2 steps go before the convert step that makes the JSON document",
        f"{FILE}:5:5: steps[3] convert (appointment_event) takes the appointment's SIU "
        "message or FHIR Appointment; the channel holds a JSON document (not FHIR) here",
        f"{FILE}:7:45: order_by reads an HL7 v2 field, but the channel sends a JSON document "
        "(not FHIR): every payload would share one lane; use an element path like "
        "data.appointment_id",
    ]


def test_a_filter_on_a_fhir_only_channel(tmp_path: Path) -> None:
    assert problems(tmp_path, """\
        accept: {type: Appointment}
        filter: {field: SCH-25.1, equals: Booked}
        destinations:
          out: {file: {directory: out}}
        """) == [
        f"{FILE}:2:9: filters read HL7 v2 fields, and this channel accepts only FHIR resources "
        "(Appointment): remove the filter, or decide in a python step that raises StepFiltered",
    ]


def test_an_element_order_by_on_hl7_output(tmp_path: Path) -> None:
    assert problems(tmp_path, """\
        accept: {type: Appointment}
        steps:
          - convert: fhir_to_siu
        destinations:
          out:
            file: {directory: out}
            order_by: identifier.0.value
        """) == [
        f"{FILE}:7:15: order_by reads a JSON element, but the channel sends an HL7 v2 "
        "message: every payload would share one lane; use a field path like SCH-1.1",
    ]


def test_an_element_order_by_on_fhir_output_is_fine(tmp_path: Path) -> None:
    assert problems(tmp_path, """\
        accept: {type: [SIU^S12]}
        steps:
          - convert: siu_to_fhir
        destinations:
          out: {file: {directory: out}, order_by: identifier.0.value}
        """) == []


@pytest.mark.parametrize(
    "accept",
    [
        "accept: {type: [SIU^S12, Appointment]}",  # mixed: checked at run time
        "description: accepts everything",  # no accept: every type
    ],
)
def test_an_unknown_input_kind_is_left_to_run_time(tmp_path: Path, accept: str) -> None:
    assert problems(tmp_path, f"""\
        {accept}
        filter: {{field: SCH-25.1, equals: Booked}}
        steps:
          - set: {{MSH-5: CLINIC_EHR}}
        destinations:
          out: {{file: {{directory: out}}}}
        """) == []


def test_after_a_python_step_or_custom_converter_the_kind_is_unknown(tmp_path: Path) -> None:
    assert problems(tmp_path, """\
        accept: {type: Appointment}
        steps:
          - python: custom.reshape
          - set: {MSH-5: CLINIC_EHR}
          - convert: siu_to_fhir
          - convert: custom.reshape
          - remove: PID-11
        destinations:
          out: {file: {directory: out}, order_by: SCH-1.1}
        """) == []


def test_a_channel_with_a_broken_step_is_not_walked(tmp_path: Path) -> None:
    # The convert step's tz is wrong; guessing past it would add noise about the set step.
    assert problems(tmp_path, """\
        accept: {type: [SIU^S12]}
        steps:
          - convert: {name: siu_to_fhir, tz: Nowhere/City}
          - set: {MSH-5: CLINIC_EHR}
        destinations:
          out: {file: {directory: out}}
        """) == [
        f"{FILE}:3:38: expected an IANA time zone like Europe/Berlin, got 'Nowhere/City'",
    ]


def test_an_unknown_converter_name_is_a_schema_problem(tmp_path: Path) -> None:
    assert problems(tmp_path, """\
        accept: {type: [SIU^S12]}
        steps:
          - convert: sui_to_fhir
        destinations:
          out: {file: {directory: out}}
        """) == [
        f"{FILE}:3:14: expected siu_to_fhir, fhir_to_siu, appointment_event or "
        "module.function (a file in transforms/), got 'sui_to_fhir'",
    ]


def test_input_kind() -> None:
    assert input_kind(["SIU^S12", "SIU^S15"]) == "hl7v2"
    assert input_kind(["Appointment"]) == "fhir"
    assert input_kind(["SIU^S12", "Appointment"]) is None
    assert input_kind([]) is None
