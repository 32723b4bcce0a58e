"""What a compiled step is, what compiling one may use, and the rules steps share: how a YAML
scalar becomes field text, which field paths a step may write, and that HL7 v2 steps work on
HL7 v2 messages only (`hl7_message`, `EDITS_HL7`).

A path a step writes is checked when the configuration is checked, so a step that could
never work (writing MSH-2, a whole segment, a second MSH) is a configuration problem rather
than an error on every message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from engine.config.errors import ConfigProblem
from engine.config.model import EngineConfig, StepSpec, Table
from engine.config.registry import CheckContext, Flow
from engine.pipeline.context import Document, RunContext
from engine.pipeline.documents import kind_of
from engine.pipeline.errors import StepError
from engine.protocol.er7 import Message, PathError, parse_path


class Step(Protocol):
    label: str  # "steps[2] map", used in ERR texts and `engine show`

    def apply(self, doc: Document, run: RunContext) -> Document:
        """Return the changed document (usually the same object, changed in place); raise
        StepError when the step cannot do its work, StepFiltered when there is nothing to
        send. `run` says what the run knows beyond the document (time, appointment state)."""


@dataclass
class CompileContext:
    tables: dict[str, Table]
    transforms_dir: Path
    # python functions already imported, by "module.function" (shared across channels)
    functions: dict[str, Callable[..., Any]] = field(default_factory=dict)
    # IANA zone of HL7 times written without an offset (routes.yaml `timezone`)
    timezone: str = "UTC"

    @classmethod
    def of(cls, config: EngineConfig) -> CompileContext:
        """The context to compile `config`'s channels with."""
        return cls(config.tables, config.transforms_dir, timezone=config.timezone)


# What the HL7 v2 field steps (set, copy, map, remove) take and give.
EDITS_HL7 = Flow(
    frozenset({"hl7v2"}),
    "same",
    "edits HL7 v2 fields",
    {
        "fhir": "add `- convert: fhir_to_siu` before it",
        "json": "HL7 v2 steps go before the convert step that makes the JSON document",
    },
)


def hl7_message(doc: Document, step: str) -> Message:
    """`doc` as the HL7 v2 message an HL7 v2 step edits; StepError for a JSON document."""
    if isinstance(doc, Message):
        return doc
    refusal = EDITS_HL7.refusal(step, kind_of(doc))
    raise StepError(refusal or f"{step} edits HL7 v2 fields")


def label(spec: StepSpec) -> str:
    return f"steps[{spec.index}] {spec.kind}"


def value_text(value: object) -> str:
    """Field text of a YAML scalar: booleans are HL7's Y/N, everything else as str()."""
    if isinstance(value, bool):
        return "Y" if value else "N"
    return str(value)


Access = Literal["read", "write", "remove"]


def _path_problem(text: str, access: Access) -> str | None:
    try:
        path = parse_path(text)
    except PathError as exc:
        return f"expected a field path: {exc}"
    if not path.field:
        if access != "remove":
            return f"expected a field here, like {text}-3; {text} names whole segments"
        if path.segment == "MSH":
            return "the MSH segment cannot be removed"
    elif path.segment == "MSH" and path.field in (1, 2) and access != "read":
        return f"{text} holds the separators and cannot be changed"
    if access == "write" and path.segment == "MSH" and (path.segment_index or 1) > 1:
        return "a message has one MSH segment"
    return None


def check_paths(
    paths: Sequence[tuple[tuple[str | int, ...], str]], ctx: CheckContext, access: Access
) -> list[ConfigProblem]:
    """Each (key path, text) must parse as a field path and allow `access`: reads and writes
    name a field; writes and removals leave MSH-1/MSH-2 alone; writes cannot add a second MSH;
    a removal may name a whole segment other than MSH."""
    problems = []
    for where, text in paths:
        found = _path_problem(text, access)
        if found is not None:
            problems.append(ConfigProblem(ctx.at(where), found))
    return problems
