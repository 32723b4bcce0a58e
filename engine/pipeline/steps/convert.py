"""`convert: siu_to_fhir` turns the channel's document into another kind: SIU <-> FHIR
Appointment, an appointment's webhook event, or what a custom converter makes.

    - convert: siu_to_fhir                            # SIU message -> Appointment (no id)
    - convert: {name: siu_to_fhir, tz: Europe/Berlin}  # zone of times without an offset
    - convert: fhir_to_siu                            # Appointment -> SIU S12/S13/S14/S15/S17/S26
    - convert: appointment_event                      # -> appointment.created/updated/... event
    - convert: mapping.to_partner_json                # transforms/mapping.py, (doc, context)

- `siu_to_fhir` reads times without an offset in `tz`, by default the configuration's
  `timezone`; the Appointment it makes is checked with `engine.fhir.check_appointment`, and
  a rule it breaks fails the channel naming the element.
- `fhir_to_siu` picks the trigger from the appointment's previous version in the run
  context (none: S12), writes the run's control id into MSH-10 and its time into MSH-7.
- `appointment_event` announces the run context's appointment as assessed
  (`engine.appointments.event_for`); no event to send (a repeat, say) is `filtered` with the
  reason, and a message that carries no appointment is an error.
- The three built-ins send nothing for a version that is not the appointment's current
  state (older than the one held, or rejected as a conflict): `filtered`, because sending it
  on would undo newer state downstream. A custom converter gets the context and decides.
- `module.function` is called like a `python` step function (with (doc, context) when it
  takes two parameters) and must return a document (a Message or a dict).

A converter handed the wrong kind of document fails naming the kind it takes; `engine check`
finds the same mistake from the channel's `accept` and steps (`Flow`).
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from engine.appointments.events import event_for
from engine.config.errors import ConfigProblem
from engine.config.model import StepSpec
from engine.config.registry import ALL_KINDS, CheckContext, Flow, Plugin
from engine.conversions import ConversionError, fhir_to_siu, siu_to_fhir
from engine.fhir.validation import check_appointment
from engine.pipeline.context import AppointmentContext, Document, RunContext
from engine.pipeline.documents import describe, kind_of
from engine.pipeline.errors import StepError, StepFiltered
from engine.pipeline.steps.base import CompileContext, label
from engine.pipeline.steps.python_call import call_transform, loaded
from engine.pipeline.transforms import TransformError, arguments, load_function
from engine.protocol.er7 import Message, PathError, parse_path

BUILT_IN = ("siu_to_fhir", "fhir_to_siu", "appointment_event")

_NAME: dict[str, Any] = {
    "type": "string",
    "pattern": r"^(" + "|".join(BUILT_IN) + r"|[A-Za-z_]\w*\.[A-Za-z_]\w*)$",
    "x-expected": f"{', '.join(BUILT_IN)} or module.function (a file in transforms/)",
}
SCHEMA: dict[str, Any] = {
    "type": ["string", "object"],
    "if": {"type": "string"},
    "then": _NAME,
    "else": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {"name": _NAME, "tz": {"type": "string", "minLength": 1}},
    },
}

_FLOWS = {
    "siu_to_fhir": Flow(
        frozenset({"hl7v2"}),
        "fhir",
        "(siu_to_fhir) takes an HL7 v2 SIU message",
        {"fhir": "remove this step"},
    ),
    "fhir_to_siu": Flow(
        frozenset({"fhir"}),
        "hl7v2",
        "(fhir_to_siu) takes a FHIR Appointment",
        {"hl7v2": "remove this step"},
    ),
    "appointment_event": Flow(
        frozenset({"hl7v2", "fhir"}),
        "json",
        "(appointment_event) takes the appointment's SIU message or FHIR Appointment",
    ),
}
_CUSTOM_FLOW = Flow(ALL_KINDS, "unknown", "(a custom converter) works on any document")


def _parts(args: str | dict[str, Any]) -> tuple[str, str | None]:
    """(converter name, tz or None) of the step's arguments."""
    if isinstance(args, str):
        return args, None
    return args["name"], args.get("tz")


def _flow(args: str | dict[str, Any]) -> Flow:
    return _FLOWS.get(_parts(args)[0], _CUSTOM_FLOW)


def _check(args: str | dict[str, Any], ctx: CheckContext) -> list[ConfigProblem]:
    name, tz = _parts(args)
    where: tuple[str | int, ...] = () if isinstance(args, str) else ("name",)
    problems: list[ConfigProblem] = []
    if name not in BUILT_IN:
        try:
            arguments(load_function(ctx.transforms_dir, name), name)
        except TransformError as exc:
            problems.append(ConfigProblem(ctx.at(where), str(exc)))
    if tz is not None:
        if name != "siu_to_fhir":
            problems.append(ConfigProblem(
                ctx.at(("tz",)),
                "tz is only used by siu_to_fhir (the zone of HL7 times without an offset)",
            ))
        elif _zone(tz) is None:
            problems.append(ConfigProblem(
                ctx.at(("tz",)), f"expected an IANA time zone like Europe/Berlin, got {tz!r}"
            ))
    return problems


PLUGIN = Plugin(
    "convert", SCHEMA, _check, "convert between HL7 v2 SIU, FHIR and webhook events", _flow
)


def _zone(name: str) -> zoneinfo.ZoneInfo | None:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None


def _field_named(text: str) -> str:
    """The field or element a ConversionError's text starts with ("SCH-11.4 is not ...",
    "Appointment.start is not ..."), or ""."""
    first = text.split(" ", 1)[0]
    try:
        if parse_path(first).field:
            return first
    except PathError:
        pass
    parts = first.split(".")
    return first if len(parts) > 1 and all(p.isalpha() for p in parts) else ""


Converter = Callable[[Document, RunContext], Document]


class Convert:
    def __init__(self, spec: StepSpec, ctx: CompileContext) -> None:
        self.label = label(spec)
        self.name, tz = _parts(spec.args)
        self._flow = _flow(spec.args)
        zone = _zone(tz or ctx.timezone)
        if zone is None:  # the configuration check refuses it; a direct caller learns here
            raise ValueError(f"unknown time zone {tz or ctx.timezone!r}")
        self._zone = zone
        converters: dict[str, Converter] = {
            "siu_to_fhir": self._siu_to_fhir,
            "fhir_to_siu": self._fhir_to_siu,
            "appointment_event": self._appointment_event,
        }
        self._convert = converters.get(self.name) or self._custom(ctx)
        # The built-in converters build a new document and never change their input or the
        # run's context; a custom one is project code and may.
        self.reads_only = self.name in BUILT_IN
        self.user_code = not self.reads_only

    def apply(self, doc: Document, run: RunContext) -> Document:
        if self.name in BUILT_IN:
            refusal = self._flow.refusal(self.label, kind_of(doc))
            if refusal is not None:
                raise StepError(refusal)
            appointment = run.appointment
            if appointment is not None and not appointment.current:
                raise StepFiltered(self._not_current(appointment))
        try:
            return self._convert(doc, run)
        except ConversionError as exc:
            # Conversion texts name a field or element, never its content.
            raise StepError(f"{self.label} ({self.name}): {exc}", field=_field_named(str(exc))) \
                from exc

    def _not_current(self, appointment: AppointmentContext) -> str:
        why = (
            "was rejected as an appointment conflict"
            if appointment.disposition == "rejected"
            else "is older than the appointment's current version"
        )
        return (
            f"{self.label} ({self.name}): not sent: this version {why}; sending it on "
            "would undo newer state downstream"
        )

    # ------------------------------------------------------------------ built-ins

    def _siu_to_fhir(self, doc: Document, run: RunContext) -> Document:
        assert isinstance(doc, Message)  # apply checked the kind
        resource = siu_to_fhir(doc, tz=self._zone)
        issues = check_appointment(resource)
        if issues:
            first = issues[0]
            element = first.expression[0] if first.expression else ""
            where = f"{element}: " if element else ""
            more = f" (+{len(issues) - 1} more)" if len(issues) > 1 else ""
            raise StepError(
                f"{self.label} ({self.name}): the Appointment made from this message is not "
                f"valid: {where}{first.diagnostics}{more}",
                field=element,
            )
        return resource

    def _fhir_to_siu(self, doc: Document, run: RunContext) -> Document:
        assert isinstance(doc, dict)  # apply checked the kind
        if doc.get("resourceType") != "Appointment":
            raise StepError(
                f"{self.label} ({self.name}) takes a FHIR Appointment; the channel holds "
                f"{describe(doc)} here"
            )
        if not run.control_id:
            raise StepError(
                f"{self.label} ({self.name}) needs a control id for MSH-10, and this run "
                "gave none"
            )
        previous = run.appointment.previous if run.appointment is not None else None
        return fhir_to_siu(
            doc, previous, control_id=run.control_id, now=datetime.fromtimestamp(run.now, UTC)
        )

    def _appointment_event(self, doc: Document, run: RunContext) -> Document:
        appointment = run.appointment
        if appointment is None:
            raise StepError(
                f"{self.label} ({self.name}) needs the appointment the message carries, and "
                "this message carries none the engine can key (an SIU S12-S17/S26 with "
                "SCH-1 or SCH-2, or a FHIR Appointment with an identifier)"
            )
        event = event_for(appointment.assessment, appointment.resource, now=run.now)
        if event is None:
            raise StepFiltered(f"{self.label} ({self.name}): no event: {_no_event(appointment)}")
        return event

    # ------------------------------------------------------------------ custom

    def _custom(self, ctx: CompileContext) -> Converter:
        function = loaded(ctx, self.name)
        takes = arguments(function, self.name)
        what = f"{self.label} ({self.name})"

        def convert(doc: Document, run: RunContext) -> Document:
            result = call_transform(function, takes, doc, run, what, passes=(ConversionError,))
            if not isinstance(result, Message | dict):
                raise StepError(
                    f"{what} returned {type(result).__name__}, expected a document "
                    "(a Message or a dict)"
                )
            return result

        return convert


def _no_event(appointment: AppointmentContext) -> str:
    assessment = appointment.assessment
    if assessment.change == "unchanged":
        return "the appointment is unchanged (a repeat of its current version)"
    if not assessment.apply:
        return "the message is older than the appointment's current version"
    if assessment.change == "entered-in-error":
        return "an appointment never announced was entered in error"
    return f"the change '{assessment.change}' is not announced"


def compile_step(spec: StepSpec, ctx: CompileContext) -> Convert:
    return Convert(spec, ctx)
