"""`remove: [PID-11, PID-13, NTE]` clears fields, or drops whole segments when only a segment
name is given (keeping the positions of every other field). MSH, MSH-1 and MSH-2 cannot be
removed (checked with the configuration)."""

from __future__ import annotations

from typing import Any

from engine.config.errors import ConfigProblem
from engine.config.model import StepSpec
from engine.config.registry import CheckContext, Plugin
from engine.pipeline.context import Document, RunContext
from engine.pipeline.steps.base import EDITS_HL7, CompileContext, check_paths, hl7_message, label
from engine.protocol.er7 import parse_path

SCHEMA: dict[str, Any] = {
    "oneOf": [
        {"type": "string"},
        {"type": "array", "minItems": 1, "items": {"type": "string"}},
    ]
}


def _paths(args: str | list[str]) -> list[str]:
    return [args] if isinstance(args, str) else list(args)


def _check(args: str | list[str], ctx: CheckContext) -> list[ConfigProblem]:
    if isinstance(args, str):
        return check_paths([((), args)], ctx, "remove")
    return check_paths([((i,), p) for i, p in enumerate(args)], ctx, "remove")


PLUGIN = Plugin("remove", SCHEMA, _check, "clear fields or drop segments", flow=EDITS_HL7)


class RemoveFields:
    def __init__(self, spec: StepSpec) -> None:
        self.label = label(spec)
        self._paths = [parse_path(p) for p in _paths(spec.args)]

    def apply(self, doc: Document, run: RunContext) -> Document:
        message = hl7_message(doc, self.label)
        for path in self._paths:
            message.remove(path)
        return message


def compile_step(spec: StepSpec, ctx: CompileContext) -> RemoveFields:
    return RemoveFields(spec)
