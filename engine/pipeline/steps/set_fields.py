"""`set: {MSH-5: CLINIC_EHR, PV1-2: O}` writes literal values (escaped for ER7) into fields.

Booleans are written as HL7's Y/N; the paths must be writable fields (checked with the
configuration)."""

from __future__ import annotations

from typing import Any

from engine.config.errors import ConfigProblem
from engine.config.model import StepSpec
from engine.config.registry import CheckContext, Plugin
from engine.pipeline.context import Document, RunContext
from engine.pipeline.steps.base import (
    EDITS_HL7,
    CompileContext,
    check_paths,
    hl7_message,
    label,
    value_text,
)
from engine.protocol.er7 import parse_path

QUOTED = "text in quotes (e.g. '060'), so the field gets exactly what is written"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "minProperties": 1,
    # Text only: YAML would turn an unquoted 060 into 60 or 1.50 into 1.5, and the field would
    # silently get something the analyst did not write. Quoting says exactly what is meant.
    "additionalProperties": {"type": "string", "x-expected": QUOTED},
}


def _check(args: dict[str, Any], ctx: CheckContext) -> list[ConfigProblem]:
    return check_paths([((key,), key) for key in args], ctx, "write")


PLUGIN = Plugin("set", SCHEMA, _check, "write literal values into fields", flow=EDITS_HL7)


class SetFields:
    def __init__(self, spec: StepSpec) -> None:
        self.label = label(spec)
        self._values = [(parse_path(k), value_text(v)) for k, v in spec.args.items()]

    def apply(self, doc: Document, run: RunContext) -> Document:
        message = hl7_message(doc, self.label)
        for path, value in self._values:
            message.set(path, value)
        return message


def compile_step(spec: StepSpec, ctx: CompileContext) -> SetFields:
    return SetFields(spec)
