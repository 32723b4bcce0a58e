"""What kind of document a channel holds at each step, walked statically for `engine check`.

The walk starts from `accept`: when every type is an HL7 v2 type (`SIU^S12`) the channel
starts with an HL7 v2 message, when every type is a FHIR resource type (`Appointment`) with a
FHIR resource; mixed or no types leave it unknown, and the steps check at run time. Each
step's `Flow` (from the step registry) says what it takes and what it leaves. Reported at the
node's file:line:column:

- a step handed a kind it does not take (an HL7 v2 step after `convert: siu_to_fhir`,
  `convert: fhir_to_siu` on an SIU feed);
- a filter on a channel that accepts only FHIR resources (filters read HL7 v2 fields);
- an `order_by` that reads the other kind than the channel sends (a field path on JSON, an
  element path on HL7 v2), which would put every payload in one lane.

The rule kept: only a kind known for certain is judged. An unknown kind (mixed accept, after
a `python` step or a custom converter) is never reported, because a false alarm would block
a configuration that works.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from engine.config.errors import ConfigProblem
from engine.config.model import Condition, Pos, StepSpec
from engine.config.registry import KIND_TEXT, DocumentKind, Plugin
from engine.config.schema import FHIR_TYPES

# Where an order_by of the wrong kind should point instead, per output kind.
_LANE_EXAMPLE: dict[DocumentKind, str] = {
    "hl7v2": "a field path like SCH-1.1",
    "fhir": "an element path like identifier.0.value",
    "json": "an element path like data.appointment_id",
}


def input_kind(accept_types: Iterable[str]) -> DocumentKind | None:
    """The kind every accepted type arrives as, or None (mixed, or every type accepted)."""
    kinds = {"fhir" if t in FHIR_TYPES else "hl7v2" for t in accept_types}
    if len(kinds) != 1:
        return None
    return "fhir" if kinds == {"fhir"} else "hl7v2"


def check(
    accept_types: Iterable[str],
    condition: Condition | None,
    steps: Iterable[StepSpec],
    registry: Mapping[str, Plugin],
    order_by: Iterable[tuple[str, Pos]] = (),
) -> list[ConfigProblem]:
    """Every problem of the walk (see the module docstring); `order_by` is each
    destination's (path, position)."""
    problems: list[ConfigProblem] = []
    held = input_kind(accept_types)
    if held == "fhir" and condition is not None:
        problems.append(ConfigProblem(
            condition.pos,
            "filters read HL7 v2 fields, and this channel accepts only FHIR resources "
            f"({', '.join(FHIR_TYPES)}): remove the filter, or decide in a python step "
            "that raises StepFiltered",
        ))
    for spec in steps:
        plugin = registry.get(spec.kind)
        if plugin is None:
            held = None
            continue
        flow = plugin.flow_of(spec.args)
        if held is not None:
            refusal = flow.refusal(f"steps[{spec.index}] {spec.kind}", held)
            if refusal is not None:
                problems.append(ConfigProblem(spec.pos, refusal))
        held = flow.after(held)
    if held is not None:
        problems.extend(_lane_problems(held, order_by))
    return problems


def _lane_problems(
    sent: DocumentKind, order_by: Iterable[tuple[str, Pos]]
) -> list[ConfigProblem]:
    from engine.protocol.er7 import PathError, parse_path

    problems = []
    for text, pos in order_by:
        try:
            parse_path(text)
            reads: DocumentKind = "hl7v2"
        except PathError:
            reads = "json"
        if (reads == "hl7v2") != (sent == "hl7v2"):
            what = "an HL7 v2 field" if reads == "hl7v2" else "a JSON element"
            problems.append(ConfigProblem(
                pos,
                f"order_by reads {what}, but the channel sends {KIND_TEXT[sent]}: every "
                f"payload would share one lane; use {_LANE_EXAMPLE[sent]}",
            ))
    return problems
