"""Appointment state assessment: what a new version of an appointment means next to the last.

Rule kept: pure and deterministic. `assess` compares a FHIR R4B Appointment dict (the engine's
canonical form, as `engine.conversions.siu_to_fhir` produces it) with what the store holds for
the same appointment and the store's candidates for a clash, and says what changed and what
looks wrong. It never reads a clock, the store or the network, and its warning texts carry
appointment keys and actor ids only (never names, birth dates or contact details).

Decisions, in the order they are taken:

- Same mapped content as the current version (ignoring `id`, `meta` and `text`, comparing
  `start`/`end` as instants) -> "unchanged" with no warnings: a replay changes nothing and
  is neither flagged nor announced again.
- Nothing known -> "created" ("entered-in-error" for a deletion); an "unknown-appointment"
  warning when the status (cancelled, noshow, entered-in-error) or the caller
  (`expects_existing`: SIU S13/S14/S15/S17/S26, an HTTP PUT on an unknown id) says the
  appointment should already exist.
- `source_time` older than the current version's -> "out-of-order" warning and `apply` False:
  the store records the message as history but does not make it current. Equal times are in
  order (MSH-7 often has one-second resolution). An "update-after-cancel" is not raised for a
  late message: a stale booking arriving after its cancellation is the out-of-order case.
- Known cancelled or entered-in-error and new neither -> "update-after-cancel" warning.
- The change: a status newly cancelled / noshow / entered-in-error wins (a cancellation that
  also moves the time is a cancellation); else start or end moved -> "rescheduled"; else
  "updated".
- Double booking, for an applied version that is active: each of `overlapping` (the store's
  current versions of other appointments) is re-checked here: another key, active, sharing an
  actor (`actors`) and overlapping in time over half-open [start, end) (touching intervals do
  not overlap). An appointment without a readable start and end (or start and
  minutesDuration) takes part in no clash.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from engine.conversions.codes import FILL, IDENTIFIER_TYPE_SYSTEM, PLAC, parse_instant

__all__ = [
    "ACTOR_TYPES",
    "CALLER_TEXT",
    "CANCELLED_STATUSES",
    "INACTIVE_STATUSES",
    "Assessment",
    "Change",
    "Known",
    "WarningKind",
    "Warning_",
    "actor_id",
    "actor_type",
    "actors",
    "appointment_key",
    "assess",
    "instant",
    "interval",
]

Change = Literal["created", "updated", "rescheduled", "cancelled", "no_show",
                 "entered-in-error", "unchanged"]
WarningKind = Literal["unknown-appointment", "update-after-cancel", "out-of-order",
                      "double-booking"]

# What a sender is told about a conflict (ERR text, OperationOutcome): the kind in words, and
# nothing about the other appointments involved (their keys belong to other patients'
# bookings). The full warning, keys included, is kept in the store for `engine show`.
CALLER_TEXT: dict[WarningKind, str] = {
    "unknown-appointment": "the message changes or ends an appointment the engine has not seen",
    "update-after-cancel": "the appointment was cancelled; this message changes it again",
    "out-of-order": "the message is older than the appointment's current version",
    "double-booking": "a practitioner, location or device of this appointment is already "
                      "booked over an overlapping time",
}

# Participant actor types that can be double-booked (a patient can hold two appointments).
ACTOR_TYPES = ("Practitioner", "PractitionerRole", "Location", "Device")
# Statuses under which an appointment holds no time on anyone's schedule.
INACTIVE_STATUSES = frozenset({"cancelled", "noshow", "entered-in-error", "waitlist",
                               "proposed"})
# Statuses after which a further update is suspicious (the appointment is gone).
CANCELLED_STATUSES = frozenset({"cancelled", "entered-in-error"})
# Statuses that only make sense for an appointment that already exists.
_IMPLIES_EXISTING = frozenset({"cancelled", "noshow", "entered-in-error"})
_STATUS_CHANGE: dict[str, Change] = {"cancelled": "cancelled", "noshow": "no_show",
                                     "entered-in-error": "entered-in-error"}
# Elements that differ between copies of one version (server id, version metadata, narrative).
_NOT_CONTENT = frozenset({"id", "meta", "text"})


@dataclass(frozen=True)
class Known:
    """What the store holds for one appointment now."""

    key: str  # see appointment_key
    version: int
    resource: dict[str, Any]
    source_time: float | None  # when the sender says it happened (MSH-7 / meta.lastUpdated)


@dataclass(frozen=True)
class Warning_:
    """Something that looks wrong; `related` holds the keys of the other appointments."""

    kind: WarningKind
    text: str
    related: tuple[str, ...] = ()


@dataclass(frozen=True)
class Assessment:
    """What a new version means; `apply` False = record it, do not make it current."""

    change: Change
    warnings: tuple[Warning_, ...]
    apply: bool

    def has(self, kind: WarningKind) -> bool:
        """Whether a warning of this kind was raised."""
        return any(w.kind == kind for w in self.warnings)


# ---------------------------------------------------------------------------- identity


def booking_identifier(identifiers: Any) -> dict[str, Any] | None:
    """The identifier an appointment is known by everywhere in the engine (its state key, the
    FHIR destination's conditional update): the placer's, else the filler's, else the first
    one with a value; None when there is none."""
    usable = [i for i in (identifiers if isinstance(identifiers, list) else ())
              if isinstance(i, dict) and isinstance(i.get("value"), str) and i["value"]]
    for code in (PLAC, FILL):
        for identifier in usable:
            if _identifier_type(identifier) == code:
                return identifier
    return usable[0] if usable else None


def appointment_key(resource: dict[str, Any]) -> str:
    """"system|value" of the `booking_identifier`.

    An identifier without a system gives "|value" (FHIR token syntax for "no system").
    Raises ValueError when the resource has no identifier with a value.
    """
    identifier = booking_identifier(resource.get("identifier"))
    if identifier is None:
        raise ValueError("the appointment has no identifier with a value")
    return _token(identifier)


def _identifier_type(identifier: dict[str, Any]) -> str:
    kind = identifier.get("type")
    codings = kind.get("coding") if isinstance(kind, dict) else None
    for coding in codings if isinstance(codings, list) else ():
        if (isinstance(coding, dict)
                and coding.get("system") in (IDENTIFIER_TYPE_SYSTEM, None)
                and coding.get("code") in (PLAC, FILL)):
            return str(coding["code"])
    return ""


def _token(identifier: dict[str, Any]) -> str:
    system = identifier.get("system")
    return f"{system if isinstance(system, str) else ''}|{identifier['value']}"


def actor_id(actor: Any) -> str | None:
    """A participant actor's reference ("Practitioner/x") or identifier ("system|value")."""
    if not isinstance(actor, dict):
        return None
    reference = actor.get("reference")
    if isinstance(reference, str) and reference:
        return reference.split("/_history/", 1)[0]
    identifier = actor.get("identifier")
    if isinstance(identifier, dict) and isinstance(identifier.get("value"), str) \
            and identifier["value"]:
        return _token(identifier)
    return None


def actor_type(actor: Any) -> str:
    """The actor's resource type, from its reference when it has one, else from `type`."""
    if not isinstance(actor, dict):
        return ""
    reference = actor.get("reference")
    if isinstance(reference, str) and "/" in reference:
        parts = reference.split("/_history/", 1)[0].split("/")
        return parts[-2]
    kind = actor.get("type")
    return kind if isinstance(kind, str) else ""


def actors(resource: dict[str, Any]) -> tuple[str, ...]:
    """Ids of the schedulable actors the appointment holds, in participant order, unique.

    References are kept as written ("Practitioner/x"); identifiers become
    "Type|system|value" ("Location|urn:...|ROOM1"). Patients are left out (they may hold two
    appointments), and so are participants who declined: they are not held by the booking.
    """
    out: dict[str, None] = {}
    for participant in resource.get("participant") or ():
        if not isinstance(participant, dict) or participant.get("status") == "declined":
            continue
        actor = participant.get("actor")
        kind = actor_type(actor)
        ident = actor_id(actor)
        if kind not in ACTOR_TYPES or ident is None:
            continue
        if isinstance(actor, dict) and isinstance(actor.get("reference"), str) \
                and actor["reference"]:
            out[ident] = None
        else:
            out[f"{kind}|{ident}"] = None
    return tuple(out)


# ---------------------------------------------------------------------------- time


def instant(value: Any) -> datetime | None:
    """An aware datetime for a FHIR instant; None when absent or unreadable."""
    try:
        return parse_instant(value, "start")
    except ValueError:  # ConversionError: an invalid instant is validated elsewhere
        return None


def interval(resource: dict[str, Any]) -> tuple[datetime, datetime] | None:
    """[start, end) of the appointment; end from minutesDuration when absent; else None."""
    start = instant(resource.get("start"))
    if start is None:
        return None
    end = instant(resource.get("end"))
    minutes = resource.get("minutesDuration")
    if end is None and isinstance(minutes, int) and not isinstance(minutes, bool) \
            and minutes > 0:
        end = start + timedelta(minutes=minutes)
    return None if end is None else (start, end)


def _same_time(a: Any, b: Any) -> bool:
    ta, tb = instant(a), instant(b)
    if ta is None or tb is None:
        return bool(a == b)  # unreadable or absent: compare as written
    return ta == tb


def _content(resource: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in resource.items() if k not in _NOT_CONTENT}
    for element in ("start", "end"):
        moment = instant(out.get(element))
        if moment is not None:
            out[element] = moment.timestamp()
    return out


# ---------------------------------------------------------------------------- assessment


def assess(new: dict[str, Any], known: Known | None, *, source_time: float | None,
           overlapping: Sequence[Known] = (), expects_existing: bool = False) -> Assessment:
    """What `new` means next to `known` (None: never seen); see the module docstring."""
    key = appointment_key(new)
    status = new.get("status")
    if known is None:
        warnings: list[Warning_] = []
        if expects_existing or status in _IMPLIES_EXISTING:
            warnings.append(Warning_(
                "unknown-appointment",
                f"appointment {key} is not known: the message updates or ends an appointment "
                "the engine has not seen", (key,)))
        change: Change = "entered-in-error" if status == "entered-in-error" else "created"
        warnings.extend(_double_booking(key, new, overlapping, exclude=(key,)))
        return Assessment(change, tuple(warnings), apply=True)

    if _content(new) == _content(known.resource):
        return Assessment("unchanged", (), apply=True)

    warnings = []
    late = (source_time is not None and known.source_time is not None
            and source_time < known.source_time)
    if late:
        warnings.append(Warning_(
            "out-of-order",
            f"appointment {key}: message is older than version {known.version} "
            "(recorded, not made current)", (known.key,)))
    old_status = known.resource.get("status")
    if not late and old_status in CANCELLED_STATUSES and status not in CANCELLED_STATUSES:
        warnings.append(Warning_(
            "update-after-cancel",
            f"appointment {key} was {old_status} (version {known.version}) and is now "
            f"{status}", (known.key,)))
    change = _change(new, known.resource)
    if not late:
        warnings.extend(_double_booking(key, new, overlapping, exclude=(key, known.key)))
    return Assessment(change, tuple(warnings), apply=not late)


def _change(new: dict[str, Any], old: dict[str, Any]) -> Change:
    status = new.get("status")
    if isinstance(status, str) and status in _STATUS_CHANGE and status != old.get("status"):
        return _STATUS_CHANGE[status]
    if not (_same_time(new.get("start"), old.get("start"))
            and _same_time(new.get("end"), old.get("end"))):
        return "rescheduled"
    return "updated"


def _active(resource: dict[str, Any]) -> bool:
    return resource.get("status") not in INACTIVE_STATUSES


def _double_booking(key: str, new: dict[str, Any], others: Iterable[Known], *,
                    exclude: tuple[str, ...]) -> list[Warning_]:
    span = interval(new)
    mine = set(actors(new))
    if span is None or not mine or not _active(new):
        return []
    clashes: dict[str, set[str]] = {}
    for other in others:
        if other.key in exclude or not _active(other.resource):
            continue
        shared = mine.intersection(actors(other.resource))
        other_span = interval(other.resource)
        if not shared or other_span is None:
            continue
        if span[0] < other_span[1] and other_span[0] < span[1]:
            clashes.setdefault(other.key, set()).update(shared)
    if not clashes:
        return []
    related = tuple(sorted(clashes))
    held = sorted(set().union(*clashes.values()))
    return [Warning_(
        "double-booking",
        f"appointment {key} overlaps {', '.join(related)} on {', '.join(held)}", related)]
