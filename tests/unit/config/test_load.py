"""A valid configuration loads into the expected objects; problems from every file come back
together in one ConfigError."""

from __future__ import annotations

from pathlib import Path

from engine.config import load
from engine.config.model import (
    ChannelTest,
    Condition,
    DestinationConfig,
    ListenerConfig,
    MllpListenerConfig,
    Pos,
    RetryPolicy,
    StepSpec,
    Table,
)
from tests.unit.config.support import ConfigDir


def test_valid_configuration_loads_into_typed_objects(cfg: ConfigDir) -> None:
    config = cfg.load()
    root = cfg.root
    routes = root / "routes.yaml"
    chan = root / "channels" / "siu-to-clinic-ehr.yaml"

    assert config.root == root
    assert config.routes_file == routes
    assert config.store == f"sqlite:{root / 'data' / 'engine.db'}"
    assert config.transforms_dir == root / "transforms"
    assert config.listeners == {
        "epic-siu": ListenerConfig(
            name="epic-siu",
            mllp=MllpListenerConfig(port=2575, max_message_bytes=1024 * 1024, idle_timeout=300.0),
            pos=Pos(routes, 3, 3),
            ack="delivered",
            ack_timeout=45.0,
        )
    }
    assert config.routes == {"epic-siu": ("siu-to-clinic-ehr",)}

    channel = config.channels["siu-to-clinic-ehr"]
    assert (channel.name, channel.file, channel.pos) == ("siu-to-clinic-ehr", chan, Pos(chan, 1, 1))
    assert channel.description == "Synthetic SIU feed to the clinic EHR."
    assert channel.accept_types == ("SIU^S12", "SIU^S13")
    assert channel.dedupe_window == 12 * 3600.0
    assert channel.filter == Condition(
        "all",
        Pos(chan, 4, 3),
        children=(
            Condition("not_in", Pos(chan, 4, 5), field="SCH-25.1", value=("Pending", "Waitlist")),
            Condition(
                "any",
                Pos(chan, 5, 5),
                children=(
                    Condition("equals", Pos(chan, 5, 11), field="PV1-2", value="O"),
                    Condition(
                        "not",
                        Pos(chan, 5, 38),
                        children=(
                            Condition("exists", Pos(chan, 5, 44), field="PID-8", value=True),
                        ),
                    ),
                ),
            ),
        ),
    )
    assert channel.steps == (
        StepSpec(
            "map",
            {"field": "SCH-7.1", "table": "appointment_types", "to": "ehr_code"},
            Pos(chan, 7, 5),
            1,
        ),
        StepSpec("set", {"MSH-5": "CLINIC_EHR"}, Pos(chan, 8, 5), 2),
    )
    assert channel.destinations == (
        DestinationConfig(
            name="clinic-ehr",
            channel="siu-to-clinic-ehr",
            kind="mllp",
            options={"host": "127.0.0.1", "port": 6661, "ack_timeout": 30.0},
            pos=Pos(chan, 10, 3),
            retry=RetryPolicy(attempts=3, first=0.5, max=8.0),
            order_by="SCH-1.1",
        ),
    )
    assert channel.tests == (
        ChannelTest(
            name="new patient consult gets the EHR code",
            input=root / "samples" / "siu_s12_new_patient.hl7",
            pos=Pos(chan, 16, 5),
            expect={"clinic-ehr": {"SCH-7.1": "NP_EVAL_60"}},
            outcome="delivered",
        ),
    )
    assert config.tables["appointment_types"] == Table(
        name="appointment_types",
        file=root / "transforms" / "tables" / "appointment_types.yaml",
        rows={
            "new_patient_consult": {"ehr_code": "NP_EVAL_60", "duration_minutes": 60},
            "follow_up": {"ehr_code": "FOLLOWUP_30", "duration_minutes": 30},
        },
        columns=frozenset({"ehr_code", "duration_minutes"}),
    )
    assert config.tables["providers"].columns == frozenset({"ehr_id", "name"})


def test_defaults_apply_when_optional_keys_are_absent(cfg: ConfigDir) -> None:
    cfg.routes("""\
        listeners:
          epic-siu: {mllp: {port: 2575}}
        routes:
          epic-siu: [minimal]
        """)
    cfg.channel("siu-to-clinic-ehr", "destinations: {other: {file: {directory: out}}}\n")
    cfg.channel("minimal", "destinations: {clinic-ehr: {mllp: {host: ehr.test, port: 6661}}}\n")
    config = cfg.load()
    assert config.store == f"sqlite:{cfg.root / 'data' / 'engine.db'}"
    listener = config.listeners["epic-siu"]
    assert listener.mllp == MllpListenerConfig(port=2575)
    assert (listener.ack, listener.ack_timeout) == ("processed", 30.0)
    channel = config.channels["minimal"]
    assert channel.accept_types == ()
    assert channel.filter is None
    assert channel.steps == ()
    assert channel.tests == ()
    assert channel.dedupe_window == 86400.0
    assert channel.destinations[0].retry == RetryPolicy()
    assert channel.destinations[0].order_by is None
    other = config.channels["siu-to-clinic-ehr"].destinations[0]
    assert other.options == {"directory": str(cfg.root / "out")}


def test_single_accept_type_and_single_filter_condition(cfg: ConfigDir) -> None:
    chan = cfg.channel("siu-to-clinic-ehr", """\
        accept: {type: SIU^S15}
        filter: {field: SCH-25.1, matches: '^(Booked|Pending)$'}
        destinations: {clinic-ehr: {mllp: {host: ehr.test, port: 6661}}}
        """)
    channel = cfg.load().channels["siu-to-clinic-ehr"]
    assert channel.accept_types == ("SIU^S15",)
    assert channel.filter == Condition(
        "matches", Pos(chan, 2, 9), field="SCH-25.1", value="^(Booked|Pending)$"
    )


def test_problems_in_several_files_are_all_reported(cfg: ConfigDir) -> None:
    cfg.routes(
        cfg.routes_file.read_text().replace("ack: delivered", "ack: procesed")
    )
    cfg.channel("appointment-events", """\
        destinations:
          events-file:
            file: {directory: out}
            retries: 3
        """)
    cfg.table("providers", "DR_ZZTEST: [P-0001]\n")
    cfg.write("channels/broken.yaml", "steps: [\n")
    assert cfg.problems() == [
        "channels/appointment-events.yaml:4:5: unknown key 'retries' "
        "(expected one of: mllp, file, retry, order_by)",
        "channels/broken.yaml:2:1: invalid YAML: expected the node content, "
        "but found '<stream end>' (while parsing a flow node)",
        "routes.yaml:5:10: expected one of commit, processed, delivered, got 'procesed'",
        "transforms/tables/providers.yaml:1:12: expected a row: a mapping of column -> value, "
        "got a list",
    ]


def test_missing_routes_file_is_a_problem(tmp_path: Path) -> None:
    problems = ConfigDir(tmp_path).problems()
    assert problems == ["routes.yaml:1:1: cannot read file: No such file or directory"]


def test_real_registries_check_the_baseline(tmp_path: Path) -> None:
    """With no registries given, load uses the engine's own steps and destinations."""
    # The baseline uses only what the engine must have: map, set and the mllp destination.
    cfg = ConfigDir(tmp_path).baseline()
    config = load(cfg.routes_file)
    channel = config.channels["siu-to-clinic-ehr"]
    assert channel.destinations[0].options["ack_timeout"] == 30.0
    assert [step.kind for step in channel.steps] == ["map", "set"]


def test_table_keys_become_strings_and_columns_are_the_union(cfg: ConfigDir) -> None:
    cfg.table("locations", """\
        1: {name: Room One}
        02: {name: Room Two, floor: 2}
        true: {wing: east}
        """)
    cfg.table("empty", "# no rows yet\n")
    tables = cfg.load().tables
    assert tables["locations"].rows == {
        "1": {"name": "Room One"},
        "02": {"name": "Room Two", "floor": 2},
        "true": {"wing": "east"},
    }
    assert tables["locations"].columns == frozenset({"name", "floor", "wing"})
    assert tables["empty"].rows == {}
    assert tables["empty"].columns == frozenset()
