"""`engine test`'s runner: a configuration with channel tests written into tmp_path and read by
the real loader; passing tests, then each kind of failure and the message it gives."""

from __future__ import annotations

from pathlib import Path

from engine.config.model import ChannelTest, EngineConfig
from engine.pipeline.channel import compile_channels
from engine.pipeline.channel_tests import TestResult as Result
from engine.pipeline.channel_tests import run_all, run_test
from tests.unit.pipeline.support import (
    POS,
    SAMPLES,
    ConfigRoot,
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
