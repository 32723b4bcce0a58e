"""`set: {MSH-5: CLINIC_EHR, PV1-2: O}` writes literal values (escaped for ER7) into fields."""

from __future__ import annotations

from typing import Any

from engine.config.errors import ConfigProblem
from engine.config.model import StepSpec
from engine.config.registry import CheckContext, Plugin, check_field_paths
from engine.pipeline.steps.base import CompileContext, label
from engine.protocol.er7 import Message, parse_path

SCHEMA: dict[str, Any] = {
    "type": "object",
    "minProperties": 1,
    "additionalProperties": {"type": ["string", "number", "boolean"]},
}


def _check(args: dict[str, Any], ctx: CheckContext) -> list[ConfigProblem]:
    return check_field_paths([((key,), key) for key in args], ctx)


PLUGIN = Plugin("set", SCHEMA, _check, "write literal values into fields")


class SetFields:
    def __init__(self, spec: StepSpec) -> None:
        self.label = label(spec)
        self._values = [(parse_path(k), _text(v)) for k, v in spec.args.items()]

    def apply(self, message: Message) -> Message:
        for path, value in self._values:
            message.set(path, value)
        return message


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "Y" if value else "N"
    return str(value)


def compile_step(spec: StepSpec, ctx: CompileContext) -> SetFields:
    return SetFields(spec)
