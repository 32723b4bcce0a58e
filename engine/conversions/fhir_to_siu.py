"""FHIR R4B Appointment (a JSON dict) -> SIU message, the trigger chosen from the last state.

Rule kept: the reverse of `siu_to_fhir` over the same table (see that module for the list of
mapped fields); every text goes through `Message.set`, so separators and line breaks in free
text and ids are escaped, never spliced. Pure: clock, control id and the previous state of
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


def fhir_to_siu(resource: dict[str, Any], previous: dict[str, Any] | None, *,
                control_id: str, now: datetime, sender: str = "ENGINE",
                receiver: str = "") -> Message:
    """The SIU message for `resource`; `now` (aware) becomes MSH-7.

    Raises `ConversionError` for an unmapped status, an unreadable start/end, or a naive `now`.
    """
    if now.tzinfo is None:
        raise ConversionError("now must be an aware datetime")
    trigger = trigger_for(resource, previous)
    msg = Message.parse("MSH|^~\\&|")
    _put(msg, "MSH-3", sender)
    _put(msg, "MSH-5", receiver)
    msg.set("MSH-7", hl7_timestamp(now))
    for path, value in (("MSH-9.1", "SIU"), ("MSH-9.2", trigger), ("MSH-9.3", "SIU_S12"),
                        ("MSH-10", control_id), ("MSH-11", "P"), ("MSH-12", "2.5.1"),
                        ("MSH-18", "UNICODE UTF-8")):
        msg.set(path, value)

    _schedule(msg, resource)
    start = parse_instant(resource.get("start"), "start")
    end = parse_instant(resource.get("end"), "end")
    if start is not None or end is not None:
        msg.set("TQ1-1", "1")
        _put(msg, "TQ1-7", hl7_timestamp(start) if start else "")
        _put(msg, "TQ1-8", hl7_timestamp(end) if end else "")
    comment = resource.get("comment")
    if isinstance(comment, str) and comment:
        msg.set("NTE-1", "1")
        msg.set("NTE-3", comment)

    participants = [p for p in resource.get("participant") or () if isinstance(p, dict)]
    patients = [p for p in participants if _actor_type(p) == "Patient"]
    for k, participant in enumerate(patients, 1):
        _patient(msg, k, participant)
    action = _ACTION.get(trigger, "U")
    msg.set("RGS-1", "1")
    msg.set("RGS-2", action)
    minutes = resource.get("minutesDuration")
    timing = (hl7_timestamp(start) if start else "",
              str(minutes) if isinstance(minutes, int) else "")
    services = [s for s in resource.get("serviceType") or () if isinstance(s, dict)]
    for k, service in enumerate(services, 1):
        seg = _resource_head(msg, "AIS", k, action, timing)
        _put_cwe(msg, f"{seg}-3", service)
    for name in ("AIG", "AIL", "AIP"):
        chosen = [p for p in participants if _ACTOR_SEGMENT.get(_actor_type(p)) == name]
        for k, participant in enumerate(chosen, 1):
            _resource(msg, name, k, participant, action, timing)
    return msg


def _put(msg: Message, path: str, value: str) -> None:
    if value:
        msg.set(path, value)


def _put_cwe(msg: Message, path: str, concept: Any) -> None:
    msg.set_components(path, cwe_of(concept))


def _schedule(msg: Message, resource: dict[str, Any]) -> None:
    placer, filler = _appointment_ids(resource.get("identifier"))
    for field, identifier in ((1, placer), (2, filler)):
        if identifier is None:
            continue
        msg.set_components(f"SCH-{field}", (str(identifier.get("value", "")),
                                             *hd_of(identifier)))
    reasons = resource.get("reasonCode")
    if isinstance(reasons, list) and reasons:
        _put_cwe(msg, "SCH-7", reasons[0])
    _put_cwe(msg, "SCH-8", resource.get("appointmentType"))
    minutes = resource.get("minutesDuration")
    if isinstance(minutes, int):
        msg.set("SCH-9", str(minutes))
        msg.set("SCH-10", "min")
    start = parse_instant(resource.get("start"), "start")
    end = parse_instant(resource.get("end"), "end")
    _put(msg, "SCH-11.4", hl7_timestamp(start) if start else "")
    _put(msg, "SCH-11.5", hl7_timestamp(end) if end else "")
    msg.set("SCH-25", v2_status(str(resource.get("status", ""))))


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


def _patient(msg: Message, k: int, participant: dict[str, Any]) -> None:
    seg = f"PID[{k}]"
    msg.set(f"{seg}-1", str(k))
    identifier = _actor_identifier(participant)
    msg.set_components(f"{seg}-3", (str(identifier.get("value", "")), "", "", "",
                                    cwe_of(identifier.get("type"))[0]))
    msg.set_components(f"{seg}-3.4", hd_of(identifier))


def _resource_head(msg: Message, name: str, k: int, action: str,
                   timing: tuple[str, str]) -> str:
    seg = f"{name}[{k}]"
    start_field, duration_field, _ = _LAYOUT[name]
    msg.set(f"{seg}-1", str(k))
    msg.set(f"{seg}-2", action)
    _put(msg, f"{seg}-{start_field}", timing[0])
    if timing[1]:
        msg.set(f"{seg}-{duration_field}", timing[1])
        msg.set(f"{seg}-{duration_field + 1}", "min")
    return seg


def _resource(msg: Message, name: str, k: int, participant: dict[str, Any], action: str,
              timing: tuple[str, str]) -> None:
    seg = _resource_head(msg, name, k, action, timing)
    identifier = _actor_identifier(participant)
    value = str(identifier.get("value", ""))
    if name == "AIG":
        system = coding_system_name(str(identifier.get("system") or ""))
        display = participant["actor"].get("display")
        msg.set_components(f"{seg}-3",
                           (value, display if isinstance(display, str) else "", system))
    else:
        _put(msg, f"{seg}-3.1", value)
        hd_path = f"{seg}-3.4" if name == "AIL" else f"{seg}-3.9"
        msg.set_components(hd_path, hd_of(identifier))
    types = participant.get("type")
    if isinstance(types, list) and types:
        _put_cwe(msg, f"{seg}-4", types[0])
    status = participant.get("status")
    if isinstance(status, str):
        msg.set(f"{seg}-{_LAYOUT[name][2]}", resource_status_code(status))
