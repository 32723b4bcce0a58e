"""Validation of one FHIR R4B Appointment body: bytes in, the JSON dict or `Invalid` out.

Owns the order of checks and which HTTP status each failure earns: 400 when the body cannot
be read as an Appointment at all (too big, not UTF-8 JSON, not an object, wrong or missing
resourceType); 422 when it can, but breaks the R4B structure (fhir.resources) or the
engine's own rules (`check_appointment`: real status codes, R4 invariants app-1..app-4,
end not before start, a participant, an identifier). Every issue is collected, not only the
first. Rule kept: no diagnostics quote a value from the body; pydantic texts that might
echo the input are replaced by our own wording.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from fhir.resources.R4B.appointment import Appointment
from pydantic import ValidationError

from engine.fhir.outcome import Invalid, Issue

__all__ = [
    "APPOINTMENT_STATUSES",
    "MAX_ISSUES",
    "PARTICIPANT_STATUSES",
    "check_appointment",
    "parse_appointment",
    "read_json",
    "validate_appointment",
]

# http://hl7.org/fhir/appointmentstatus (R4 / R4B, required binding).
APPOINTMENT_STATUSES = frozenset(
    {
        "proposed",
        "pending",
        "booked",
        "arrived",
        "fulfilled",
        "cancelled",
        "noshow",
        "entered-in-error",
        "checked-in",
        "waitlist",
    }
)
# http://hl7.org/fhir/participationstatus (required binding on participant.status).
PARTICIPANT_STATUSES = frozenset({"accepted", "declined", "tentative", "needs-action"})
# app-3: "(start.exists() and end.exists()) or (status in ('proposed' | 'cancelled' |
# 'waitlist'))" - the only statuses that may leave the time open.
OPEN_TIME_STATUSES = frozenset({"proposed", "cancelled", "waitlist"})
# app-4: cancelationReason only on these.
CANCEL_REASON_STATUSES = frozenset({"cancelled", "noshow"})

# A hostile body can yield thousands of pydantic errors; the answer stays bounded.
MAX_ISSUES = 100

_ROOT = "Appointment"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_KIND = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_STATUS_LIST = ", ".join(sorted(APPOINTMENT_STATUSES))
_PARTICIPANT_STATUS_LIST = ", ".join(sorted(PARTICIPANT_STATUSES))

# pydantic error type -> (FHIR issue-type code, our wording). Our wording, because pydantic
# messages may quote the offending input.
_PYDANTIC_TEXT: dict[str, tuple[str, str]] = {
    "missing": ("required", "required element is missing"),
    "model_field_validation.missing": ("required", "required element is missing"),
    "extra_forbidden": ("structure", "unknown element: not part of the R4B resource"),
    "list_type": ("structure", "expected a JSON array"),
    "dict_type": ("structure", "expected a JSON object"),
    "model_type": ("structure", "expected a JSON object"),
    "model_attributes_type": ("structure", "expected a JSON object"),
    "json_invalid": ("structure", "expected a JSON object"),
    "json_type": ("structure", "expected a JSON object"),
    "string_type": ("structure", "expected a JSON string"),
    "int_type": ("structure", "expected an integer"),
    "int_parsing": ("value", "expected an integer"),
    "int_from_float": ("value", "expected an integer, not a fraction"),
    "float_type": ("structure", "expected a JSON number"),
    "float_parsing": ("value", "expected a JSON number"),
    "decimal_type": ("structure", "expected a JSON number"),
    "decimal_parsing": ("value", "expected a JSON number"),
    "bool_type": ("structure", "expected true or false"),
    "bool_parsing": ("value", "expected true or false"),
    "string_pattern_mismatch": ("value", "value does not match the pattern of its FHIR type"),
    "string_too_short": ("value", "empty strings are not allowed in FHIR"),
    "string_too_long": ("value", "value is too long"),
    "greater_than_equal": ("value", "number is below the allowed minimum"),
    "greater_than": ("value", "number is below the allowed minimum"),
    "less_than_equal": ("value", "number is above the allowed maximum"),
    "less_than": ("value", "number is above the allowed maximum"),
    "fhir-validation-wrong-resource-type": ("invalid", "wrong resourceType for this element"),
}


def parse_appointment(body: bytes, *, max_bytes: int = 1_048_576) -> dict[str, Any]:
    """Validate one Appointment JSON body and return it as a dict (what the engine stores).

    Raises `Invalid` (400: unreadable or not an Appointment; 422: invalid Appointment) with
    every issue found.
    """
    return validate_appointment(read_json(body, max_bytes))


def validate_appointment(resource: dict[str, Any], at: str = _ROOT) -> dict[str, Any]:
    """Validate an Appointment already read as JSON (a Bundle entry's resource, found `at`
    `Bundle.entry[2].resource`: the issues' expressions then start there)."""
    kind = resource.get("resourceType")
    if kind is None:
        raise Invalid(
            400,
            [Issue("error", "invalid", "resourceType is missing; expected Appointment", (at,))],
        )
    if kind != _ROOT:
        raise Invalid(
            400,
            [
                Issue(
                    "error",
                    "not-supported",
                    "resourceType is not supported here; expected Appointment",
                    (at,),
                )
            ],
        )

    issues = _structure_issues(resource)
    # Where the structure is already reported broken, a rule about the same element would
    # only repeat it in other words.
    covered = {e for issue in issues for e in issue.expression}
    issues.extend(i for i in check_appointment(resource) if not covered.intersection(i.expression))
    if issues:
        raise Invalid(422, [_rebased(i, at) for i in _bounded(issues)])
    return resource


def _rebased(issue: Issue, at: str) -> Issue:
    if at == _ROOT:
        return issue
    moved = tuple(
        at + e[len(_ROOT):] if e == _ROOT or e.startswith(_ROOT + ".") else e
        for e in issue.expression
    )
    return Issue(issue.severity, issue.code, issue.diagnostics, moved)


def check_appointment(resource: dict[str, Any]) -> list[Issue]:
    """The engine's own rules on an Appointment dict; [] when it keeps them all.

    Defensive about shapes (a structurally broken resource yields issues, never a crash), so
    conversions can call it on what they build as well as the HTTP path on what it receives.
    """
    issues: list[Issue] = []
    given = resource.get("status")
    # Only a string is a status; anything else (a list, an object) is reported once here and
    # reads as "no status" for the rules below, which compare it with sets of codes.
    status = given if isinstance(given, str) else None
    if status is None:
        issues.append(_error("required", "status is required: one of " + _STATUS_LIST, "status"))
    elif status not in APPOINTMENT_STATUSES:
        issues.append(
            _error(
                "code-invalid",
                "status is not a code of "
                "http://hl7.org/fhir/appointmentstatus; expected one of " + _STATUS_LIST,
                "status",
            )
        )
    issues.extend(_check_identifier(resource.get("identifier")))
    issues.extend(_check_participants(resource.get("participant")))
    issues.extend(_check_times(resource, status))
    if resource.get("cancelationReason") is not None and status not in CANCEL_REASON_STATUSES:
        issues.append(
            _error(
                "invariant",
                "app-4: cancelationReason is only used when status is cancelled or noshow",
                "cancelationReason",
            )
        )
    return issues


def _structure_issues(resource: dict[str, Any]) -> list[Issue]:
    """What fhir.resources finds wrong with the R4B structure of `resource`."""
    try:
        Appointment.model_validate(resource)
    except ValidationError as exc:
        return list(_pydantic_issues(exc))
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError):
        # fhir.resources lets plain errors escape on some content (a contained resource of
        # an unknown type gives KeyError) and stops there; their text may quote the input.
        if "contained" not in resource:
            return [_error("structure", "content could not be read as an R4B resource")]
        rest = {k: v for k, v in resource.items() if k != "contained"}
        text = "a contained resource could not be read (unknown or missing resourceType?)"
        return [_error("structure", text, "contained"), *_structure_issues(rest)]
    return []


def read_json(body: bytes, max_bytes: int) -> dict[str, Any]:
    """A request body as one JSON object (FHIR JSON rules: UTF-8, no duplicate keys, no
    NaN), or `Invalid` 400 saying why not."""
    if len(body) > max_bytes:
        raise Invalid(
            400,
            [Issue("error", "too-long", f"request body is over the limit of {max_bytes} bytes")],
        )
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Invalid(
            400,
            [Issue("error", "structure", f"body is not UTF-8 (bad byte at offset {exc.start})")],
        ) from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise Invalid(
            400,
            [
                Issue(
                    "error",
                    "structure",
                    f"body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                )
            ],
        ) from None
    except _JsonRejected as exc:
        raise Invalid(
            400, [Issue("error", "structure", f"body is not valid FHIR JSON: {exc}")]
        ) from None
    except RecursionError:
        raise Invalid(400, [Issue("error", "structure", "body is nested too deeply")]) from None
    if not isinstance(value, dict):
        raise Invalid(
            400, [Issue("error", "structure", "body must be a JSON object holding one resource")]
        )
    return value


class _JsonRejected(ValueError):
    """JSON that Python accepts but FHIR JSON does not (its text names no input value)."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two values for one key would let two readers of the same body see different resources.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _JsonRejected("an object has the same key twice")
    return obj


def _no_constant(name: str) -> Any:
    raise _JsonRejected("NaN and Infinity are not JSON numbers")


def _pydantic_issues(exc: ValidationError) -> Iterator[Issue]:
    for err in exc.errors(include_url=False):
        kind = str(err.get("type", ""))
        known = _PYDANTIC_TEXT.get(kind)
        if known is not None:
            code, text = known
        else:
            code, text = "value", _safe_message(err, kind)
        loc = tuple(err.get("loc", ()))
        if kind == "extra_forbidden" and loc:
            # The unknown element's name is the client's own text (it may be anything, a
            # patient's name included): point at its parent instead of quoting it.
            loc = loc[:-1]
        yield _error(code, text, *_fhirpath_parts(loc))


def _safe_message(err: Any, kind: str) -> str:
    """pydantic's message when it quotes nothing from the input, else a generic text."""
    msg = str(err.get("msg", ""))
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    if msg and not any(leaf in msg for leaf in _leaves(err.get("input"), 200)):
        return msg
    return f"invalid value ({kind})" if _KIND.fullmatch(kind) else "invalid value"


def _leaves(value: Any, budget: int) -> Iterator[str]:
    """String forms of the scalars inside `value` (at most `budget`, else one catch-all)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
            stack.extend(item.keys())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, str | int | float) and not isinstance(item, bool):
            budget -= 1
            if budget < 0:
                yield ""  # "" is in every string: too much input to vouch for, use the generic
                return
            text = str(item)
            if text:
                yield text


def _fhirpath_parts(loc: Any) -> tuple[str, ...]:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif isinstance(part, str) and _NAME.fullmatch(part):
            parts.append("." + _json_name(part))
        # Anything else (an odd unknown key, a pydantic union tag) is left out rather than
        # quoted: the path then points at the nearest element we can name safely.
    return ("".join(parts).lstrip("."),) if parts else ("",)


def _json_name(field: str) -> str:
    # fhir.resources renames some JSON keys for Python: `_status` -> `status__ext`,
    # `class` -> `class_fhir`, `resourceType` -> `resource_type`.
    if field.endswith("__ext"):
        return "_" + field.removesuffix("__ext")
    if field.endswith("_fhir"):
        return field.removesuffix("_fhir")
    if field == "resource_type":
        return "resourceType"
    return field


def _check_identifier(identifiers: Any) -> list[Issue]:
    if isinstance(identifiers, list) and any(
        isinstance(i, dict) and isinstance(i.get("value"), str) and i["value"] for i in identifiers
    ):
        return []
    return [
        _error(
            "required",
            "at least one identifier with a value is required "
            "(the engine keys appointments by identifier)",
            "identifier",
        )
    ]


def _check_participants(participants: Any) -> list[Issue]:
    if not isinstance(participants, list) or not participants:
        return [_error("required", "at least one participant is required", "participant")]
    issues: list[Issue] = []
    for n, participant in enumerate(participants):
        if not isinstance(participant, dict):
            continue  # a structural problem; fhir.resources names it
        if participant.get("type") is None and participant.get("actor") is None:
            issues.append(
                _error(
                    "invariant",
                    "app-1: a participant needs a type or an actor",
                    f"participant[{n}]",
                )
            )
        status = participant.get("status")
        if isinstance(status, str) and status not in PARTICIPANT_STATUSES:
            issues.append(
                _error(
                    "code-invalid",
                    "participant status is not a code of "
                    "http://hl7.org/fhir/participationstatus; expected one of "
                    + _PARTICIPANT_STATUS_LIST,
                    f"participant[{n}].status",
                )
            )
    return issues


def _check_times(resource: dict[str, Any], status: Any) -> list[Issue]:
    start, end = resource.get("start"), resource.get("end")
    missing = [name for name, value in (("start", start), ("end", end)) if value is None]
    if missing and status not in OPEN_TIME_STATUSES:
        return [
            _error(
                "invariant",
                "app-3: start and end are required unless status is "
                "proposed, cancelled or waitlist",
                name,
            )
            for name in missing
        ]
    if len(missing) == 1:
        return [
            _error("invariant", "app-2: start and end are given together or not at all", missing[0])
        ]
    if missing:
        return []
    begins, ends = _instant(start), _instant(end)
    if begins is not None and ends is not None and ends < begins:
        return [_error("business-rule", "end is before start", "end")]
    return []


def _instant(value: Any) -> datetime | None:
    """A FHIR instant as an aware datetime; None when unreadable (fhir.resources says why)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _error(code: str, diagnostics: str, *path: str) -> Issue:
    where = tuple(f"{_ROOT}.{p}" if p else _ROOT for p in path) if path else (_ROOT,)
    return Issue("error", code, diagnostics, where)


def _bounded(issues: list[Issue]) -> list[Issue]:
    if len(issues) <= MAX_ISSUES:
        return issues
    dropped = len(issues) - (MAX_ISSUES - 1)
    return [
        *issues[: MAX_ISSUES - 1],
        Issue("error", "too-costly", f"{dropped} further issues not listed"),
    ]
