"""Channel filters: each field test, the combinators and their nesting, non-text values and
absent fields, on the synthetic multi-segment message of the support kit."""

from __future__ import annotations

from typing import Any

import pytest

from engine.config.model import Condition
from engine.pipeline.filters import compile_condition
from tests.unit.pipeline.support import MULTI, POS, message


def check(op: str, field: str, value: Any) -> Condition:
    return Condition(op, POS, field=field, value=value)


def holds(cond: Condition, text: str = MULTI) -> bool:
    return compile_condition(cond)(message(text))


def test_the_sample_has_the_fields_these_tests_rely_on() -> None:
    m = message()
    assert (m.get("SCH-25.1"), m.get("PV1-2"), m.get("SCH-9"), m.get("PID-30")) == (
        "", "O", "30", "N"
    )
    assert m.get_all("AIP-3.1") == ["P1001", "P1002", "P1003"]


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        (check("equals", "PV1-2", "O"), True),
        (check("equals", "PV1-2", "o"), False),  # text comparison: case matters
        (check("equals", "SCH-7.1", "follow_up"), True),
        (check("equals", "SCH-7", "follow_up"), False),  # the whole composite is compared
        (check("in", "PV1-2", ("I", "O")), True),
        (check("in", "PV1-2", ("I", "E")), False),
        (check("not_in", "PV1-2", ("I", "E")), True),
        (check("not_in", "PV1-2", ("O",)), False),
        (check("exists", "PID-8", True), True),
        (check("exists", "PID-8", False), False),
        (check("exists", "PID-2", True), False),  # present but empty is not there (HL7)
        (check("exists", "PID-2", False), True),
        (check("matches", "SCH-7.1", "low"), True),  # search: anywhere in the value
        (check("matches", "SCH-7.1", "^low"), False),
        (check("matches", "SCH-7.1", "^follow_up$"), True),
        (check("matches", "SCH-1.1", r"^APT\d{4}$"), True),
        (check("matches", "SCH-1.1", r"^APT\d{3}$"), False),
    ],
)
def test_field_tests(cond: Condition, expected: bool) -> None:
    assert holds(cond) is expected


def test_a_field_test_reads_the_first_occurrence_only() -> None:
    assert holds(check("equals", "AIP-3.1", "P1001"))
    assert not holds(check("equals", "AIP-3.1", "P1002"))  # second AIP segment
    assert holds(check("equals", "AIP[2]-3[2].1", "P1003"))
    assert holds(check("equals", "PID-3.1", "MRN900"))
    assert not holds(check("in", "PID-3.1", ("ALT900",)))  # second repetition


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        (check("equals", "ZZZ-1", "x"), False),
        (check("equals", "PV1-45", "x"), False),
        (check("equals", "PV1-45", ""), True),  # absent reads as empty text
        (check("in", "ZZZ-1", ("x", "y")), False),
        (check("not_in", "ZZZ-1", ("x", "y")), True),
        (check("exists", "ZZZ-1", True), False),
        (check("exists", "ZZZ-1", False), True),
        (check("exists", "PV1-2.2", True), False),  # component beyond the value
        (check("matches", "ZZZ-1", "."), False),
        (check("matches", "ZZZ-1", "^$"), True),
    ],
)
def test_an_absent_field_reads_as_empty(cond: Condition, expected: bool) -> None:
    assert holds(cond) is expected


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        (check("equals", "SCH-9", 30), True),
        (check("equals", "SCH-9", 60), False),
        (check("in", "SCH-9", (60, 30)), True),
        (check("not_in", "SCH-9", (30,)), False),
        (check("equals", "PID-30", False), True),  # booleans are HL7's Y/N
        (check("equals", "PID-30", True), False),
        (check("in", "PID-30", (True,)), False),
        (check("not_in", "PID-30", (True,)), True),
    ],
)
def test_numbers_and_booleans_compare_as_field_text(cond: Condition, expected: bool) -> None:
    assert holds(cond) is expected


def combine(op: str, *children: Condition) -> Condition:
    return Condition(op, POS, children=children)


YES = check("equals", "PV1-2", "O")
NO = check("equals", "PV1-2", "I")


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        (combine("all", YES, YES), True),
        (combine("all", YES, NO), False),
        (combine("any", NO, YES), True),
        (combine("any", NO, NO), False),
        (combine("not", YES), False),
        (combine("not", NO), True),
        (combine("not", combine("not", YES)), True),
        # all[ any[no, not(no)], not(any[no, no]) ] = all[True, True]
        (
            combine(
                "all",
                combine("any", NO, combine("not", NO)),
                combine("not", combine("any", NO, NO)),
            ),
            True,
        ),
        # any[ all[yes, no], not(all[yes, yes]) ] = any[False, False]
        (combine("any", combine("all", YES, NO), combine("not", combine("all", YES, YES))), False),
    ],
)
def test_combinators_nest(cond: Condition, expected: bool) -> None:
    assert holds(cond) is expected


def test_a_field_test_without_a_field_is_refused_when_compiled() -> None:
    with pytest.raises(ValueError, match="needs a field"):
        compile_condition(Condition("equals", POS, value="x"))


def test_an_unknown_test_is_refused_when_compiled() -> None:
    with pytest.raises(ValueError, match="unknown condition 'between'"):
        compile_condition(check("between", "PV1-2", (1, 2)))
