"""`map: {field: SCH-7.1, table: appointment_types, to: ehr_code}` translates codes through a
mapping table from transforms/tables/.

Every occurrence of the field is translated (each segment of that type, each repetition), so
one step maps all AIP providers of a message. An empty value is left alone. A value with no
row follows `missing`: `error` (the default: the channel fails and the sender gets an AE
naming the field and table), `keep` (left as it is) or `default` (replaced by `default`).
With `into`, the translation is written to another field and the source stays unchanged.
Table values become field text as `set` writes them (booleans as Y/N).
"""

from __future__ import annotations

from typing import Any

from engine.config.errors import ConfigProblem
from engine.config.model import StepSpec
from engine.config.registry import CheckContext, Plugin
from engine.pipeline.context import Document, RunContext
from engine.pipeline.errors import TABLE_VALUE_NOT_FOUND, StepError
from engine.pipeline.steps.base import (
    EDITS_HL7,
    CompileContext,
    check_paths,
    hl7_message,
    label,
    value_text,
)
from engine.pipeline.steps.set_fields import QUOTED
from engine.protocol.er7 import parse_path

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["field", "table", "to"],
    "additionalProperties": False,
    "properties": {
        "field": {"type": "string"},
        "table": {"type": "string"},
        "to": {"type": "string"},
        "into": {"type": "string"},
        "missing": {"enum": ["error", "keep", "default"]},
        "default": {"type": "string", "x-expected": QUOTED},  # text only, as for `set`
    },
}


def _check(args: dict[str, Any], ctx: CheckContext) -> list[ConfigProblem]:
    paths = [(("field",), args["field"])]
    if "into" in args:
        paths.append((("into",), args["into"]))
    problems = check_paths(paths, ctx, "write")
    table = ctx.tables.get(args["table"])
    if table is None:
        known = ", ".join(sorted(ctx.tables)) or "none"
        problems.append(
            ConfigProblem(
                ctx.at(("table",)),
                f"table '{args['table']}' does not exist in transforms/tables/ (tables: {known})",
            )
        )
    elif args["to"] not in table.columns:
        columns = ", ".join(sorted(table.columns)) or "none"
        problems.append(
            ConfigProblem(
                ctx.at(("to",)),
                f"table '{table.name}' has no column '{args['to']}' (columns: {columns})",
            )
        )
    missing = args.get("missing", "error")
    if missing == "default" and "default" not in args:
        problems.append(
            ConfigProblem(ctx.at(("missing",)), "expected a 'default' value with missing: default")
        )
    if missing != "default" and "default" in args:
        problems.append(
            ConfigProblem(ctx.at(("default",)), "'default' is only used with missing: default")
        )
    return problems


PLUGIN = Plugin("map", SCHEMA, _check, "translate codes through a mapping table", flow=EDITS_HL7)


class MapTable:
    def __init__(self, spec: StepSpec, ctx: CompileContext) -> None:
        args = spec.args
        self.label = label(spec)
        self._field_text = args["field"]
        self._field = parse_path(args["field"])
        self._into = parse_path(args["into"]) if "into" in args else None
        self._table_name = args["table"]
        column = args["to"]
        # Flatten to key -> translated text once, so a lookup is one dict access.
        self._lookup = {
            key: value_text(row[column])
            for key, row in ctx.tables[args["table"]].rows.items()
            if row.get(column) is not None
        }
        self._missing = args.get("missing", "error")
        self._default = value_text(args.get("default", ""))

    def _translate(self, value: str) -> str | None:
        if not value:
            return None
        found = self._lookup.get(value)
        if found is not None:
            return found
        if self._missing == "keep":
            return None
        if self._missing == "default":
            return self._default
        raise StepError(
            f"{self.label}: table '{self._table_name}' has no entry for the value of "
            f"{self._field_text}",
            field=self._field_text,
            code=TABLE_VALUE_NOT_FOUND,
            detail=f"value {value!r} not in table {self._table_name}",
        )

    def apply(self, doc: Document, run: RunContext) -> Document:
        message = hl7_message(doc, self.label)
        if self._into is None:
            message.map_all(self._field, self._translate)
            return message
        translated = self._translate(message.get(self._field))
        if translated is not None:
            message.set(self._into, translated)
        return message


def compile_step(spec: StepSpec, ctx: CompileContext) -> MapTable:
    return MapTable(spec, ctx)
