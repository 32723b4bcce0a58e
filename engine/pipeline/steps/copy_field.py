"""`copy: {from: PID-3.1, to: PV1-19}` copies one field's value into another."""

from __future__ import annotations

from typing import Any

from engine.config.errors import ConfigProblem
from engine.config.model import StepSpec
from engine.config.registry import CheckContext, Plugin, check_field_paths
from engine.pipeline.steps.base import CompileContext, label
from engine.protocol.er7 import Message, parse_path

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["from", "to"],
    "additionalProperties": False,
    "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
}


def _check(args: dict[str, Any], ctx: CheckContext) -> list[ConfigProblem]:
    return check_field_paths([(("from",), args["from"]), (("to",), args["to"])], ctx)


PLUGIN = Plugin("copy", SCHEMA, _check, "copy a field's value into another field")


class CopyField:
    def __init__(self, spec: StepSpec) -> None:
        self.label = label(spec)
        self._source = parse_path(spec.args["from"])
        self._target = parse_path(spec.args["to"])

    def apply(self, message: Message) -> Message:
        message.set(self._target, message.get(self._source))
        return message


def compile_step(spec: StepSpec, ctx: CompileContext) -> CopyField:
    return CopyField(spec)
