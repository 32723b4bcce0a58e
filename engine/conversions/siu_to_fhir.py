"""SIU S12-S17, S26 -> FHIR R4B Appointment (a plain JSON dict), per REFERENCE.md's table.

Rule kept: pure and total over what it maps. Every value comes from one field of the table
below; nothing is looked up elsewhere, so the same message always gives the same resource.
The caller validates the result (`engine.fhir.check_appointment`) and owns the resource `id`:
none is set here, because the id belongs to the FHIR server that stores the resource, and the
engine keys appointments by identifier (placer/filler ids may also hold characters a FHIR id
cannot).

Mapped fields (the round trip SIU -> FHIR -> SIU keeps exactly these):
- SCH-1 / SCH-2 (EI: id, namespace, universal id, type) -> identifier typed PLAC / FILL
  (v2-0203); the system comes from the namespace (`codes.identifier_system`).
- SCH-25.1 with the trigger overrides (S15/S16 cancelled, S17 entered-in-error, S26 noshow)
  -> status. SCH-7.1-3 -> reasonCode[0]; SCH-8.1-3 -> appointmentType.
- SCH-9 when SCH-10.1 is a minute unit -> minutesDuration.
- SCH-11.4.1 / SCH-11.5.1, else TQ1-7.1 / TQ1-8.1 -> start / end; end = start + duration when
  absent. DTMs without an offset are read in `tz` (default UTC).
- NTE-3 (every repetition) of the NTEs right after SCH/TQ1 -> comment, joined with "\\n".
- per PID: PID-3[1].1, .4 (HD), .5 -> participant actor Patient (identifier), status accepted.
- per AIG: AIG-3.1-3 -> actor Device (identifier value/system, display), AIG-4 -> type[0],
  AIG-14 -> status. Per AIL: AIL-3.1 and AIL-3.4 (facility HD) -> actor Location identifier,
  AIL-4 -> type[0], AIL-12 -> status. Per AIP: AIP-3.1 and AIP-3.9 (HD) -> actor Practitioner
  identifier, AIP-4 -> type[0], AIP-12 -> status. Per AIS: AIS-3.1-3 -> serviceType.

Lossy (kept out of the comparison, by design): Blocked/Overbook -> booked and Dc -> cancelled
(S16 comes back as S15); other PID-3 repetitions; names (AIP-3 names become only a display);
PL room/bed; RGS grouping; resource start times, durations and AIS-10; SCH-6 and every field
not listed; codes with odd whitespace are normalised (FHIR codes allow single inner spaces).
"""

from __future__ import annotations

from datetime import UTC, timedelta, tzinfo
from typing import Any

from engine.conversions.codes import (
    FILL,
    IDENTIFIER_TYPE_SYSTEM,
    PLAC,
    ConversionError,
    codeable_concept,
    coding_system_uri,
    fhir_instant,
    fhir_status,
    identifier_system,
    parse_hl7_timestamp,
    participant_status,
)
from engine.protocol.er7 import Message

__all__ = ["MINUTE_UNITS", "SIU_TRIGGERS", "siu_to_fhir"]

SIU_TRIGGERS = frozenset({"S12", "S13", "S14", "S15", "S16", "S17", "S26"})
# SCH-10.1 values meaning minutes, casefolded (UCUM "min", ANSI "MIN", spelled out).
MINUTE_UNITS = frozenset({"min", "minute", "minutes"})
# Segments that end the SCH-level NTE group (the patient and resource groups begin).
_GROUP_STARTS = frozenset({"PID", "PD1", "PV1", "PV2", "OBX", "DG1", "RGS", "AIS", "AIG",
                           "AIL", "AIP"})


def siu_to_fhir(message: Message, *, tz: tzinfo = UTC) -> dict[str, Any]:
    """The R4B Appointment for an SIU message; `tz` is the zone of DTMs without an offset.

    Raises `ConversionError` for a message that is not SIU S12-S17/S26, has neither SCH-1
    nor SCH-2, or holds an unreadable timestamp or status.
    """
    trigger = message.get("MSH-9.2")
    if message.get("MSH-9.1") != "SIU" or trigger not in SIU_TRIGGERS:
        raise ConversionError("MSH-9 is not an SIU S12-S17 or S26 message type")
    resource: dict[str, Any] = {"resourceType": "Appointment"}
    identifiers = [i for i in (_appointment_id(message, 1, PLAC),
                               _appointment_id(message, 2, FILL)) if i]
    if not identifiers:
        raise ConversionError("SCH-1 and SCH-2 are both empty: the appointment has no id")
    resource["identifier"] = identifiers
    resource["status"] = fhir_status(message.get("SCH-25.1"), trigger)
    services = [
        concept for k in range(1, message.segment_count("AIS") + 1)
        if (concept := _concept(message, f"AIS[{k}]-3")) is not None
    ]
    if services:
        resource["serviceType"] = services
    kind = _concept(message, "SCH-8")
    if kind is not None:
        resource["appointmentType"] = kind
    reason = _concept(message, "SCH-7")
    if reason is not None:
        resource["reasonCode"] = [reason]
    minutes = _minutes(message)
    _times(message, resource, minutes, tz)
    if minutes is not None:
        resource["minutesDuration"] = minutes
    comment = "\n".join(_notes(message))
    if comment:
        resource["comment"] = comment
    resource["participant"] = _participants(message)
    return resource


def _appointment_id(message: Message, field: int, code: str) -> dict[str, Any] | None:
    value, namespace, universal_id, id_type = message.components(f"SCH-{field}", 4)
    if not value:
        return None
    return {
        "type": {"coding": [{"system": IDENTIFIER_TYPE_SYSTEM, "code": code}]},
        **identifier_system(namespace, universal_id, id_type),
        "value": value,
    }


def _concept(message: Message, path: str) -> dict[str, Any] | None:
    return codeable_concept(*message.components(path, 3))


def _minutes(message: Message) -> int | None:
    units = message.get("SCH-10.1").strip().casefold()
    duration = message.get("SCH-9").strip()
    if units not in MINUTE_UNITS or not duration.isdigit() or not duration.isascii():
        return None
    minutes = int(duration)
    return minutes if minutes > 0 else None  # FHIR minutesDuration is a positiveInt


def _times(message: Message, resource: dict[str, Any], minutes: int | None,
           tz: tzinfo) -> None:
    if message.get("SCH-11.4.1"):
        start_path, end_path = "SCH-11.4.1", "SCH-11.5.1"
    else:
        start_path, end_path = "TQ1-7.1", "TQ1-8.1"
    start = parse_hl7_timestamp(message.get(start_path), tz, start_path)
    end = parse_hl7_timestamp(message.get(end_path), tz, end_path)
    if end is None and start is not None and minutes is not None:
        end = start + timedelta(minutes=minutes)
    if start is not None:
        resource["start"] = fhir_instant(start)
    if end is not None:
        resource["end"] = fhir_instant(end)


def _notes(message: Message) -> list[str]:
    """NTE-3 repetitions of the NTE segments that follow SCH/TQ1 (not resource notes)."""
    notes: list[str] = []
    in_schedule = False
    nte = 0
    for name in message.segment_names():
        if name == "NTE":
            nte += 1
            if in_schedule:
                notes.extend(message.get_all(f"NTE[{nte}]-3"))
        elif name == "SCH":
            in_schedule = True
        elif name in _GROUP_STARTS:
            in_schedule = False
    return notes


def _participants(message: Message) -> list[dict[str, Any]]:
    out = []
    for k in range(1, message.segment_count("PID") + 1):
        value, _, _, _, id_type = message.components(f"PID[{k}]-3", 5)
        if not value:
            continue
        identifier: dict[str, Any] = {}
        if id_type:
            identifier["type"] = {"coding": [{"system": IDENTIFIER_TYPE_SYSTEM,
                                              "code": " ".join(id_type.split())}]}
        identifier.update(_hd(message, f"PID[{k}]-3.4"))
        identifier["value"] = value
        actor = {"type": "Patient", "identifier": identifier}
        out.append({"actor": actor, "status": "accepted"})
    for name in ("AIG", "AIL", "AIP"):
        for k in range(1, message.segment_count(name) + 1):
            participant = _resource(message, name, k)
            if participant is not None:
                out.append(participant)
    return out


def _hd(message: Message, path: str) -> dict[str, Any]:
    return identifier_system(*message.components(path, 3))


# segment -> (status field, actor type)
_RESOURCES = {"AIG": (14, "Device"), "AIL": (12, "Location"), "AIP": (12, "Practitioner")}


def _resource(message: Message, name: str, k: int) -> dict[str, Any] | None:
    seg = f"{name}[{k}]"
    status_field, actor_type = _RESOURCES[name]
    actor: dict[str, Any] = {"type": actor_type}
    value, second, third = message.components(f"{seg}-3", 3)
    if name == "AIG":
        display = second
        if value:
            system = coding_system_uri(third)
            actor["identifier"] = {"system": system, "value": value} if system else {
                "value": value}
        if display:
            actor["display"] = display
        if not value and not display:
            return None
    else:
        if not value:
            return None
        hd = _hd(message, f"{seg}-3.4" if name == "AIL" else f"{seg}-3.9")
        actor["identifier"] = {**hd, "value": value}
        if name == "AIP":
            display = " ".join(n for n in (third, message.get(f"{seg}-3.2.1")) if n)
            if display:
                actor["display"] = display
    participant: dict[str, Any] = {}
    role = _concept(message, f"{seg}-4")
    if role is not None:
        participant["type"] = [role]
    participant["actor"] = actor
    status_path = f"{name}-{status_field}"
    participant["status"] = participant_status(message.get(f"{seg}-{status_field}.1"),
                                               status_path)
    return participant
