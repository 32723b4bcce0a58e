"""Appointment state: what a new version of an appointment means, and the events it raises.

Rule kept: pure decision logic over FHIR R4B Appointment dicts; the store that persists
versions calls it and keeps the results (see `state` and `events`).
"""

from engine.appointments.events import EVENT_TYPES, event_for, sync_failed_event
from engine.appointments.state import (
    Assessment,
    Change,
    Known,
    Warning_,
    WarningKind,
    actors,
    appointment_key,
    assess,
    interval,
)

__all__ = [
    "EVENT_TYPES",
    "Assessment",
    "Change",
    "Known",
    "WarningKind",
    "Warning_",
    "actors",
    "appointment_key",
    "assess",
    "event_for",
    "interval",
    "sync_failed_event",
]
