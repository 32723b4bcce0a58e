"""Shared test kit for the configuration tests: a configuration folder written into tmp_path,
small step and destination plugins of the tests' own, and a valid baseline configuration.

All names, ids and hosts here are invented."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from engine.config import ConfigError, EngineConfig, load
from engine.config.errors import ConfigProblem
from engine.config.registry import CheckContext, Plugin
from engine.pipeline.steps.base import check_paths


def _check_set(args: dict[str, Any], ctx: CheckContext) -> list[ConfigProblem]:
    return check_paths([((key,), key) for key in args], ctx, "write")


def _check_map(args: dict[str, Any], ctx: CheckContext) -> list[ConfigProblem]:
    problems = check_paths([(("field",), args["field"])], ctx, "read")
    table = ctx.tables.get(args["table"])
    if table is None:
        known = ", ".join(sorted(ctx.tables)) or "none"
        problems.append(
            ConfigProblem(ctx.at(("table",)), f"table '{args['table']}' does not exist "
                                              f"(tables: {known})")
        )
    elif args["to"] not in table.columns:
        columns = ", ".join(sorted(table.columns))
        problems.append(
            ConfigProblem(ctx.at(("to",)), f"table '{table.name}' has no column "
                                           f"'{args['to']}' (columns: {columns})")
        )
    return problems


STEPS: dict[str, Plugin] = {
    "set": Plugin(
        "set",
        {"type": "object", "minProperties": 1, "additionalProperties": {"type": "string"}},
        _check_set,
    ),
    "map": Plugin(
        "map",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["field", "table", "to"],
            "properties": {
                "field": {"type": "string"},
                "table": {"type": "string"},
                "to": {"type": "string"},
            },
        },
        _check_map,
    ),
    "wait": Plugin(
        "wait",
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {"for": {"x-unit": "duration", "type": ["number", "string"]}},
        },
    ),
}

DESTINATIONS: dict[str, Plugin] = {
    "mllp": Plugin(
        "mllp",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["host", "port"],
            "properties": {
                "host": {"type": "string"},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "ack_timeout": {"x-unit": "duration", "exclusiveMinimum": 0},
            },
        },
    ),
    "file": Plugin(
        "file",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["directory"],
            "properties": {
                "directory": {"x-unit": "path"},
                "max_bytes": {"x-unit": "size", "minimum": 1},
                "client_secret": {"type": "string", "minLength": 20},
            },
        },
    ),
}

ROUTES = """\
    store: sqlite:data/engine.db
    listeners:
      epic-siu:
        mllp: {port: 2575, max_message_bytes: 1MiB, idle_timeout: 5m}
        ack: delivered
        ack_timeout: 45s
    routes:
      epic-siu: [siu-to-clinic-ehr]
    """

CHANNEL = """\
    description: Synthetic SIU feed to the clinic EHR.
    accept: {type: [SIU^S12, SIU^S13]}
    filter:
      - {field: SCH-25.1, not_in: [Pending, Waitlist]}
      - any: [{field: PV1-2, equals: O}, {not: {field: PID-8, exists: true}}]
    steps:
      - map: {field: SCH-7.1, table: appointment_types, to: ehr_code}
      - set: {MSH-5: CLINIC_EHR}
    destinations:
      clinic-ehr:
        mllp: {host: 127.0.0.1, port: 6661, ack_timeout: 30s}
        retry: {attempts: 3, backoff: exponential, first: 500ms, max: 8s}
        order_by: SCH-1.1
    dedupe: {window: 12h}
    tests:
      - name: new patient consult gets the EHR code
        input: samples/siu_s12_new_patient.hl7
        expect: {clinic-ehr: {SCH-7.1: NP_EVAL_60}}
    """

APPOINTMENT_TYPES = """\
    new_patient_consult: {ehr_code: NP_EVAL_60, duration_minutes: 60}
    follow_up:           {ehr_code: FOLLOWUP_30, duration_minutes: 30}
    """

PROVIDERS = """\
    DR_ZZTEST: {ehr_id: P-0001, name: Test Provider}
    """

SAMPLE = "MSH|^~\\&|SENDER|FAC|RECV|FAC|20240101120000||SIU^S12|CTRL0001|P|2.5.1\r"


class ConfigDir:
    """A configuration root in a temporary folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.routes_file = root / "routes.yaml"

    def write(self, relative: str, text: str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    def routes(self, text: str) -> Path:
        return self.write("routes.yaml", text)

    def channel(self, name: str, text: str) -> Path:
        return self.write(f"channels/{name}.yaml", text)

    def table(self, name: str, text: str) -> Path:
        return self.write(f"transforms/tables/{name}.yaml", text)

    def baseline(self) -> ConfigDir:
        self.routes(ROUTES)
        self.channel("siu-to-clinic-ehr", CHANNEL)
        self.table("appointment_types", APPOINTMENT_TYPES)
        self.table("providers", PROVIDERS)
        self.write("samples/siu_s12_new_patient.hl7", SAMPLE)
        return self

    def load(self) -> EngineConfig:
        return load(self.routes_file, steps=STEPS, destinations=DESTINATIONS)

    def problems(self) -> list[str]:
        """Every problem as `relative/file:line:column: message`; fails if none."""
        try:
            self.load()
        except ConfigError as exc:
            return [
                f"{p.pos.file.relative_to(self.root)}:{p.pos.line}:{p.pos.column}: {p.message}"
                for p in exc.problems
            ]
        raise AssertionError("expected configuration problems, the configuration loaded")
