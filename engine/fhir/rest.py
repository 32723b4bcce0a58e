"""The engine's FHIR answers: what intake decided (`FhirAnswer`) and how it looks on the wire:
a resource with its id and meta, the version headers (`Location`, `ETag`, `Last-Modified`),
instants. Shared by the HTTP listener's single answers and the Bundle responses, so both
say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from engine.fhir.outcome import Issue, operation_outcome


@dataclass(frozen=True)
class FhirAnswer:
    status: int
    resource: dict[str, Any] | None = None  # the appointment as the engine holds it now
    outcome: dict[str, Any] | None = None  # an OperationOutcome (errors)
    id: str = ""
    version: int = 0
    last_modified: float | None = None

    @property
    def ok(self) -> bool:
        return self.status < 300


def fail(status: int, code: str, diagnostics: str, *expression: str) -> FhirAnswer:
    return FhirAnswer(status, outcome=operation_outcome([Issue("error", code, diagnostics,
                                                                expression)]))


def fhir_instant(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def presented(answer: FhirAnswer) -> dict[str, Any] | None:
    """The resource as served: id and meta (version, time) first, then its content."""
    if answer.resource is None:
        return None
    meta: dict[str, Any] = {"versionId": str(answer.version)}
    if answer.last_modified is not None:
        meta["lastUpdated"] = fhir_instant(answer.last_modified)
    content = {k: v for k, v in answer.resource.items() if k not in ("resourceType", "id", "meta")}
    return {"resourceType": "Appointment", "id": answer.id, "meta": meta, **content}


def answer_headers(base_url: str, answer: FhirAnswer) -> dict[str, str]:
    if not answer.id or not answer.ok:
        return {}
    headers = {
        "Location": f"{base_url}/Appointment/{answer.id}/_history/{answer.version}",
        "ETag": f'W/"{answer.version}"',
    }
    if answer.last_modified is not None:
        moment = datetime.fromtimestamp(answer.last_modified, UTC)
        headers["Last-Modified"] = format_datetime(moment, usegmt=True)
    return headers
