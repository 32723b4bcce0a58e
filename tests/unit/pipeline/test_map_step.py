"""The `map` step: every occurrence translated through a mapping table, the three `missing`
policies, `into`, empty values, and what its error tells the sender (never the value)."""

from __future__ import annotations

from typing import Any

import pytest

from engine.config.model import StepSpec
from engine.pipeline.context import RunContext
from engine.pipeline.errors import TABLE_VALUE_NOT_FOUND, StepError
from engine.pipeline.steps import REGISTRY
from engine.pipeline.steps.base import CompileContext
from engine.pipeline.steps.map_table import compile_step
from engine.protocol.er7 import Message
from tests.unit.pipeline.support import (
    MULTI,
    POS,
    REPO,
    TABLES,
    check_context,
    described,
    message,
    run,
    sample,
)

PROVIDERS = {"field": "AIP-3.1", "table": "providers", "to": "ehr_id"}
TYPES = {"field": "SCH-7.1", "table": "appointment_types", "to": "ehr_code"}
UNKNOWN = "P9999"  # a provider id in no table


def mapped(args: dict[str, Any], text: str = MULTI) -> Message:
    step = compile_step(StepSpec("map", args, POS, 2), CompileContext(dict(TABLES), REPO))
    out = step.apply(message(text), RunContext())
    assert isinstance(out, Message)
    return out


def with_unknown(text: str = MULTI) -> str:
    return text.replace("P1003^Okafor", f"{UNKNOWN}^Okafor")


def test_every_occurrence_is_translated() -> None:
    m = mapped(PROVIDERS)
    # Both AIP segments, both repetitions of the second one's AIP-3.
    assert m.get_all("AIP-3.1") == ["EHR-DR-0001", "EHR-DR-0002", "EHR-DR-0003"]
    assert m.get_all("AIP-3.2") == ["Rivera", "Chen", "Okafor"]
    assert m.get("AIP[2]") == "AIP|2|A|EHR-DR-0002^Chen^Alex~EHR-DR-0003^Okafor^Jordan|AT"


def test_a_leaf_in_sch_is_translated_and_the_rest_kept() -> None:
    m = mapped(TYPES)
    assert m.get("SCH-7") == "FOLLOWUP_30^Follow-up^LOCAL"


def test_missing_error_fails_naming_field_and_table_but_not_the_value() -> None:
    with pytest.raises(StepError) as info:
        mapped(PROVIDERS, with_unknown())
    error = info.value
    assert error.code == TABLE_VALUE_NOT_FOUND == 103
    assert error.field == "AIP-3.1"
    assert error.text == "steps[2] map: table 'providers' has no entry for the value of AIP-3.1"
    assert UNKNOWN not in error.text
    assert UNKNOWN in error.detail  # kept for the store only


def test_missing_error_is_the_default() -> None:
    with pytest.raises(StepError):
        mapped({**PROVIDERS}, with_unknown())


def test_missing_keep_leaves_the_value_and_maps_the_others() -> None:
    m = mapped({**PROVIDERS, "missing": "keep"}, with_unknown())
    assert m.get_all("AIP-3.1") == ["EHR-DR-0001", "EHR-DR-0002", UNKNOWN]


def test_missing_default_writes_the_default() -> None:
    m = mapped({**PROVIDERS, "missing": "default", "default": "EHR-DR-UNASSIGNED"}, with_unknown())
    assert m.get_all("AIP-3.1") == ["EHR-DR-0001", "EHR-DR-0002", "EHR-DR-UNASSIGNED"]


def test_a_numeric_default_is_written_as_text() -> None:
    m = mapped({**TYPES, "field": "SCH-6.1", "missing": "default", "default": 0},
               MULTI.replace("||||NEW|", "||||OTHER|"))
    assert m.get("SCH-6.1") == "0"


def test_into_writes_the_translation_elsewhere_and_keeps_the_source() -> None:
    m = mapped({**TYPES, "into": "ZAP-2"})
    assert (m.get("ZAP-2"), m.get("SCH-7.1")) == ("FOLLOWUP_30", "follow_up")


def test_into_with_keep_writes_nothing_for_an_unknown_value() -> None:
    m = mapped({**PROVIDERS, "field": "AIP[2]-3[2].1", "into": "ZAP-2", "missing": "keep"},
               with_unknown())
    assert "ZAP" not in m.segment_names()


def test_into_with_error_fails_for_an_unknown_value() -> None:
    with pytest.raises(StepError) as info:
        mapped({**PROVIDERS, "field": "AIP[2]-3[2].1", "into": "ZAP-2"}, with_unknown())
    assert info.value.field == "AIP[2]-3[2].1"


@pytest.mark.parametrize("missing", ["error", "keep", "default"])
def test_an_empty_value_is_left_alone(missing: str) -> None:
    args: dict[str, Any] = {**PROVIDERS, "missing": missing}
    if missing == "default":
        args["default"] = "EHR-DR-UNASSIGNED"
    text = MULTI.replace("AIP|1|A|P1001^Rivera^Sam|AT", "AIP|1|A|^Rivera^Sam|AT")
    m = mapped(args, text)
    assert m.get("AIP-3") == "^Rivera^Sam"
    assert m.get_all("AIP-3.1") == ["EHR-DR-0002", "EHR-DR-0003"]


def test_table_values_are_escaped_and_become_text_like_set_writes_them() -> None:
    text = MULTI.replace("follow_up^", "odd_code^")
    m = mapped(TYPES, text)
    assert m.get("SCH-7") == "A\\S\\B\\F\\C^Follow-up^LOCAL"
    assert m.get("SCH-7.1") == "A^B|C"
    m = mapped({**TYPES, "to": "minutes"})
    assert m.get("SCH-7.1") == "30"
    m = mapped({**TYPES, "to": "insured"})
    assert m.get("SCH-7.1") == "N"  # a boolean column gives HL7's Y/N, as `set` writes


def test_a_row_without_the_column_counts_as_missing() -> None:
    text = MULTI.replace("follow_up^", "odd_code^")
    with pytest.raises(StepError):
        mapped({**TYPES, "to": "minutes"}, text)  # odd_code has minutes: null


def test_a_map_error_in_a_channel_names_step_field_and_code() -> None:
    outcome = run(("set", {"MSH-5": "X"}), ("map", PROVIDERS), text=with_unknown())
    assert outcome.status == "error"
    assert (outcome.error_step, outcome.error_field, outcome.error_code) == (
        "steps[2] map", "AIP-3.1", 103
    )
    assert UNKNOWN not in outcome.error
    assert UNKNOWN in outcome.error_detail
    assert outcome.payloads == []


def test_the_repository_sample_maps_its_provider_and_type() -> None:
    outcome = run(("map", TYPES), ("map", PROVIDERS), text=sample("siu_s12_new_patient.hl7").text)
    assert outcome.status == "ok" and outcome.message is not None
    assert (outcome.message.get("SCH-7.1"), outcome.message.get("AIP-3.1")) == (
        "NP_EVAL_60", "EHR-DR-0001"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({**PROVIDERS, "table": "doctors"},
         ["table: table 'doctors' does not exist in transforms/tables/ "
          "(tables: appointment_types, providers)"]),
        ({**PROVIDERS, "to": "npi"},
         ["to: table 'providers' has no column 'npi' (columns: ehr_id)"]),
        ({**PROVIDERS, "missing": "default"},
         ["missing: expected a 'default' value with missing: default"]),
        ({**PROVIDERS, "default": "X"}, ["default: 'default' is only used with missing: default"]),
        ({**PROVIDERS, "field": "AIP-3..1"},
         ["field: expected a field path: expected a component number after '.' in 'AIP-3..1'"]),
    ],
)
def test_configuration_problems(args: dict[str, Any], expected: list[str]) -> None:
    assert described(REGISTRY["map"].check(args, check_context())) == expected


def test_a_valid_map_passes_the_check() -> None:
    args = {**PROVIDERS, "into": "ZAP-1", "missing": "default", "default": "NONE"}
    assert REGISTRY["map"].check(args, check_context()) == []
