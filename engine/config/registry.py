"""The contract between the configuration checker and the pluggable parts.

A channel step (`set`, `map`, ...) or a destination type (`mllp`, `file`, ...) registers a
`Plugin`: the JSON Schema of its arguments, semantic checks that need the rest of the
configuration (tables exist, field paths parse), and how to build the runtime object.
Adding one is one new module plus its schema; the checker composes the schemas from here.

A step also says what kind of document it takes and gives (`Flow`): an HL7 v2 message, a
FHIR resource or another JSON document. `engine check` walks each channel's steps with it
(`engine.config.flow`) and the steps refuse a wrong kind at run time with the same words.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine.config.errors import ConfigProblem
from engine.config.model import Pos, Table

# Position of a node inside the plugin's arguments, by key/index path from the arguments root.
PosLookup = Callable[[tuple[str | int, ...]], Pos]

DocumentKind = Literal["hl7v2", "fhir", "json"]
ALL_KINDS: frozenset[DocumentKind] = frozenset({"hl7v2", "fhir", "json"})
KIND_TEXT: dict[DocumentKind, str] = {
    "hl7v2": "an HL7 v2 message",
    "fhir": "a FHIR resource",
    "json": "a JSON document (not FHIR)",
}


@dataclass(frozen=True)
class Flow:
    """What a step takes and gives. `gives` is a kind, "same" (the kind it took) or
    "unknown" (known only at run time, e.g. what a Python function returns). `action` ends
    the sentence "steps[2] set ...", e.g. "edits HL7 v2 fields"; `hints` say what to do when
    the step is handed a kind it does not take."""

    takes: frozenset[DocumentKind]
    gives: DocumentKind | Literal["same", "unknown"]
    action: str = ""
    hints: Mapping[DocumentKind, str] = field(default_factory=dict)

    def refusal(self, step: str, held: DocumentKind) -> str | None:
        """Why `step` cannot work on a document of kind `held`; None when it can."""
        if held in self.takes:
            return None
        hint = self.hints.get(held)
        return f"{step} {self.action}; the channel holds {KIND_TEXT[held]} here" + (
            f": {hint}" if hint else ""
        )

    def after(self, held: DocumentKind | None) -> DocumentKind | None:
        """The kind the channel holds after the step (None: unknown until run time)."""
        if self.gives == "same":
            return held
        return None if self.gives == "unknown" else self.gives


# A step that says nothing about documents takes anything and gives what it likes.
ANY_FLOW = Flow(ALL_KINDS, "unknown", "works on any document")


@dataclass(frozen=True)
class CheckContext:
    tables: dict[str, Table]
    transforms_dir: Path
    at: PosLookup  # at(()) is the arguments node itself


SemanticCheck = Callable[[Any, CheckContext], list[ConfigProblem]]


def no_checks(args: Any, ctx: CheckContext) -> list[ConfigProblem]:
    return []


@dataclass(frozen=True)
class Plugin:
    name: str
    schema: dict[str, Any]
    check: SemanticCheck = no_checks
    description: str = ""
    # Steps only: the Flow of a step with these (schema-checked) arguments.
    flow: Flow | Callable[[Any], Flow] = ANY_FLOW

    def flow_of(self, args: Any) -> Flow:
        return self.flow if isinstance(self.flow, Flow) else self.flow(args)
