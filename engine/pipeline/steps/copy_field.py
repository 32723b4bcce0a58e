"""`copy: {from: PID-3.1, to: PV1-19}` copies one field's value into another.

The value keeps its structure: copying `PID-5` (`Doe^Jane`) into `NK1-2` gives `Doe^Jane`
there, components and subcomponents included, and escaped text stays the same text. Without
a repetition index the source's first repetition is copied (as `get` reads it) and, as with
`set`, a target without one is replaced whole. An empty source empties the target. A value
with components cannot go into a single component or subcomponent: the channel fails
naming the source field rather than writing a value the receiver would misread.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

from engine.config.errors import ConfigProblem
from engine.config.model import StepSpec
from engine.config.registry import CheckContext, Plugin
from engine.pipeline.context import Document, RunContext
from engine.pipeline.errors import StepError
from engine.pipeline.steps.base import EDITS_HL7, CompileContext, check_paths, hl7_message, label
from engine.protocol.er7 import Message, Path, parse_path, unescape

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["from", "to"],
    "additionalProperties": False,
    "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
}


def _check(args: dict[str, Any], ctx: CheckContext) -> list[ConfigProblem]:
    return check_paths([(("from",), args["from"])], ctx, "read") + check_paths(
        [(("to",), args["to"])], ctx, "write"
    )


PLUGIN = Plugin("copy", SCHEMA, _check, "copy a field's value into another field", flow=EDITS_HL7)


@functools.lru_cache(maxsize=1024)
def _at(path: Path, component: int | None, subcomponent: int | None) -> Path:
    """`path` narrowed to a component or subcomponent (cached: building a Path costs more
    than the write it addresses)."""
    if component is None:
        return replace(path, subcomponent=subcomponent)
    return replace(path, component=component, subcomponent=subcomponent)


def _is_leaf(message: Message, source: Path, value: str) -> bool:
    """Whether `get(source)` returned decoded text rather than ER7 with separators in it.

    `get` decodes a leaf and leaves a composite as ER7; a composite's first part, read one
    level down, is always shorter than the whole, while a leaf reads the same."""
    if not value or source.subcomponent is not None:
        return True
    if source.component is not None:
        return message.get(_at(source, None, 1)) == value
    return message.get(_at(source, 1, None)) == value and (
        message.get(_at(source, 1, 1)) == value
    )


class CopyField:
    def __init__(self, spec: StepSpec) -> None:
        self.label = label(spec)
        self._source_text = spec.args["from"]
        self._source = parse_path(spec.args["from"])
        self._target = parse_path(spec.args["to"])

    def apply(self, doc: Document, run: RunContext) -> Document:
        message = hl7_message(doc, self.label)
        value = message.get(self._source)
        if _is_leaf(message, self._source, value):
            message.set(self._target, value)
            return message
        enc = message.encoding
        # The composite as components of subcomponents, each leaf decoded: written back
        # with `set`, every leaf is escaped again and the structure is rebuilt as it was.
        if self._source.component is None:
            parts = [c.split(enc.subcomponent) for c in value.split(enc.component)]
        else:
            parts = [value.split(enc.subcomponent)]
        target = self._target
        if target.subcomponent is not None or (target.component is not None and len(parts) > 1):
            raise StepError(
                f"{self.label}: {self._source_text} has components that "
                f"{self._target} cannot hold",
                field=self._source_text,
            )
        message.set(target, "")
        for c, subs in enumerate(parts, 1):
            for s, leaf in enumerate(subs, 1):
                if not leaf:
                    continue
                if target.component is not None:
                    at = _at(target, None, s)
                else:
                    at = _at(target, c, s if len(subs) > 1 else None)
                message.set(at, unescape(leaf, enc))
        return message


def compile_step(spec: StepSpec, ctx: CompileContext) -> CopyField:
    return CopyField(spec)
