"""The CapabilityStatement the HTTP listener serves at `[base]/metadata`.

Rule kept: it says exactly what `engine.listeners.http` does and nothing more: Appointments
only, read / create / update (If-Match honoured, no update-as-create, no history, no delete,
no search), conditional create on the booking identifier, batch and transaction Bundles,
JSON only. The listener's tests check every interaction listed here is served and the ones
left out are refused, so adding an interaction means saying so here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

FHIR_VERSION = "4.3.0"  # R4B
INTERACTIONS = ("read", "create", "update")
SYSTEM_INTERACTIONS = ("batch", "transaction")


def capability_statement(base_url: str, software_version: str, now: float) -> dict[str, Any]:
    """The statement for a listener whose FHIR base is `base_url`; `now` dates it."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.fromtimestamp(now, UTC).date().isoformat(),
        "kind": "instance",
        "software": {"name": "engine", "version": software_version},
        "implementation": {
            "description": "Appointment intake of the engine: stored durably before each 2xx",
            "url": base_url,
        },
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Appointments are keyed by their booking identifier (placer, else filler, "
                    "else the first): a create naming a known identifier is a new version of "
                    "that appointment, answered 200. Reads return the latest version the "
                    "engine holds, from any source (FHIR or HL7 v2 SIU)."
                ),
                "resource": [
                    {
                        "type": "Appointment",
                        "profile": "http://hl7.org/fhir/StructureDefinition/Appointment",
                        "interaction": [{"code": code} for code in INTERACTIONS],
                        "versioning": "versioned-update",
                        "readHistory": False,
                        "updateCreate": False,
                        "conditionalCreate": True,
                        "conditionalRead": "not-supported",
                        "conditionalUpdate": False,
                        "conditionalDelete": "not-supported",
                    }
                ],
                "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
            }
        ],
    }
