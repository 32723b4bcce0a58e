"""The `set`, `copy` and `remove` steps: what they write into a message (as ER7, escapes
included) and which paths their configuration check refuses."""

from __future__ import annotations

from typing import Any

import pytest

from engine.config.model import StepSpec
from engine.pipeline.context import RunContext
from engine.pipeline.errors import StepError
from engine.pipeline.steps import REGISTRY, compile_step
from engine.pipeline.steps.base import CompileContext
from engine.protocol.er7 import Message
from tests.unit.pipeline.support import (
    MULTI,
    POS,
    SAMPLES,
    TABLES,
    check_context,
    described,
    message,
    run,
    sample,
)


def apply(kind: str, args: Any, m: Message) -> Message:
    step = compile_step(StepSpec(kind, args, POS, 1), CompileContext(dict(TABLES), SAMPLES))
    out = step.apply(m, RunContext())
    assert isinstance(out, Message)
    return out


def segments(m: Message) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for seg in m.to_er7().split("\r")[:-1]:
        out.setdefault(seg[:3], []).append(seg)
    return out


# ----------------------------------------------------------------------------- set


def test_set_writes_msh5_and_leaves_every_other_segment_as_received() -> None:
    before = segments(message())
    m = apply("set", {"MSH-5": "CLINIC_EHR"}, message())
    after = segments(m)
    assert m.get("MSH-5") == "CLINIC_EHR"
    assert after["MSH"] == [before["MSH"][0].replace("|ENGINE|", "|CLINIC_EHR|", 1)]
    assert {k: v for k, v in after.items() if k != "MSH"} == {
        k: v for k, v in before.items() if k != "MSH"
    }


def test_set_escapes_every_separator_in_the_value() -> None:
    value = "A|B^C~D\\E&F"
    m = apply("set", {"PV1-3": value}, message())
    assert segments(m)["PV1"] == ["PV1|1|O|A\\F\\B\\S\\C\\R\\D\\E\\E\\T\\F"]
    assert m.get("PV1-3") == value
    # The escaped value is one leaf: nothing spilled into components or repetitions.
    assert (m.get("PV1-3.2"), m.get("PV1-3[2]"), m.get("PV1-4")) == ("", "", "")


def test_set_writes_booleans_as_y_n_and_numbers_as_text() -> None:
    m = apply("set", {"PID-30": True, "PID-16": False, "SCH-9": 45, "SCH-10": 1.5}, message())
    assert (m.get("PID-30"), m.get("PID-16"), m.get("SCH-9"), m.get("SCH-10")) == (
        "Y", "N", "45", "1.5"
    )


def test_set_replaces_a_whole_field_but_only_the_component_it_names() -> None:
    m = apply("set", {"PID-3": "NEW1"}, message())
    assert m.get_all("PID-3.1") == ["NEW1"]  # both repetitions replaced
    m = apply("set", {"PID-5.2": "Robin"}, message())
    assert m.get("PID-5") == "Zzyzx^Robin"


def test_set_pads_short_segments_and_appends_missing_ones() -> None:
    m = apply("set", {"PV1-19.2": "V1", "ZAP[2]-1": "x"}, message())
    assert segments(m)["PV1"] == ["PV1|1|O|||||||||||||||||^V1"]
    assert segments(m)["ZAP"] == ["ZAP", "ZAP|x"]


# ---------------------------------------------------------------------------- copy


def test_copy_a_leaf() -> None:
    m = apply("copy", {"from": "PID-3.1", "to": "PV1-19"}, message())
    assert m.get("PV1-19") == "MRN900"


def test_copy_keeps_a_composite_as_it_was() -> None:
    m = apply("copy", {"from": "PID-5", "to": "NK1-2"}, message())
    assert segments(m)["NK1"] == ["NK1||Zzyzx^Quinn"]
    assert m.get("NK1-2.2") == "Quinn"


def test_copy_takes_the_first_repetition_of_a_repeating_field() -> None:
    m = apply("copy", {"from": "PID-3", "to": "PV1-19"}, message())
    assert m.get("PV1-19") == "MRN900^^^MAIN_HOSP^MR"
    assert m.get("PV1-19.4") == "MAIN_HOSP"
    m = apply("copy", {"from": "PID-3[2]", "to": "PV1-19"}, message())
    assert m.get("PV1-19.1") == "ALT900"


def test_copy_keeps_subcomponents_and_escapes() -> None:
    m = Message.parse(sample("siu_s12_escapes.hl7").text)
    aip3 = m.get("AIP-3")
    nte3 = m.get("NTE").split("|")[3]
    m = apply("copy", {"from": "AIP-3", "to": "ZPR-1"}, m)
    m = apply("copy", {"from": "AIP-3.9", "to": "ZPR-2.1"}, m)
    m = apply("copy", {"from": "NTE-3", "to": "ZPR-3"}, m)
    assert segments(m)["ZPR"] == [f"ZPR|{aip3}|LOCAL&2.25.4711&ISO|{nte3}"]
    assert m.get("ZPR-3") == m.get("NTE-3")


def test_copy_of_an_escaped_separator_stays_one_value() -> None:
    text = MULTI.replace("PV1|1|O", "PV1|1|O|A\\S\\B\\T\\C")
    m = apply("copy", {"from": "PV1-3", "to": "PV1-4"}, message(text))
    assert segments(m)["PV1"] == ["PV1|1|O|A\\S\\B\\T\\C|A\\S\\B\\T\\C"]


def test_copy_replaces_the_whole_target() -> None:
    text = MULTI.replace("PV1|1|O", "PV1|1|O|||||||||||||||||OLD^X^Y^Z~R2")
    m = apply("copy", {"from": "PID-5", "to": "PV1-19"}, message(text))
    assert segments(m)["PV1"] == ["PV1|1|O|||||||||||||||||Zzyzx^Quinn"]


def test_copy_of_an_empty_field_empties_the_target() -> None:
    m = apply("copy", {"from": "PID-2", "to": "PV1-2"}, message())
    assert m.get("PV1-2") == ""


def test_copy_of_a_composite_into_a_component_fails_naming_the_source() -> None:
    with pytest.raises(StepError) as info:
        apply("copy", {"from": "PID-5", "to": "NK1-2.1"}, message())
    assert info.value.field == "PID-5"
    assert "Zzyzx" not in info.value.text
    outcome = run(("copy", {"from": "PID-5", "to": "NK1-2.1"}))
    assert (outcome.status, outcome.error_step, outcome.error_field) == (
        "error", "steps[1] copy", "PID-5"
    )


# -------------------------------------------------------------------------- remove


def test_remove_clears_a_field_and_keeps_later_positions() -> None:
    m = apply("remove", ["PID-11"], message())
    assert m.get("PID-11") == ""
    assert (m.get("PID-13"), m.get("PID-30")) == ("555-0100", "N")


def test_remove_clears_a_component_in_every_repetition() -> None:
    m = apply("remove", "PID-3.4", message())
    assert m.get_all("PID-3.1") == ["MRN900", "ALT900"]
    assert m.get_all("PID-3.4") == []
    assert m.get_all("PID-3.5") == ["MR", "PI"]


def test_remove_drops_every_segment_of_a_name() -> None:
    m = apply("remove", ["NTE", "PID-13"], message())
    assert "NTE" not in m.segment_names()
    assert m.segment_names() == ["MSH", "SCH", "PID", "PV1", "AIP", "AIP"]
    assert m.get("PID-13") == ""


def test_remove_of_absent_things_changes_nothing() -> None:
    m = apply("remove", ["ZZZ", "PV1-40", "PID-2"], message())
    assert m.to_er7() == MULTI


# ------------------------------------------------------------------ config checks


@pytest.mark.parametrize(
    ("kind", "args", "expected"),
    [
        ("set", {"MSH-2": "x"}, ["MSH-2: MSH-2 holds the separators and cannot be changed"]),
        ("set", {"MSH-1": "x"}, ["MSH-1: MSH-1 holds the separators and cannot be changed"]),
        ("set", {"PID": "x"}, ["PID: expected a field here, like PID-3; PID names whole segments"]),
        ("set", {"MSH[2]-3": "x"}, ["MSH[2]-3: a message has one MSH segment"]),
        ("set", {"PID-x": "y", "MSH-5": "ok"}, ["PID-x: expected a field path: expected a field "
                                                "number after '-' in 'PID-x'"]),
        ("copy", {"from": "PID", "to": "PV1-3"},
         ["from: expected a field here, like PID-3; PID names whole segments"]),
        ("copy", {"from": "MSH-2", "to": "MSH-1"},
         ["to: MSH-1 holds the separators and cannot be changed"]),
        ("remove", ["NTE", "MSH"], ["1: the MSH segment cannot be removed"]),
        ("remove", "MSH-2", ["(args): MSH-2 holds the separators and cannot be changed"]),
        ("map", {"field": "MSH-2", "table": "providers", "to": "ehr_id"},
         ["field: MSH-2 holds the separators and cannot be changed"]),
        ("map", {"field": "AIP-3.1", "table": "providers", "to": "ehr_id", "into": "ZPR"},
         ["into: expected a field here, like ZPR-3; ZPR names whole segments"]),
    ],
)
def test_paths_a_step_cannot_write_are_configuration_problems(
    kind: str, args: Any, expected: list[str]
) -> None:
    assert described(REGISTRY[kind].check(args, check_context())) == expected


@pytest.mark.parametrize(
    ("kind", "args"),
    [
        ("set", {"MSH-5": "x", "PID-3[2].4.1": "y", "ZAP[3]-1": "z"}),
        ("copy", {"from": "MSH-2", "to": "ZAP-1"}),
        ("copy", {"from": "PID-3[2].1", "to": "PV1-19.1.2"}),
        ("remove", ["NTE", "PID-11", "MSH-5", "AIP[2]-3[2].1"]),
        ("map", {"field": "AIP-3.1", "table": "providers", "to": "ehr_id", "into": "ZPR-1"}),
    ],
)
def test_writable_paths_pass_the_check(kind: str, args: Any) -> None:
    assert REGISTRY[kind].check(args, check_context()) == []
