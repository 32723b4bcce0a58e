"""FHIR R4B Appointment (a JSON dict) -> SIU message, the trigger chosen from the last state.

Rule kept: the reverse of `siu_to_fhir` over the same table (see that module for the list of
mapped fields); every text is escaped for the message's encoding characters as it is put in
its field (`_Segment.put`), so separators and line breaks in free text and ids are escaped,
never spliced. Pure: clock, control id and the previous state of
the appointment are passed in.

Trigger (`trigger_for`, a choice of this project): status cancelled -> S15,
entered-in-error -> S17, noshow -> S26 (these win, so a cancellation is always sent as one,
known or not); else no previous state -> S12; start or end changed (as instants) -> S13;
anything else -> S14.

Output layout: MSH (v2.5.1, UTF-8), SCH, TQ1 (start/end repeated for v2.7+ readers), one NTE
holding the comment, a PID per Patient participant, one RGS, then AIS per serviceType, AIG
per Device, AIL per Location, AIP per Practitioner/PractitionerRole participant. Each
resource segment carries the appointment start (and duration when minutesDuration is given)
and the RGS/AIx action code of the trigger (A for S12, D for S15/S17, U otherwise).

Lossy: proposed -> Pending and arrived -> Started (they come back as pending and checked-in);
only the first reasonCode, first coding and first participant.type are sent; participants
that are neither Patient, Practitioner(Role), Location nor Device, or that have no actor, are
dropped; the patient's participant status has no v2 field; identifiers beyond one placer and
one filler are dropped. SCH-6 (event reason) is left empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from engine.conversions.codes import (
    FILL,
    PLAC,
    ConversionError,
    coding_system_name,
    cwe_of,
    hd_of,
    hl7_timestamp,
    parse_instant,
    resource_status_code,
    v2_status,
)
from engine.protocol.encoding import Encoding, escape
from engine.protocol.er7 import Message

__all__ = ["fhir_to_siu", "trigger_for"]

_STATUS_TRIGGERS = {"cancelled": "S15", "entered-in-error": "S17", "noshow": "S26"}
_ACTION = {"S12": "A", "S15": "D", "S17": "D"}  # others: U (update)
# segment -> (start field, duration field, status field)
_LAYOUT = {"AIS": (4, 7, 10), "AIG": (8, 11, 14), "AIL": (6, 9, 12), "AIP": (6, 9, 12)}
_ACTOR_SEGMENT = {"Device": "AIG", "Location": "AIL", "Practitioner": "AIP",
                  "PractitionerRole": "AIP"}


def trigger_for(resource: dict[str, Any], previous: dict[str, Any] | None) -> str:
    """The SIU trigger event announcing `resource` to a peer that last saw `previous`."""
    special = _STATUS_TRIGGERS.get(resource.get("status", ""))
    if special is not None:
        return special
    if previous is None:
        return "S12"
    for element in ("start", "end"):
        if (parse_instant(resource.get(element), element)
                != parse_instant(previous.get(element), element)):
            return "S13"
    return "S14"


class _Segment:
    """One segment being built: fields by number, each escaped when put. Building the text
    and parsing it once costs a fraction of one `Message.set` per field."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.fields: list[str] = []

    def put(self, number: int, value: str | Sequence[str | tuple[str, ...]]) -> None:
        """Field `number`: a text, or its components, each escaped (a component given as a
        tuple is its subcomponents). Trailing empty parts are left out; empty writes
        nothing."""
        if isinstance(value, str):
            text = escape(value, _ENCODING)
        else:
            text = _join(_ENCODING.component, [
                _join(_ENCODING.subcomponent, [escape(x, _ENCODING) if x else "" for x in v])
                if isinstance(v, tuple) else escape(v, _ENCODING) if v else ""
                for v in value
            ])
        if not text:
            return
        if len(self.fields) < number:
            self.fields.extend([""] * (number - len(self.fields)))
        self.fields[number - 1] = text

    def text(self) -> str:
        return "|".join((self.name, *self.fields))


_ENCODING = Encoding()


def _join(separator: str, parts: list[str]) -> str:
    while parts and not parts[-1]:
        parts.pop()
    return separator.join(parts)


def fhir_to_siu(resource: dict[str, Any], previous: dict[str, Any] | None, *,
                control_id: str, now: datetime, sender: str = "ENGINE",
                receiver: str = "") -> Message:
    """The SIU message for `resource`; `now` (aware) becomes MSH-7.

    Raises `ConversionError` for an unmapped status, an unreadable start/end, or a naive `now`.
    """
    if now.tzinfo is None:
        raise ConversionError("now must be an aware datetime")
    trigger = trigger_for(resource, previous)
    # MSH-1 is the separator itself: field n of this list is MSH-(n+1).
    msh = _Segment("MSH")
    msh.fields.append(_ENCODING.msh2)
    for number, value in ((3, sender), (5, receiver), (7, hl7_timestamp(now)),
                          (10, control_id), (11, "P"), (12, "2.5.1"), (18, "UNICODE UTF-8")):
        msh.put(number - 1, value)
    msh.put(8, ("SIU", trigger, "SIU_S12"))
    segments = [msh, _schedule(resource)]

    start = parse_instant(resource.get("start"), "start")
    end = parse_instant(resource.get("end"), "end")
    start_text = hl7_timestamp(start) if start else ""
    if start is not None or end is not None:
        tq1 = _Segment("TQ1")
        tq1.put(1, "1")
        tq1.put(7, start_text)
        tq1.put(8, hl7_timestamp(end) if end else "")
        segments.append(tq1)
    comment = resource.get("comment")
    if isinstance(comment, str) and comment:
        nte = _Segment("NTE")
        nte.put(1, "1")
        nte.put(3, comment)
        segments.append(nte)

    participants = [p for p in resource.get("participant") or () if isinstance(p, dict)]
    patients = [p for p in participants if _actor_type(p) == "Patient"]
    segments.extend(_patient(k, participant) for k, participant in enumerate(patients, 1))
    action = _ACTION.get(trigger, "U")
    rgs = _Segment("RGS")
    rgs.put(1, "1")
    rgs.put(2, action)
    segments.append(rgs)
    minutes = resource.get("minutesDuration")
    timing = (start_text, str(minutes) if isinstance(minutes, int) else "")
    services = [s for s in resource.get("serviceType") or () if isinstance(s, dict)]
    for k, service in enumerate(services, 1):
        ais = _resource_head("AIS", k, action, timing)
        ais.put(3, cwe_of(service))
        segments.append(ais)
    for name in ("AIG", "AIL", "AIP"):
        chosen = [p for p in participants if _ACTOR_SEGMENT.get(_actor_type(p)) == name]
        segments.extend(_resource(name, k, participant, action, timing)
                        for k, participant in enumerate(chosen, 1))
    return Message.parse("\r".join(segment.text() for segment in segments))


def _schedule(resource: dict[str, Any]) -> _Segment:
    sch = _Segment("SCH")
    placer, filler = _appointment_ids(resource.get("identifier"))
    for field, identifier in ((1, placer), (2, filler)):
        if identifier is not None:
            sch.put(field, (str(identifier.get("value", "")), *hd_of(identifier)))
    reasons = resource.get("reasonCode")
    if isinstance(reasons, list) and reasons:
        sch.put(7, cwe_of(reasons[0]))
    sch.put(8, cwe_of(resource.get("appointmentType")))
    minutes = resource.get("minutesDuration")
    if isinstance(minutes, int):
        sch.put(9, str(minutes))
        sch.put(10, "min")
    start = parse_instant(resource.get("start"), "start")
    end = parse_instant(resource.get("end"), "end")
    sch.put(11, ("", "", "", hl7_timestamp(start) if start else "",
                 hl7_timestamp(end) if end else ""))
    sch.put(25, v2_status(str(resource.get("status", ""))))
    return sch


def _appointment_ids(identifiers: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(placer, filler): typed PLAC/FILL first, untyped ones fill the free slots in order."""
    slots: dict[str, dict[str, Any]] = {}
    untyped = []
    for identifier in identifiers if isinstance(identifiers, list) else ():
        if not isinstance(identifier, dict) or not identifier.get("value"):
            continue
        code = cwe_of(identifier.get("type"))[0]
        if code in (PLAC, FILL):
            slots.setdefault(code, identifier)
        else:
            untyped.append(identifier)
    for code in (PLAC, FILL):
        if code not in slots and untyped:
            slots[code] = untyped.pop(0)
    return slots.get(PLAC), slots.get(FILL)


def _actor_type(participant: dict[str, Any]) -> str:
    actor = participant.get("actor")
    if not isinstance(actor, dict):
        return ""
    kind = actor.get("type")
    if isinstance(kind, str) and kind:
        return kind.removeprefix("http://hl7.org/fhir/StructureDefinition/")
    reference = actor.get("reference")
    return reference.split("/")[0] if isinstance(reference, str) and "/" in reference else ""


def _actor_identifier(participant: dict[str, Any]) -> dict[str, Any]:
    """The actor's identifier, or one made from a literal reference's id (no system)."""
    actor = participant["actor"]
    identifier = actor.get("identifier")
    if isinstance(identifier, dict) and identifier.get("value"):
        return identifier
    reference = actor.get("reference")
    if isinstance(reference, str) and "/" in reference:
        return {"value": reference.rsplit("/", 1)[-1]}
    return {}


def _patient(k: int, participant: dict[str, Any]) -> _Segment:
    pid = _Segment("PID")
    pid.put(1, str(k))
    identifier = _actor_identifier(participant)
    pid.put(3, (str(identifier.get("value", "")), "", "", hd_of(identifier),
                cwe_of(identifier.get("type"))[0]))
    return pid


def _resource_head(name: str, k: int, action: str, timing: tuple[str, str]) -> _Segment:
    segment = _Segment(name)
    start_field, duration_field, _ = _LAYOUT[name]
    segment.put(1, str(k))
    segment.put(2, action)
    segment.put(start_field, timing[0])
    if timing[1]:
        segment.put(duration_field, timing[1])
        segment.put(duration_field + 1, "min")
    return segment


def _resource(name: str, k: int, participant: dict[str, Any], action: str,
              timing: tuple[str, str]) -> _Segment:
    segment = _resource_head(name, k, action, timing)
    identifier = _actor_identifier(participant)
    value = str(identifier.get("value", ""))
    if name == "AIG":
        system = coding_system_name(str(identifier.get("system") or ""))
        display = participant["actor"].get("display")
        segment.put(3, (value, display if isinstance(display, str) else "", system))
    else:
        hd = hd_of(identifier)
        # AIL-3 is a PL (facility in component 4), AIP-3 an XCN (assigning authority in 9).
        gap: list[str | tuple[str, ...]] = ["", ""] if name == "AIL" else [""] * 7
        segment.put(3, [value, *gap, hd])
    types = participant.get("type")
    if isinstance(types, list) and types:
        segment.put(4, cwe_of(types[0]))
    status = participant.get("status")
    if isinstance(status, str):
        segment.put(_LAYOUT[name][2], resource_status_code(status))
    return segment
