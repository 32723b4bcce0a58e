"""Structure problems: each names file:line:column and what was expected."""

from __future__ import annotations

from engine.config.model import ReloadConfig
from tests.unit.config.support import ConfigDir

CHANNEL_FILE = "channels/siu-to-clinic-ehr.yaml"


def _routes(cfg: ConfigDir, listener: str) -> None:
    cfg.routes("listeners:\n" + listener + "routes:\n  epic-siu: [siu-to-clinic-ehr]\n")


def test_unknown_key_points_at_the_key(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", """\
        destinations:
          clinic-ehr:
            mllp: {host: ehr.test, port: 6661}
            retries: {attempts: 5}
        """)
    assert cfg.problems() == [
        f"{CHANNEL_FILE}:4:5: unknown key 'retries' (expected one of: mllp, file, retry, "
        "order_by)",
    ]


def test_unknown_top_level_key_in_routes(cfg: ConfigDir) -> None:
    cfg.routes(cfg.routes_file.read_text() + "listener: {}\n")
    assert cfg.problems() == [
        "routes.yaml:9:1: unknown key 'listener' "
        "(expected one of: store, security, timezone, listeners, routes, reload)",
    ]


def test_reload_block_problems_and_default(cfg: ConfigDir) -> None:
    assert cfg.load().reload == ReloadConfig(watch=False, interval=1.0)
    text = cfg.routes_file.read_text()
    cfg.routes(text + "reload: {watch: true, interval: 250ms}\n")
    assert cfg.load().reload == ReloadConfig(watch=True, interval=0.25)
    cfg.routes(text + "reload: {watch: yes please, interval: 0s, every: 1s}\n")
    assert cfg.problems() == [
        "routes.yaml:9:17: expected true or false, got 'yes please'",
        "routes.yaml:9:39: expected a duration > 0, got '0s'",
        "routes.yaml:9:43: unknown key 'every' (expected one of: watch, interval)",
    ]


def test_enum_lists_the_choices(cfg: ConfigDir) -> None:
    _routes(cfg, "  epic-siu: {mllp: {port: 2575}, ack: procesed}\n")
    assert cfg.problems() == [
        "routes.yaml:2:39: expected one of commit, processed, delivered, got 'procesed'",
    ]


def test_port_out_of_range_and_of_wrong_type(cfg: ConfigDir) -> None:
    _routes(cfg, "  epic-siu: {mllp: {port: 70000}}\n  other: {mllp: {port: ZZ}}\n")
    assert cfg.problems() == [
        "routes.yaml:2:27: expected a port number 1..65535, got 70000",
        "routes.yaml:3:3: listener 'other' has no route (expected an entry 'other: "
        "[<channel>, ...]' under routes)",
        "routes.yaml:3:24: expected a port number 1..65535, got 'ZZ'",
    ]


def test_listener_name_must_be_a_plain_name(cfg: ConfigDir) -> None:
    _routes(cfg, "  epic-siu: {mllp: {port: 2575}}\n  epic siu: {mllp: {port: 2576}}\n")
    problems = cfg.problems()
    assert problems[0] == (
        "routes.yaml:3:3: expected a name made of letters, digits, '_' and '-', got 'epic siu'"
    )


def test_missing_required_key(cfg: ConfigDir) -> None:
    _routes(cfg, "  epic-siu: {ack: commit}\n")
    assert cfg.problems() == ["routes.yaml:2:13: expected exactly one of mllp: or http:"]


def test_missing_listeners_and_routes(cfg: ConfigDir) -> None:
    cfg.routes("store: sqlite:engine.db\n")
    assert cfg.problems() == [
        "routes.yaml:1:1: missing required key 'listeners'",
        "routes.yaml:1:1: missing required key 'routes'",
    ]


def test_unknown_store_scheme(cfg: ConfigDir) -> None:
    cfg.routes(cfg.routes_file.read_text().replace("sqlite:data/engine.db", "mysql://db/x"))
    assert cfg.problems() == [
        "routes.yaml:1:8: expected sqlite:<path> or postgresql://..., got 'mysql://db/x'",
    ]


def test_retry_attempts_at_least_one(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", """\
        destinations:
          clinic-ehr:
            mllp: {host: ehr.test, port: 6661}
            retry: {attempts: 0, jitter: 1.5}
        """)
    assert cfg.problems() == [
        f"{CHANNEL_FILE}:4:23: expected a value >= 1, got 0",
        f"{CHANNEL_FILE}:4:34: expected a value <= 1, got 1.5",
    ]


def test_retry_first_above_max(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", """\
        destinations:
          clinic-ehr:
            mllp: {host: ehr.test, port: 6661}
            retry: {first: 30s, max: 16s}
        """)
    assert cfg.problems() == [
        f"{CHANNEL_FILE}:4:20: expected first <= max, got first 30s and max 16s",
    ]


def test_accept_type_shape(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", "accept: {type: [SIU^S12, SIU-S13]}\n")
    assert cfg.problems() == [
        f"{CHANNEL_FILE}:1:26: expected a message type like SIU^S12, or Appointment (FHIR), "
        "got 'SIU-S13'",
    ]


def test_filter_of_the_wrong_type(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", "filter: SCH-25.1 is Booked\n")
    assert cfg.problems() == [
        f"{CHANNEL_FILE}:1:9: expected a mapping or a list, got 'SCH-25.1 is Booked'",
    ]


def test_unknown_filter_key(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", "filter: {field: PV1-2, equal: O}\n")
    assert cfg.problems() == [
        f"{CHANNEL_FILE}:1:24: unknown key 'equal' (expected one of: field, equals, in, "
        "not_in, exists, matches, all, any, not)",
    ]


def test_channel_that_is_not_a_mapping(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", "- steps\n")
    assert cfg.problems() == [f"{CHANNEL_FILE}:1:1: expected a mapping, got a list"]


def test_empty_channel_file(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", "")
    assert cfg.problems() == [f"{CHANNEL_FILE}:1:1: expected a mapping, got nothing"]


def test_unknown_step_lists_known_steps(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", "steps:\n  - mapp: {field: SCH-7.1}\n")
    assert cfg.problems() == [
        f"{CHANNEL_FILE}:2:5: unknown step 'mapp' (expected one of: set, map, wait)",
    ]


def test_two_steps_in_one_item(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", """\
        steps:
          - set: {MSH-5: CLINIC_EHR}
            map: {field: SCH-7.1, table: appointment_types, to: ehr_code}
          - {}
        """)
    assert cfg.problems() == [
        f"{CHANNEL_FILE}:2:5: expected one step per list item (start each with '- '), "
        "got 2 keys: set, map",
        f"{CHANNEL_FILE}:4:5: expected one step per list item (start each with '- '), "
        "got an empty mapping",
    ]


def test_step_arguments_checked_against_the_plugin_schema(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", """\
        steps:
          - map: {field: SCH-7.1, table: appointment_types}
          - set: {MSH-5: [A, B]}
        """)
    assert cfg.problems() == [
        f"{CHANNEL_FILE}:2:10: missing required key 'to'",
        f"{CHANNEL_FILE}:3:18: expected a string, got a list",
    ]


def test_plugin_check_positions_inside_the_arguments(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", """\
        steps:
          - map:
              field: AIP-3.1
              table: providers
              to: ehr_idd
        """)
    assert cfg.problems() == [
        f"{CHANNEL_FILE}:5:11: table 'providers' has no column 'ehr_idd' (columns: ehr_id, name)",
    ]


def test_destination_needs_exactly_one_type(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", """\
        destinations:
          clinic-ehr:
            retry: {attempts: 3}
          both:
            mllp: {host: ehr.test, port: 6661}
            file: {directory: out}
        """)
    assert cfg.problems() == [
        f"{CHANNEL_FILE}:2:3: expected a destination type in 'clinic-ehr': one of mllp, file",
        f"{CHANNEL_FILE}:6:5: expected one destination type per destination, got mllp and file",
    ]


def test_destination_options_checked_against_the_plugin_schema(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", """\
        destinations:
          clinic-ehr:
            mllp: {host: ehr.test, port: 0, timeout: 5s}
        """)
    assert cfg.problems() == [
        f"{CHANNEL_FILE}:3:34: expected a value >= 1, got 0",
        f"{CHANNEL_FILE}:3:37: unknown key 'timeout' (expected one of: host, port, ack_timeout)",
    ]


def test_test_outcome_enum(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", """\
        destinations: {clinic-ehr: {mllp: {host: ehr.test, port: 6661}}}
        tests:
          - {name: dropped, input: samples/siu_s12_new_patient.hl7, outcome: dropped}
        """)
    assert cfg.problems() == [
        f"{CHANNEL_FILE}:3:70: expected one of delivered, filtered, error, got 'dropped'",
    ]


def test_table_row_must_be_a_mapping(cfg: ConfigDir) -> None:
    cfg.table("providers", "DR_ZZTEST: P-0001\nDR_ZZOTHER: {ehr_id: [1, 2]}\n")
    assert cfg.problems() == [
        "transforms/tables/providers.yaml:1:12: expected a row: a mapping of column -> value, "
        "got 'P-0001'",
        "transforms/tables/providers.yaml:2:22: expected a string or a number or true or false "
        "or nothing, got a list",
    ]
