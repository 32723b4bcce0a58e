"""The canonical form of the appointment a message carries: the FHIR R4B Appointment dict the
engine keeps as state, compares versions by and announces in events.

Rule kept: one function per input kind, pure. An SIU message is converted with
`siu_to_fhir` (HL7 times without an offset read in the configured zone); a FHIR Appointment
is taken as posted minus what belongs to the server that stores it (`id`, `meta`) and the
narrative (`text`, derived and possibly quoting the patient). A message that carries no
appointment the engine can key (not SIU S12-S17/S26, no SCH-1/SCH-2, no identifier) gives
None: it is routed and stored as ever, it just has no appointment state.
"""

from __future__ import annotations

from datetime import tzinfo
from typing import Any

from engine.appointments.state import appointment_key
from engine.conversions.codes import ConversionError, parse_hl7_timestamp
from engine.conversions.siu_to_fhir import SIU_TRIGGERS, siu_to_fhir
from engine.protocol.er7 import Message

__all__ = ["SERVER_ELEMENTS", "from_fhir", "from_siu", "siu_source_time"]

# Elements the storing server owns, never part of what a sender says about an appointment.
SERVER_ELEMENTS = frozenset({"id", "meta", "text"})


def from_siu(message: Message, tz: tzinfo) -> dict[str, Any] | None:
    """The Appointment an SIU message describes, or None (see the module docstring).

    A message whose fields cannot be converted (an unreadable SCH-11 time, an unknown SCH-25)
    also gives None here; a channel that converts it reports the error with the field.
    """
    if message.get("MSH-9.1") != "SIU" or message.get("MSH-9.2") not in SIU_TRIGGERS:
        return None
    try:
        resource = siu_to_fhir(message, tz=tz)
        appointment_key(resource)
    except (ConversionError, ValueError):
        return None
    return resource


def from_fhir(resource: dict[str, Any]) -> dict[str, Any] | None:
    """The canonical copy of a posted Appointment, or None without a usable identifier."""
    canonical = {k: v for k, v in resource.items() if k not in SERVER_ELEMENTS}
    try:
        appointment_key(canonical)
    except ValueError:
        return None
    return canonical


def siu_source_time(message: Message, tz: tzinfo) -> float | None:
    """MSH-7 as unix seconds: when the sender says the change happened; None if unreadable."""
    try:
        moment = parse_hl7_timestamp(message.get("MSH-7"), tz, "MSH-7")
    except ConversionError:
        return None
    return None if moment is None else moment.timestamp()
