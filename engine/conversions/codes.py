"""Shared vocabulary of the SIU <-> FHIR conversions: status tables, code and identifier
systems, and HL7 v2 timestamp <-> FHIR instant helpers.

Rule kept: every table here is read in both directions, so a value mapped forward maps back
to the same meaning. Where HL7 v2 says more than FHIR can hold (several v2 codes for one
FHIR code), the reverse table picks one canonical v2 code and the loss is written beside the
table. Error texts name fields, never their content.

Timestamps: an HL7 DTM `YYYY[MM[DD[HH[MM[SS[.S{1,4}]]]]]][+/-ZZZZ]` becomes a FHIR instant.
A DTM without an offset is read in the zone passed as `tz` (the conversions default to UTC);
missing month/day default to 01 and missing time parts to 0, so a date-only value means
midnight. FHIR instants are written back as `YYYYMMDDHHMM[SS[.ffff]]+ZZZZ` in the instant's own
offset: always with an offset, seconds only when not zero, at most 4 fraction digits (HL7's
limit: finer fractions are cut).
"""

from __future__ import annotations

import functools
import re
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any
from urllib.parse import quote, unquote

__all__ = [
    "CODING_SYSTEM_PREFIX",
    "FILL",
    "IDENTIFIER_TYPE_SYSTEM",
    "NAMESPACE_PREFIX",
    "PLAC",
    "TRIGGER_STATUS",
    "ConversionError",
    "codeable_concept",
    "coding_system_name",
    "coding_system_uri",
    "cwe_of",
    "fhir_instant",
    "fhir_status",
    "hd_of",
    "hl7_timestamp",
    "identifier_system",
    "parse_hl7_timestamp",
    "parse_instant",
    "participant_status",
    "resource_status_code",
    "v2_status",
]


class ConversionError(ValueError):
    """A message or resource the conversion cannot map; the text names a field, not a value."""


# ---------------------------------------------------------------------------- statuses

# SCH-25 (table 0278) -> Appointment.status, keys casefolded. Lossy: Blocked and Overbook have
# no FHIR equivalent and become booked; Dc/Discontinued become cancelled (like S16).
_V2_TO_FHIR_STATUS = {
    "pending": "pending",
    "waitlist": "waitlist",
    "booked": "booked",
    "started": "checked-in",
    "complete": "fulfilled",
    "cancelled": "cancelled",
    "canceled": "cancelled",
    "dc": "cancelled",
    "discontinued": "cancelled",
    "deleted": "entered-in-error",
    "noshow": "noshow",
    "blocked": "booked",
    "overbook": "booked",
}

# Appointment.status -> SCH-25. Lossy: proposed (no v2 code) goes as Pending and arrived as
# Started; both come back as pending and checked-in.
_FHIR_TO_V2_STATUS = {
    "proposed": "Pending",
    "pending": "Pending",
    "waitlist": "Waitlist",
    "booked": "Booked",
    "arrived": "Started",
    "checked-in": "Started",
    "fulfilled": "Complete",
    "cancelled": "Cancelled",
    "entered-in-error": "Deleted",
    "noshow": "Noshow",
}

# The trigger says more than SCH-25 when they disagree (an S15 is a cancellation whatever
# SCH-25 says).
TRIGGER_STATUS = {"S15": "cancelled", "S16": "cancelled", "S17": "entered-in-error",
                  "S26": "noshow"}

# Resource-level filler status (AIS-10, AIG-14, AIL-12, AIP-12; table 0278) -> participant
# status. An empty one counts as accepted: the resource is part of the booking.
_V2_TO_PARTICIPANT = {
    "": "accepted",
    "booked": "accepted",
    "started": "accepted",
    "complete": "accepted",
    "blocked": "accepted",
    "overbook": "accepted",
    "pending": "needs-action",
    "waitlist": "tentative",
    "cancelled": "declined",
    "canceled": "declined",
    "dc": "declined",
    "discontinued": "declined",
    "deleted": "declined",
    "noshow": "declined",
}
_PARTICIPANT_TO_V2 = {
    "accepted": "Booked",
    "needs-action": "Pending",
    "tentative": "Waitlist",
    "declined": "Cancelled",
}


def fhir_status(sch25: str, trigger: str) -> str:
    """Appointment.status for SCH-25.1 and the trigger event (an empty SCH-25 means booked)."""
    override = TRIGGER_STATUS.get(trigger)
    if override is not None:
        return override
    status = _V2_TO_FHIR_STATUS.get(sch25.strip().casefold() or "booked")
    if status is None:
        raise ConversionError("SCH-25 holds a filler status outside table 0278")
    return status


def v2_status(status: str) -> str:
    """SCH-25.1 for an Appointment.status."""
    try:
        return _FHIR_TO_V2_STATUS[status]
    except KeyError:
        raise ConversionError("Appointment.status is not an appointmentstatus code") from None


def participant_status(code: str, field: str) -> str:
    """participant.status for a resource-level filler status (`field` names it in errors)."""
    status = _V2_TO_PARTICIPANT.get(code.strip().casefold())
    if status is None:
        raise ConversionError(f"{field} holds a filler status outside table 0278")
    return status


def resource_status_code(status: str) -> str:
    """The resource-level filler status written back for a participant.status."""
    try:
        return _PARTICIPANT_TO_V2[status]
    except KeyError:
        raise ConversionError("participant.status is not a participationstatus code") from None


# ------------------------------------------------------------------ code/identifier systems

# Coding systems and assigning authorities without a URI of their own get an engine-local
# URN; the name is percent-quoted so any v2 name makes a valid uri and comes back unchanged.
CODING_SYSTEM_PREFIX = "urn:engine:v2-coding-system:"
NAMESPACE_PREFIX = "urn:engine:v2-namespace:"
IDENTIFIER_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0203"
PLAC, FILL = "PLAC", "FILL"

_V2_TABLE = re.compile(r"HL7(\d{4})")
_V2_TABLE_URI = re.compile(r"http://terminology\.hl7\.org/CodeSystem/v2-(\d{4})")
_KNOWN_SYSTEMS = {
    "SCT": "http://snomed.info/sct",
    "LN": "http://loinc.org",
    "UCUM": "http://unitsofmeasure.org",
}
_KNOWN_NAMES = {uri: name for name, uri in _KNOWN_SYSTEMS.items()}


# Feeds use a handful of coding systems and namespaces, over and over: their URIs are cached
# (strings only; a cached dict could be changed by whoever holds it).
@functools.lru_cache(maxsize=1024)
def coding_system_uri(name: str) -> str:
    """Coding.system for a v2 coding system name (CWE.3); "" for no name."""
    if not name:
        return ""
    table = _V2_TABLE.fullmatch(name)
    if table:
        return f"http://terminology.hl7.org/CodeSystem/v2-{table.group(1)}"
    if name in _KNOWN_SYSTEMS:
        return _KNOWN_SYSTEMS[name]
    if ":" in name:  # already a URI (v2.7+ feeds put them there)
        return name
    return CODING_SYSTEM_PREFIX + quote(name, safe="")


def coding_system_name(uri: str) -> str:
    """The v2 coding system name for a Coding.system (inverse of `coding_system_uri`)."""
    if uri.startswith(CODING_SYSTEM_PREFIX):
        return unquote(uri.removeprefix(CODING_SYSTEM_PREFIX))
    table = _V2_TABLE_URI.fullmatch(uri)
    if table:
        return "HL7" + table.group(1)
    return _KNOWN_NAMES.get(uri, uri)


def _fhir_code(code: str) -> str:
    # FHIR codes allow single inner spaces only; v2 codes are not so strict (lossy).
    return " ".join(code.split())


def codeable_concept(code: str, text: str, system: str) -> dict[str, Any] | None:
    """A CodeableConcept for CWE components 1-3; None when there is neither code nor text."""
    code = _fhir_code(code)
    if not code:
        return {"text": text} if text else None
    coding: dict[str, Any] = {}
    uri = coding_system_uri(system)
    if uri:
        coding["system"] = uri
    coding["code"] = code
    if text:
        coding["display"] = text
    return {"coding": [coding]}


def cwe_of(concept: Any) -> tuple[str, str, str]:
    """(code, text, coding system name) of a CodeableConcept's first coding."""
    if not isinstance(concept, dict):
        return "", "", ""
    codings = concept.get("coding") or [{}]
    coding = codings[0] if isinstance(codings[0], dict) else {}
    text = coding.get("display") or concept.get("text") or ""
    system = coding_system_name(coding.get("system") or "")
    return coding.get("code") or "", text, system


def identifier_system(namespace: str, universal_id: str, id_type: str) -> dict[str, Any]:
    """Identifier.system (+ assigner) for an HD: OID or URI when given, else the namespace."""
    out: dict[str, Any] = {}
    kind = id_type.strip().upper()
    if universal_id and kind in ("ISO", "URI"):
        out["system"] = ("urn:oid:" + universal_id) if kind == "ISO" else universal_id
        if namespace:
            out["assigner"] = {"display": namespace}
    elif namespace:
        out["system"] = _namespace_uri(namespace)
    return out


@functools.lru_cache(maxsize=1024)
def _namespace_uri(namespace: str) -> str:
    return NAMESPACE_PREFIX + quote(namespace, safe="")


def hd_of(identifier: dict[str, Any]) -> tuple[str, str, str]:
    """(namespace, universal id, universal id type) for an Identifier (inverse of the above)."""
    system = identifier.get("system") or ""
    assigner = identifier.get("assigner")
    namespace = assigner.get("display", "") if isinstance(assigner, dict) else ""
    if not system:
        return namespace, "", ""
    if system.startswith(NAMESPACE_PREFIX):
        return unquote(system.removeprefix(NAMESPACE_PREFIX)), "", ""
    if system.startswith("urn:oid:"):
        return namespace, system.removeprefix("urn:oid:"), "ISO"
    return namespace, system, "URI"


# ---------------------------------------------------------------------------- timestamps

_DTM = re.compile(
    r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?(?:([+-])(\d{2})(\d{2}))?"
)


def parse_hl7_timestamp(value: str, tz: tzinfo, field: str) -> datetime | None:
    """An aware datetime for an HL7 DTM (None for ""); `field` names it in errors."""
    value = value.strip()
    if not value:
        return None
    m = _DTM.fullmatch(value)
    if m is None:
        raise ConversionError(f"{field} is not an HL7 timestamp")
    year, month, day, hour, minute, second, frac, sign, oh, om = m.groups()
    try:
        zone = tz
        if sign:
            offset = timedelta(hours=int(oh), minutes=int(om))
            zone = timezone(-offset if sign == "-" else offset)
        return datetime(int(year), int(month or 1), int(day or 1), int(hour or 0),
                        int(minute or 0), int(second or 0), int((frac or "0").ljust(6, "0")),
                        tzinfo=zone)
    except ValueError:
        raise ConversionError(f"{field} is not a valid date and time") from None


def fhir_instant(moment: datetime) -> str:
    """A FHIR instant (UTC written as Z)."""
    text = moment.isoformat()
    return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text


def parse_instant(value: Any, element: str) -> datetime | None:
    """An aware datetime for a FHIR instant (None when absent)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None:
            return moment
    raise ConversionError(f"Appointment.{element} is not a FHIR instant")


def hl7_timestamp(moment: datetime) -> str:
    """An HL7 DTM with offset for an aware datetime (see the module docstring)."""
    offset = moment.utcoffset() or timedelta()
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    # Formatted by hand: strftime costs several times more, and a message holds a dozen.
    text = (f"{moment.year:04d}{moment.month:02d}{moment.day:02d}"
            f"{moment.hour:02d}{moment.minute:02d}")
    if moment.second or moment.microsecond // 100:
        text += f"{moment.second:02d}"
        if moment.microsecond // 100:
            text += "." + f"{moment.microsecond // 100:04d}".rstrip("0")
    return f"{text}{sign}{minutes // 60:02d}{minutes % 60:02d}"
