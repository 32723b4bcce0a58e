"""What a channel run may know beyond the message itself: the time, a control id for messages
a conversion creates, and the appointment state the message was assessed against.

Rule kept: everything a step needs from the outside world comes in through `RunContext`, so
steps stay pure (no clock, no store) and the same message with the same context always gives
the same output: live intake, `engine replay` and `engine test` build one each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.appointments.state import Assessment
from engine.protocol.er7 import Message
from engine.store.base import AppointmentDisposition

# What flows through a channel's steps: an HL7 v2 message, or a JSON object (a FHIR resource,
# or a webhook event once converted).
Document = Message | dict[str, Any]


@dataclass(frozen=True)
class AppointmentContext:
    """The appointment a message carries, as intake assessed it."""

    resource: dict[str, Any]  # the canonical FHIR Appointment of this message
    previous: dict[str, Any] | None  # the current version before this message; None: unknown
    assessment: Assessment
    disposition: AppointmentDisposition

    @property
    def current(self) -> bool:
        """Whether this version is (or repeats) the appointment's current state: a stale or
        rejected version must not be sent on, or it would undo newer state downstream."""
        return self.disposition in ("current", "unchanged")


@dataclass(frozen=True)
class RunContext:
    now: float = 0.0  # unix seconds: event timestamps, MSH-7 of converted messages
    control_id: str = ""  # MSH-10 of messages a conversion creates
    appointment: AppointmentContext | None = None
