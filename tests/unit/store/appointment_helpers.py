"""Synthetic appointment versions for the store tests (invented identifiers only)."""

from __future__ import annotations

import dataclasses
import json

from engine.store.base import (
    AppointmentDisposition,
    AppointmentWarning,
    Ingest,
    NewAppointmentVersion,
)
from tests.unit.store.helpers import make_ingest

T0 = 1_750_000_000.0
HOUR = 3600.0
KEY_A = "urn:test:placer|APT-A"
KEY_B = "urn:test:placer|APT-B"
KEY_C = "urn:test:placer|APT-C"


def version(
    key: str = KEY_A,
    *,
    disposition: AppointmentDisposition = "current",
    status: str = "booked",
    change: str = "created",
    start: float | None = T0 + HOUR,
    end: float | None = T0 + 2 * HOUR,
    actors: tuple[str, ...] = ("Practitioner/DR1",),
    warnings: tuple[AppointmentWarning, ...] = (),
    base_version: int | None = None,
    source_time: float | None = T0,
    note: str = "",
) -> NewAppointmentVersion:
    """A version whose resource differs by `note`, so each one is recognisable on read."""
    system, _, value = key.partition("|")
    resource = {
        "resourceType": "Appointment",
        "identifier": [{"system": system, "value": value}],
        "status": status,
        "comment": note,
    }
    return NewAppointmentVersion(
        key=key,
        resource=json.dumps(resource, separators=(",", ":")).encode(),
        status=status,
        change=change,
        disposition=disposition,
        source_time=source_time,
        start=start,
        end=end,
        actors=actors,
        warnings=warnings,
        base_version=base_version,
    )


def carrying(
    control_id: str,
    appointment: NewAppointmentVersion,
    *,
    replay_of: int | None = None,
    received_at: float = 1_750_000_000.0,
) -> Ingest:
    """A message (see `make_ingest`) that carries `appointment`, recorded at `received_at`;
    a `replay_of` naming no message makes its write fail inside the transaction (foreign
    key)."""
    item = make_ingest(control_id, replay_of=replay_of, received_at=received_at)
    return dataclasses.replace(item, appointment=appointment)


def clash(*related: str) -> AppointmentWarning:
    return AppointmentWarning(
        kind="double-booking", text=f"overlaps {', '.join(related)} on Practitioner/DR1",
        related=related,
    )
