"""`engine test`'s runner: a configuration with channel tests written into tmp_path and read by
the real loader; passing tests, then each kind of failure and the message it gives."""

from __future__ import annotations

from pathlib import Path

from engine.config.model import ChannelTest, EngineConfig
from engine.pipeline.channel import compile_channels
from engine.pipeline.channel_tests import (
    TEST_CONTROL_ID,
    TEST_NOW,
    read_input,
    run_all,
    run_context,
    run_test,
)
from engine.pipeline.channel_tests import TestResult as Result
from tests.unit.pipeline.support import (
    POS,
    SAMPLES,
    ConfigRoot,
    appointment,
    channel_config,
    compile_channel,
    destination,
)

CHANNEL = """\
    description: Synthetic feed for the channel test runner.
    accept: {type: [SIU^S12, SIU^S15]}
    filter:
      - {field: SCH-25.1, not_in: [Pending]}
    steps:
      - map: {field: SCH-7.1, table: appointment_types, to: ehr_code}
      - map: {field: AIP-3.1, table: providers, to: ehr_id}
      - set: {MSH-5: CLINIC_EHR}
      - remove: PID-11
    destinations:
      clinic-ehr:
        file: {directory: out}
        order_by: SCH-1.1
      archive:
        file: {directory: archive}
    tests:
    """

PASSING = """\
      - name: new patient consult gets the EHR code
        input: samples/siu_s12_new_patient.hl7
        expect:
          clinic-ehr: {SCH-7.1: NP_EVAL_60, MSH-5: CLINIC_EHR, PID-11: ""}
          archive: {AIP-3.1: EHR-DR-0001, SCH-1.1: APT1001}
      - name: latin-1 input is read back in latin-1
        input: samples/siu_s12_latin1.hl7
        expect: {clinic-ehr: {MSH-18: 8859/1, PID-5.1: Grünwaldtest}}
      - name: a pending appointment is filtered
        input: samples/pending.hl7
        outcome: filtered
      - name: an unknown provider is an error
        input: samples/unknown_provider.hl7
        outcome: error
    """


def configure(tmp_path: Path, tests: str) -> EngineConfig:
    root = ConfigRoot(tmp_path).with_channel(CHANNEL.rstrip(" ") + tests)
    for name in ("siu_s12_new_patient.hl7", "siu_s12_latin1.hl7", "siu_s13_reschedule.hl7"):
        root.copy_sample(name)
    new_patient = (SAMPLES / "siu_s12_new_patient.hl7").read_bytes()
    samples = tmp_path / "samples"
    pending = new_patient.replace(b"||Booked\r", b"||Pending\r", 1)
    assert pending != new_patient
    (samples / "pending.hl7").write_bytes(pending)
    (samples / "unknown_provider.hl7").write_bytes(new_patient.replace(b"P1001^", b"P7777^"))
    (samples / "not_hl7.hl7").write_bytes(b"this is not an HL7 message\n")
    (samples / "gone.hl7").write_bytes(new_patient)
    return root.load()


def results(config: EngineConfig) -> list[Result]:
    ctx = ConfigRoot(config.root).context(config)
    return run_all(config, compile_channels(config.channels, ctx))


def problems(config: EngineConfig) -> dict[str, list[str]]:
    return {r.test.name: r.problems for r in results(config)}


def test_passing_tests(tmp_path: Path) -> None:
    outcome = results(configure(tmp_path, PASSING))
    assert [(r.channel, r.test.name, r.passed, r.problems) for r in outcome] == [
        ("feed", "new patient consult gets the EHR code", True, []),
        ("feed", "latin-1 input is read back in latin-1", True, []),
        ("feed", "a pending appointment is filtered", True, []),
        ("feed", "an unknown provider is an error", True, []),
    ]


def test_a_wrong_outcome(tmp_path: Path) -> None:
    config = configure(tmp_path, """\
      - name: pending expected delivered
        input: samples/pending.hl7
        expect: {clinic-ehr: {MSH-5: CLINIC_EHR}}
      - name: unknown provider expected delivered
        input: samples/unknown_provider.hl7
        outcome: delivered
      - name: booked expected filtered
        input: samples/siu_s12_new_patient.hl7
        outcome: filtered
    """)
    assert problems(config) == {
        "pending expected delivered": ["expected outcome delivered, got filtered"],
        "unknown provider expected delivered": [
            "expected outcome delivered, got error (steps[2] map: table 'providers' has no "
            "entry for the value of AIP-3.1)"
        ],
        "booked expected filtered": ["expected outcome filtered, got delivered"],
    }


def test_field_mismatches_are_all_listed(tmp_path: Path) -> None:
    config = configure(tmp_path, """\
      - name: wrong codes
        input: samples/siu_s12_new_patient.hl7
        expect:
          clinic-ehr: {SCH-7.1: FOLLOWUP_30, MSH-5: CLINIC_EHR, PID-11: "1 Elsewhere Rd"}
          archive: {ZZZ-1: "x"}
    """)
    assert problems(config) == {
        "wrong codes": [
            "clinic-ehr SCH-7.1: expected 'FOLLOWUP_30', got 'NP_EVAL_60'",
            "clinic-ehr PID-11: expected '1 Elsewhere Rd', got ''",
            "archive ZZZ-1: expected 'x', got ''",
        ]
    }


def test_input_that_cannot_be_read_rejected_or_not_accepted(tmp_path: Path) -> None:
    config = configure(tmp_path, """\
      - name: input removed after the check
        input: samples/gone.hl7
        outcome: delivered
      - name: not an HL7 message
        input: samples/not_hl7.hl7
        outcome: delivered
      - name: a type the channel does not accept
        input: samples/siu_s13_reschedule.hl7
        outcome: delivered
    """)
    (tmp_path / "samples" / "gone.hl7").unlink()
    assert problems(config) == {
        "input removed after the check": [
            f"cannot read {tmp_path / 'samples' / 'gone.hl7'}: No such file or directory"
        ],
        "not an HL7 message": [
            "input is rejected at intake: message does not start with an MSH segment"
        ],
        "a type the channel does not accept": ["the channel does not accept SIU^S13"],
    }


def test_a_failure_keeps_where_the_test_is_written(tmp_path: Path) -> None:
    config = configure(tmp_path, """\
      - name: booked expected filtered
        input: samples/siu_s12_new_patient.hl7
        outcome: filtered
    """)
    [result] = results(config)
    assert not result.passed
    pos = result.test.pos
    assert (pos.file, pos.line) == (tmp_path / "channels" / "feed.yaml", 17)


def test_a_destination_that_was_sent_nothing() -> None:
    # The loader refuses an expectation for a destination the channel lacks; a channel built
    # directly can still carry one, and the runner must say so rather than pass.
    config = channel_config(destinations=(destination("clinic-ehr"),))
    test = ChannelTest(
        "expects a second destination",
        SAMPLES / "siu_s12_new_patient.hl7",
        POS,
        expect={"clinic-ehr": {"MSH-5": "ENGINE"}, "billing": {"MSH-5": "BILLING"}},
        outcome="delivered",
    )
    result = run_test(config, compile_channel(config), test)
    assert result.problems == ["nothing was sent to billing"]


def test_output_is_read_back_in_the_charset_a_step_chose(tmp_path: Path) -> None:
    root = ConfigRoot(tmp_path).with_channel("""\
        steps:
          - set: {MSH-18: UNICODE UTF-8, NTE-3: Preis 20 €}
        destinations:
          clinic-ehr:
            file: {directory: out}
        tests:
          - name: latin-1 in, UTF-8 out
            input: samples/siu_s12_latin1.hl7
            expect: {clinic-ehr: {PID-5.1: Grünwaldtest, NTE-3: Preis 20 €}}
        """)
    root.copy_sample("siu_s12_latin1.hl7")
    assert problems(root.load()) == {"latin-1 in, UTF-8 out": []}


def test_an_error_without_the_step_in_its_text_is_named_with_its_step() -> None:
    config = channel_config(("set", {"NTE-3": "Preis 20 €"}))
    test = ChannelTest("euro in latin-1", SAMPLES / "siu_s12_latin1.hl7", POS, outcome="delivered")
    result = run_test(config, compile_channel(config), test)
    assert result.problems == [
        "expected outcome delivered, got error "
        "(encode: the output cannot be written in latin-1 (MSH-18))"
    ]


# ---------------------------------------------------------------------------- FHIR and events

FHIR_CHANNEL = """\
    accept: {type: Appointment}
    steps:
      - convert: fhir_to_siu
      - set: {MSH-5: CLINIC_EHR}
    destinations:
      clinic-ehr:
        file: {directory: out}
    tests:
    """


def fhir_root(tmp_path: Path, tests: str) -> EngineConfig:
    root = ConfigRoot(tmp_path).with_channel(FHIR_CHANNEL.rstrip(" ") + tests)
    root.write_json("samples/booking.json", appointment())
    root.write_json(
        "samples/moved.json",
        appointment(start="2025-04-02T09:00:00Z", end="2025-04-02T09:30:00Z"),
    )
    root.write_json("samples/noted.json", appointment(comment="Interpreter requested"))
    root.write_json(
        "samples/other.json",
        appointment(identifier=[{"system": "urn:example:booking", "value": "BK-9999"}]),
    )
    root.write_json("samples/invalid.json", appointment(status="bogus"))
    return root.load()


def test_json_inputs_and_previous_versions_choose_the_trigger(tmp_path: Path) -> None:
    config = fhir_root(tmp_path, """\
      - name: a new booking goes out as S12 with the fixed id and clock
        input: samples/booking.json
        expect:
          clinic-ehr: {MSH-9.2: S12, MSH-10: ENGINETEST0001, MSH-7: 202503101200+0000,
                       MSH-5: CLINIC_EHR, SCH-1.1: BK-2001, NTE-3: "Bring the | form"}
      - name: a time change goes out as S13
        input: samples/moved.json
        previous: samples/booking.json
        expect: {clinic-ehr: {MSH-9.2: S13, TQ1-7: 202504020900+0000}}
      - name: another change goes out as S14
        input: samples/noted.json
        previous: samples/booking.json
        expect: {clinic-ehr: {MSH-9.2: S14}}
    """)
    assert problems(config) == {
        "a new booking goes out as S12 with the fixed id and clock": [],
        "a time change goes out as S13": [],
        "another change goes out as S14": [],
    }


def test_json_test_problems(tmp_path: Path) -> None:
    config = fhir_root(tmp_path, """\
      - name: wrong trigger expected
        input: samples/noted.json
        previous: samples/booking.json
        expect: {clinic-ehr: {MSH-9.2: S13, status: booked}}
      - name: previous is another appointment
        input: samples/noted.json
        previous: samples/other.json
        outcome: delivered
      - name: an invalid Appointment is rejected as intake would
        input: samples/invalid.json
        outcome: error
      - name: an invalid previous version
        input: samples/booking.json
        previous: samples/invalid.json
        outcome: delivered
    """)
    found = problems(config)
    # The validator's own wording is its business; the runner must say who rejected what.
    rejected = {
        name: [p.split(": status is not", 1)[0] for p in found.pop(name)]
        for name in ("an invalid Appointment is rejected as intake would",
                     "an invalid previous version")
    }
    assert found == {
        "wrong trigger expected": [
            "clinic-ehr MSH-9.2: expected 'S13', got 'S14'",
            "clinic-ehr status: the output is an HL7 v2 message; expected a field path like "
            "SCH-1.1",
        ],
        "previous is another appointment": [
            "previous other.json is another appointment than the input"
        ],
    }
    assert rejected == {
        "an invalid Appointment is rejected as intake would": [
            "input is rejected at intake: 422 code-invalid: Appointment.status"
        ],
        "an invalid previous version": [
            "previous is rejected at intake: 422 code-invalid: Appointment.status"
        ],
    }


EVENTS_CHANNEL = """\
    accept: {type: [SIU^S12, SIU^S14, ADT^A01]}
    steps:
      - convert: appointment_event
    destinations:
      hooks:
        file: {directory: out}
    tests:
      - name: a first booking is announced
        input: samples/siu_s12_new_patient.hl7
        expect:
          hooks: {type: appointment.created, timestamp: "2025-03-10T12:00:00.000Z",
                  data.appointment_id: "urn:engine:v2-namespace:EPIC|APT1001",
                  data.start: "2025-03-17T09:00:00Z",
                  data.location_id: "urn:engine:v2-namespace:CLINIC_A|MAIN"}
      - name: a moved booking is an update, times read in the configured zone
        input: samples/siu_s14_modify.hl7
        previous: samples/siu_s12_new_patient.hl7
        expect: {hooks: {type: appointment.updated, data.start: "2025-03-18T13:00:00Z"}}
      - name: a repeat is not announced again
        input: samples/siu_s12_new_patient.hl7
        previous: samples/siu_s12_new_patient.hl7
        outcome: filtered
      - name: a message without an appointment cannot make an event
        input: samples/adt.hl7
        outcome: error
      - name: field paths do not read JSON
        input: samples/siu_s12_new_patient.hl7
        expect: {hooks: {MSH-9: SIU^S12, data.status: cancelled, data.end: ""}}
      - name: previous without an appointment in the input
        input: samples/adt.hl7
        previous: samples/siu_s12_new_patient.hl7
        outcome: error
    """


def test_events_from_siu_with_previous_versions(tmp_path: Path) -> None:
    root = ConfigRoot(tmp_path).with_channel(EVENTS_CHANNEL, timezone="Europe/Berlin")
    for name in ("siu_s12_new_patient.hl7", "siu_s14_modify.hl7"):
        root.copy_sample(name)
    adt = (SAMPLES / "siu_s12_new_patient.hl7").read_bytes().replace(b"SIU^S12^SIU_S12",
                                                                     b"ADT^A01^ADT_A01")
    (tmp_path / "samples" / "adt.hl7").write_bytes(adt)
    assert problems(root.load()) == {
        "a first booking is announced": [],
        "a moved booking is an update, times read in the configured zone": [],
        "a repeat is not announced again": [],
        "a message without an appointment cannot make an event": [],
        "field paths do not read JSON": [
            "hooks MSH-9: the output is JSON (application/json); expected an element path like "
            "status or participant.0.actor.reference",
            "hooks data.status: expected 'cancelled', got 'booked'",
            "hooks data.end: expected '', got '2025-03-17T10:00:00Z'",
        ],
        "previous without an appointment in the input": [
            "previous is given, but the input carries no appointment the engine can key"
        ],
    }


def test_a_filtered_outcome_tells_its_reason(tmp_path: Path) -> None:
    root = ConfigRoot(tmp_path).with_channel(EVENTS_CHANNEL.split("    tests:")[0] + """\
    tests:
      - name: a repeat expected delivered
        input: samples/siu_s12_new_patient.hl7
        previous: samples/siu_s12_new_patient.hl7
        outcome: delivered
    """)
    root.copy_sample("siu_s12_new_patient.hl7")
    assert problems(root.load()) == {
        "a repeat expected delivered": [
            "expected outcome delivered, got filtered (steps[1] convert (appointment_event): "
            "no event: the appointment is unchanged (a repeat of its current version))"
        ]
    }


def test_the_run_context_is_the_one_intake_would_build() -> None:
    decoded = read_input(SAMPLES / "siu_s14_modify.hl7")
    earlier = read_input(SAMPLES / "siu_s12_new_patient.hl7")
    assert not isinstance(decoded, str) and not isinstance(earlier, str)
    assert decoded.appointment is not None and earlier.appointment is not None
    context = run_context(decoded, earlier.appointment)
    assert (context.now, context.control_id) == (TEST_NOW, TEST_CONTROL_ID)
    assert context.appointment is not None
    assert context.appointment.resource == decoded.appointment
    assert context.appointment.previous == earlier.appointment
    assert (context.appointment.assessment.change, context.appointment.disposition) == (
        "rescheduled", "current"
    )
    repeat = run_context(earlier, earlier.appointment).appointment
    assert repeat is not None
    assert (repeat.assessment.change, repeat.disposition) == ("unchanged", "unchanged")
    # An S14 for an appointment never seen is flagged, as intake flags it.
    unknown = run_context(decoded, None).appointment
    assert unknown is not None and unknown.assessment.has("unknown-appointment")
