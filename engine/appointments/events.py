"""Webhook event payloads for appointments: thin, ids, times and status only.

Rule kept: an event carries identifiers (appointment key, participant references or
"system|value" identifiers), instants and status codes, and nothing else: no names, no
displays, no birth dates, no contact details, no comments, and no free text from a
destination (a sync failure carries a reason code). Pure: the clock is passed in.

Shape (REFERENCE.md, "Webhooks")::

    {"type": "appointment.<kind>", "timestamp": "2025-03-10T14:15:00.000Z",
     "data": {"appointment_id": "<system>|<value>", "patient_id": ..., "provider_id": ...,
              "location_id": ..., "start": "2025-03-17T15:00:00Z", "end": ..., "status": ...}}

Every data field is always present (null when the appointment has none), and times are UTC.
The first Patient, Practitioner(Role) and Location participants give the three actor ids,
whatever their participation status (a cancellation still names who it concerned).

Which event (`event_for`), decided here:
- created -> appointment.created; updated and rescheduled -> appointment.updated;
  cancelled -> appointment.cancelled; no_show -> appointment.no_show.
- A first sighting already cancelled or noshow (an unknown appointment: the engine missed its
  booking, the world did not) is announced by its status: appointment.cancelled / no_show.
- entered-in-error -> appointment.cancelled with status "entered-in-error": subscribers may
  already have told the patient about the booking, and must hear it is gone; the status lets
  them word it differently. For an appointment never seen before, nothing was announced and
  there is nothing to withdraw: no event.
- unchanged (a replay) -> no event; a version not applied (out of order) -> no event, since
  it does not become the appointment's state.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from engine.appointments.state import (
    Assessment,
    actor_id,
    actor_type,
    appointment_key,
    instant,
    interval,
)

__all__ = ["EVENT_TYPES", "event_for", "sync_failed_event"]

EVENT_TYPES = ("appointment.created", "appointment.updated", "appointment.cancelled",
               "appointment.no_show", "appointment.sync_failed")
_BY_CHANGE = {"created": "appointment.created", "updated": "appointment.updated",
              "rescheduled": "appointment.updated", "cancelled": "appointment.cancelled",
              "no_show": "appointment.no_show", "entered-in-error": "appointment.cancelled"}
_BY_STATUS = {"cancelled": "appointment.cancelled", "noshow": "appointment.no_show"}
# Destination names and reason codes are config names and codes, never prose: anything else
# could carry a peer's error text (and with it PHI) into a webhook.
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
# FHIR appointmentstatus codes; anything else is reported as null rather than echoed.
_STATUSES = frozenset({"proposed", "pending", "booked", "arrived", "fulfilled", "cancelled",
                       "noshow", "entered-in-error", "checked-in", "waitlist"})


def event_for(assessment: Assessment, resource: dict[str, Any], *,
              now: float) -> dict[str, Any] | None:
    """The webhook event announcing `resource` as assessed, or None (see the docstring)."""
    if not assessment.apply or assessment.change == "unchanged":
        return None
    unknown = assessment.has("unknown-appointment")
    if assessment.change == "entered-in-error" and unknown:
        return None
    kind = _BY_CHANGE[assessment.change]
    if assessment.change == "created":
        kind = _BY_STATUS.get(str(resource.get("status")), kind)
    return {"type": kind, "timestamp": _timestamp(now), "data": _data(resource)}


def sync_failed_event(resource: dict[str, Any], *, destination: str, reason_code: str,
                      now: float) -> dict[str, Any]:
    """appointment.sync_failed: a delivery of `resource` to `destination` gave up.

    `booking_reference` is the value of the identifier the key comes from (placer, else
    filler), the number front-desk staff find the booking by. Raises ValueError when
    `destination` or `reason_code` is not a short code (they must not carry free text).
    """
    for name, value in (("destination", destination), ("reason_code", reason_code)):
        if not _TOKEN.fullmatch(value):
            raise ValueError(f"{name} must be a short code of letters, digits and ._:/-")
    data = _data(resource)
    data["booking_reference"] = data["appointment_id"].split("|", 1)[1]
    data["destination"] = destination
    data["reason_code"] = reason_code
    return {"type": "appointment.sync_failed", "timestamp": _timestamp(now), "data": data}


def _timestamp(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _utc(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _data(resource: dict[str, Any]) -> dict[str, Any]:
    span = interval(resource)
    # An appointment with a start but no end or duration still tells its start.
    start = _utc(span[0] if span else instant(resource.get("start")))
    status = resource.get("status")
    return {
        "appointment_id": appointment_key(resource),
        "patient_id": _first(resource, ("Patient",)),
        "provider_id": _first(resource, ("Practitioner", "PractitionerRole")),
        "location_id": _first(resource, ("Location",)),
        "start": start,
        "end": _utc(span[1]) if span else None,
        "status": status if status in _STATUSES else None,
    }


def _first(resource: dict[str, Any], types: tuple[str, ...]) -> str | None:
    for participant in resource.get("participant") or ():
        if not isinstance(participant, dict):
            continue
        actor = participant.get("actor")
        if actor_type(actor) in types:
            ident = actor_id(actor)
            if ident is not None:
                return ident
    return None
