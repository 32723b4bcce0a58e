"""Cross-reference rules: routes, listeners, channels, destinations, field paths, regexes,
filter conditions, channel tests."""

from __future__ import annotations

from engine.protocol.er7 import PathError, parse_path
from tests.unit.config.support import ConfigDir

CHANNEL_FILE = "channels/siu-to-clinic-ehr.yaml"
DEST = "destinations: {clinic-ehr: {mllp: {host: ehr.test, port: 6661}}}\n"


def _path_error(text: str) -> str:
    try:
        parse_path(text)
    except PathError as exc:
        return f"expected a field path: {exc}"
    raise AssertionError(f"{text!r} parsed")


def test_route_names_a_missing_listener_and_channel(cfg: ConfigDir) -> None:
    cfg.routes("""\
        listeners:
          epic-siu: {mllp: {port: 2575}}
        routes:
          epic-siu: [siu-to-ehr]
          epic: [siu-to-clinic-ehr]
        """)
    assert cfg.problems() == [
        "routes.yaml:4:14: channel 'siu-to-ehr' does not exist (channels: siu-to-clinic-ehr)",
        "routes.yaml:5:3: listener 'epic' does not exist (listeners: epic-siu)",
    ]


def test_every_listener_needs_a_route(cfg: ConfigDir) -> None:
    cfg.routes("""\
        listeners:
          epic-siu: {mllp: {port: 2575}}
          lab: {mllp: {port: 2576}}
        routes:
          epic-siu: [siu-to-clinic-ehr, siu-to-clinic-ehr]
        """)
    assert cfg.problems() == [
        "routes.yaml:3:3: listener 'lab' has no route (expected an entry 'lab: "
        "[<channel>, ...]' under routes)",
        "routes.yaml:5:33: channel 'siu-to-clinic-ehr' is listed twice for listener 'epic-siu'",
    ]


def test_a_listener_serving_only_admin_takes_no_route(cfg: ConfigDir) -> None:
    cfg.routes("""\
        security: {profile: development}
        listeners:
          epic-siu: {mllp: {port: 2575}}
          console: {http: {port: 8081, serve: [admin]}}
          both: {http: {port: 8082, serve: [fhir, admin]}}
        routes:
          epic-siu: [siu-to-clinic-ehr]
          console: [siu-to-clinic-ehr]
        """)
    assert cfg.problems() == [
        "routes.yaml:5:3: listener 'both' has no route (expected an entry 'both: "
        "[<channel>, ...]' under routes)",
        "routes.yaml:8:3: listener 'console' serves only admin: it takes no messages, so it "
        "has no route (add fhir to its serve: list, or remove this entry)",
    ]


def test_two_listeners_on_one_port(cfg: ConfigDir) -> None:
    cfg.routes("""\
        listeners:
          epic-siu: {mllp: {port: 2575}}
          lab: {mllp: {port: 2575, host: 127.0.0.1}}
        routes:
          epic-siu: [siu-to-clinic-ehr]
          lab: [siu-to-clinic-ehr]
        """)
    assert cfg.problems() == [
        "routes.yaml:3:3: port 2575 on 127.0.0.1 is already used by listener 'epic-siu'",
    ]


def test_destination_names_are_unique_across_channels(cfg: ConfigDir) -> None:
    cfg.channel("appointment-events", DEST)
    assert cfg.problems() == [
        "channels/siu-to-clinic-ehr.yaml:10:3: destination 'clinic-ehr' is already defined in "
        "channel 'appointment-events' (appointment-events.yaml:1:16); destination names must "
        "be unique",
    ]


def test_field_paths_must_parse(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", """\
        filter: {field: SCH25, equals: Booked}
        destinations:
          clinic-ehr:
            mllp: {host: ehr.test, port: 6661}
            order_by: sch-1
        tests:
          - name: bad expect path
            input: samples/siu_s12_new_patient.hl7
            expect: {clinic-ehr: {SCH-7.x: NP_EVAL_60}}
        """)
    assert cfg.problems() == [
        f"{CHANNEL_FILE}:1:17: {_path_error('SCH25')}",
        f"{CHANNEL_FILE}:5:15: {_path_error('sch-1')}",
        f"{CHANNEL_FILE}:9:27: {_path_error('SCH-7.x')}",
    ]


def test_json_outputs_take_element_paths_in_expect_and_order_by(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", """\
        destinations:
          clinic-ehr:
            mllp: {host: ehr.test, port: 6661}
            order_by: identifier.0.value
        tests:
          - name: element paths
            input: samples/siu_s12_new_patient.hl7
            expect: {clinic-ehr: {status: booked, participant.0.actor.reference: Patient/1}}
          - name: not an element path either
            input: samples/siu_s12_new_patient.hl7
            expect: {clinic-ehr: {participant..0: x, data.0x: y, Status: z}}
        """)
    assert cfg.problems() == [
        f"{CHANNEL_FILE}:11:27: expected an element path like participant.0.actor.reference "
        "(names and 0-based indices joined by dots) or a field path like SCH-7.1, got "
        "'participant..0'",
        f"{CHANNEL_FILE}:11:46: expected an element path like participant.0.actor.reference "
        "(names and 0-based indices joined by dots) or a field path like SCH-7.1, got "
        "'data.0x'",
        # Upper case first: meant as a field path, and told what a field path needs.
        f"{CHANNEL_FILE}:11:58: {_path_error('Status')}",
    ]


def test_a_test_previous_must_exist(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", """\
        destinations: {clinic-ehr: {mllp: {host: ehr.test, port: 6661}}}
        tests:
          - name: a change
            input: samples/siu_s12_new_patient.hl7
            previous: samples/zz_earlier.json
            outcome: delivered
        """)
    assert cfg.problems() == [
        f"{CHANNEL_FILE}:5:15: test previous 'samples/zz_earlier.json' does not exist",
    ]


def test_a_test_previous_is_kept_resolved(cfg: ConfigDir) -> None:
    cfg.write("samples/earlier.hl7", "MSH|^~\\&|A|B|C|D|20240101||SIU^S12|C1|P|2.5.1\r")
    cfg.channel("siu-to-clinic-ehr", """\
        destinations: {clinic-ehr: {mllp: {host: ehr.test, port: 6661}}}
        tests:
          - name: a change
            input: samples/siu_s12_new_patient.hl7
            previous: samples/earlier.hl7
            outcome: delivered
          - name: no previous
            input: samples/siu_s12_new_patient.hl7
            outcome: delivered
        """)
    changed, plain = cfg.load().channels["siu-to-clinic-ehr"].tests
    assert changed.previous == cfg.root / "samples" / "earlier.hl7"
    assert plain.previous is None


def test_regex_must_compile(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", "filter: {field: SCH-25.1, matches: '(Booked'}\n" + DEST)
    assert cfg.problems() == [
        f"{CHANNEL_FILE}:1:36: expected a regular expression: "
        "missing ), unterminated subpattern at position 0",
    ]


def test_one_test_per_condition(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", """\
        filter:
          - {field: SCH-25.1, equals: Booked, in: [Booked]}
          - {field: PV1-2}
          - {equals: O}
          - {field: PV1-2, exists: true, any: [{field: PID-8, exists: true}]}
          - {all: [{field: PID-8, exists: true}], any: [{field: PID-8, exists: false}]}
        """ + DEST)
    assert cfg.problems() == [
        f"{CHANNEL_FILE}:2:39: expected exactly one test per condition, got equals and in",
        f"{CHANNEL_FILE}:3:5: expected one test for the field: one of equals, in, not_in, "
        "exists, matches",
        f"{CHANNEL_FILE}:4:6: 'equals' needs a field, like field: PID-8",
        f"{CHANNEL_FILE}:5:34: 'any' cannot sit beside a field test; put it in its own condition",
        f"{CHANNEL_FILE}:6:5: expected a field test or exactly one of all, any, not, "
        "got all and any",
    ]


def test_condition_values_are_compared_as_written(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", """\
        filter:
          - {field: PV1-2, equals: 01}
          - {field: SCH-8, in: [007, true, 1.50]}
        """ + DEST)
    condition = cfg.load().channels["siu-to-clinic-ehr"].filter
    assert condition is not None
    assert [(c.op, c.value) for c in condition.children] == [
        ("equals", "01"),
        ("in", ("007", "true", "1.50")),
    ]


def test_test_input_must_exist_and_expect_names_channel_destinations(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", """\
        destinations: {clinic-ehr: {mllp: {host: ehr.test, port: 6661}}}
        tests:
          - name: missing sample
            input: samples/zz_missing.hl7
            expect: {clinic-ehrr: {SCH-7.1: NP_EVAL_60}}
        """)
    assert cfg.problems() == [
        f"{CHANNEL_FILE}:4:12: test input 'samples/zz_missing.hl7' does not exist",
        f"{CHANNEL_FILE}:5:14: destination 'clinic-ehrr' is not in this channel "
        "(destinations: clinic-ehr)",
    ]


def test_test_outcome_and_expect_must_agree(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", """\
        destinations: {clinic-ehr: {mllp: {host: ehr.test, port: 6661}}}
        tests:
          - name: filtered yet expecting output
            input: samples/siu_s12_new_patient.hl7
            outcome: filtered
            expect: {clinic-ehr: {MSH-5: X}}
          - name: expects nothing
            input: samples/siu_s12_new_patient.hl7
          - name: expects nothing
            input: samples/siu_s12_new_patient.hl7
            outcome: filtered
        """)
    assert cfg.problems() == [
        f"{CHANNEL_FILE}:6:5: a test with outcome filtered cannot expect destination content",
        f"{CHANNEL_FILE}:7:5: expected 'expect' or 'outcome' in a channel test",
        f"{CHANNEL_FILE}:9:11: duplicate test name 'expects nothing' (first at line 7)",
    ]


def test_outcome_without_expect_is_kept(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", """\
        destinations: {clinic-ehr: {mllp: {host: ehr.test, port: 6661}}}
        tests:
          - {name: pending is dropped, input: samples/siu_s12_new_patient.hl7, outcome: filtered}
        """)
    [test] = cfg.load().channels["siu-to-clinic-ehr"].tests
    assert (test.outcome, test.expect) == ("filtered", {})


def test_channel_file_names(cfg: ConfigDir) -> None:
    cfg.write("channels/siu to ehr.yaml", DEST)
    cfg.write("channels/legacy.yml", DEST)
    cfg.write("channels/notes.txt", "not a channel")
    assert cfg.problems() == [
        "channels/legacy.yml:1:1: channel files end in .yaml: rename it to legacy.yaml",
        "channels/siu to ehr.yaml:1:1: expected a channel file name made of letters, digits, "
        "'_' and '-', got 'siu to ehr.yaml'",
    ]


def test_store_paths(cfg: ConfigDir) -> None:
    text = cfg.routes_file.read_text()
    cfg.routes(text.replace("sqlite:data/engine.db", "sqlite:/var/lib/zz/engine.db"))
    assert cfg.load().store == "sqlite:/var/lib/zz/engine.db"
    cfg.routes(text.replace("sqlite:data/engine.db", "postgresql://db.test/engine"))
    assert cfg.load().store == "postgresql://db.test/engine"
    cfg.routes(text.replace("sqlite:data/engine.db", "'sqlite:'"))
    assert cfg.problems() == ["routes.yaml:1:8: expected a database file after sqlite:"]
