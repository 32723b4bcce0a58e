"""Channels written as YAML into tmp_path, read by `engine.config.load` with the engine's own
step registry, compiled and run: what an analyst writes is what the pipeline does, and a step
that could never work is refused with its file:line:column."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import ConfigError
from engine.pipeline.channel import ChannelOutcome, compile_channels
from tests.unit.pipeline.support import MULTI, ConfigRoot


def run_yaml(tmp_path: Path, channel: str, text: str = MULTI) -> ChannelOutcome:
    root = ConfigRoot(tmp_path).with_channel(channel)
    config = root.load()
    channels = compile_channels(config.channels, root.context(config))
    return channels["feed"].run(text, "utf-8")


FILTERED = """\
    filter:
      - {field: SCH-25.1, not_in: [Pending, Waitlist]}
      - any:
          - {field: PV1-2, in: [I, O]}
          - {not: {field: PID-8, exists: true}}
      - {field: SCH-9, equals: 30}
      - {field: SCH-1.1, matches: 'APT\\d+'}
    steps:
      - map: {field: SCH-7.1, table: appointment_types, to: ehr_code}
      - map: {field: AIP-3.1, table: providers, to: ehr_id}
      - copy: {from: PID-5, to: NK1-2}
      - set: {MSH-5: CLINIC_EHR, PV1-3: "WARD|7"}
      - remove: [NTE, PID-11]
    destinations:
      clinic-ehr:
        file: {directory: out}
        order_by: SCH-1.1
    """


def test_a_yaml_channel_runs_end_to_end(tmp_path: Path) -> None:
    outcome = run_yaml(tmp_path, FILTERED)
    assert outcome.status == "ok" and outcome.message is not None
    m = outcome.message
    assert m.get_all("AIP-3.1") == ["EHR-DR-0001", "EHR-DR-0002", "EHR-DR-0003"]
    assert (m.get("SCH-7.1"), m.get("MSH-5"), m.get("PV1-3"), m.get("NK1-2")) == (
        "FOLLOWUP_30", "CLINIC_EHR", "WARD|7", "Zzyzx^Quinn"
    )
    assert b"|WARD\\F\\7" in outcome.output
    assert b"\rNK1||Zzyzx^Quinn\r" in outcome.output  # the name's components, not escaped
    assert "NTE" not in m.segment_names() and m.get("PID-11") == ""
    assert [p.lane for p in outcome.payloads] == ["APT9001"]


def test_yaml_any_and_not(tmp_path: Path) -> None:
    # PV1-2 outside [I, O] and PID-8 present: the `any` is false.
    text = MULTI.replace("PV1|1|O", "PV1|1|E", 1)
    assert run_yaml(tmp_path, FILTERED, text).status == "filtered"
    # ... unless PID-8 is absent, which the `not exists` accepts.
    text = text.replace("||19700101|X|", "||19700101||", 1)
    assert run_yaml(tmp_path, FILTERED, text).status == "ok"


def test_yaml_filter_values_are_compared_as_written(tmp_path: Path) -> None:
    # `equals: 30` is the text "30": a field holding 030 does not pass.
    text = MULTI.replace("|30|min", "|030|min", 1)
    assert run_yaml(tmp_path, FILTERED, text).status == "filtered"


def test_steps_that_could_never_work_are_refused_where_they_are_written(tmp_path: Path) -> None:
    root = ConfigRoot(tmp_path).with_channel("""\
        steps:
          - set: {MSH-5: CLINIC_EHR, MSH-2: "^~\\\\&"}
          - remove: [NTE, MSH]
          - copy: {from: PID, to: NK1-2}
          - python: nowhere.fix
        destinations:
          clinic-ehr:
            file: {directory: out}
        """)
    with pytest.raises(ConfigError) as info:
        root.load()
    assert [
        f"{p.pos.file.name}:{p.pos.line}:{p.pos.column}: {p.message}" for p in info.value.problems
    ] == [
        "feed.yaml:2:37: MSH-2 holds the separators and cannot be changed",
        "feed.yaml:3:19: the MSH segment cannot be removed",
        "feed.yaml:4:18: expected a field here, like PID-3; PID names whole segments",
        "feed.yaml:5:13: transforms/nowhere.py does not exist",
    ]


def test_unquoted_numbers_in_set_are_refused_not_rewritten(tmp_path: Path) -> None:
    # YAML reads 060 as 60 and 1.50 as 1.5: the analyst must quote what the field gets.
    root = ConfigRoot(tmp_path).with_channel(
        """\
    steps:
      - set: {SCH-9: 060, PV1-3: "1.50"}
      - map: {field: PV1-2, table: providers, to: ehr_id, missing: default, default: 7}
    destinations:
      clinic-ehr:
        file: {directory: out}
    """
    )
    with pytest.raises(ConfigError) as caught:
        root.load()
    problems = [p.message for p in caught.value.problems]
    assert len(problems) == 2
    assert all(m.startswith("expected text in quotes (e.g. '060')") for m in problems)
    assert [p.pos.column for p in caught.value.problems] == [18, 82]
