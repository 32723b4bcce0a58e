"""`POST [base]` with a Bundle: batch (each entry on its own) or transaction (all or none).

Rule kept: a transaction is checked whole before anything is stored: every entry must be a
POST to `Appointment` or a PUT to `Appointment/{id}` with a valid Appointment; the first
entry that is not fails the whole Bundle, with issues pointing into it
(`Bundle.entry[2].resource.status`). A batch answers each entry with its own status in a
`batch-response`; one bad entry does not stop the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from engine.config.model import ListenerConfig
from engine.fhir.outcome import Invalid, Issue, operation_outcome
from engine.fhir.rest import FhirAnswer, fhir_instant, presented
from engine.fhir.validation import read_json, validate_appointment
from engine.runtime.fhir_intake import FhirIntake, FhirRequest

BUNDLE_TYPES = ("batch", "transaction")
_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found",
            405: "Method Not Allowed", 409: "Conflict", 412: "Precondition Failed",
            422: "Unprocessable Entity", 503: "Service Unavailable"}


@dataclass(frozen=True)
class BundleAnswer:
    status: int
    body: dict[str, Any]


def _invalid(status: int, code: str, text: str, where: str) -> Invalid:
    return Invalid(status, [Issue("error", code, text, (where,))])


def entry_request(entry: Any, i: int) -> FhirRequest:
    """The create or update one Bundle entry asks for; `Invalid` when it is not one."""
    at = f"Bundle.entry[{i}]"
    if not isinstance(entry, dict):
        raise _invalid(400, "structure", "expected a JSON object", at)
    request = entry.get("request")
    if not isinstance(request, dict):
        raise _invalid(400, "required", "entry.request (method and url) is required",
                       f"{at}.request")
    method, url = request.get("method"), request.get("url")
    parts = url.split("?", 1)[0].strip("/").split("/") if isinstance(url, str) else []
    if method == "POST" and parts == ["Appointment"]:
        target = None
    elif method == "PUT" and len(parts) == 2 and parts[0] == "Appointment" and parts[1]:
        target = parts[1]
    else:
        raise _invalid(400, "not-supported", "expected POST Appointment or PUT "
                       "Appointment/{id}", f"{at}.request")
    resource = entry.get("resource")
    if not isinstance(resource, dict):
        raise _invalid(400, "required", "entry.resource is required", f"{at}.resource")
    validate_appointment(resource, at=f"{at}.resource")
    raw = json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode()
    return FhirRequest(
        method,
        resource,
        raw,
        target=target,
        if_match=_text(request.get("ifMatch")),
        if_none_exist=_text(request.get("ifNoneExist")),
        at=f"{at}.resource",
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def entry_response(answer: FhirAnswer) -> dict[str, Any]:
    response: dict[str, Any] = {
        "status": f"{answer.status} {_REASONS.get(answer.status, '')}".strip()
    }
    if answer.ok and answer.id:
        response["location"] = f"Appointment/{answer.id}/_history/{answer.version}"
        response["etag"] = f'W/"{answer.version}"'
        if answer.last_modified is not None:
            response["lastModified"] = fhir_instant(answer.last_modified)
    if answer.outcome is not None:
        response["outcome"] = answer.outcome
    out: dict[str, Any] = {"response": response}
    resource = presented(answer) if answer.ok else None
    if resource is not None:
        out["resource"] = resource
    return out


def _response_bundle(kind: str, answers: list[FhirAnswer]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": f"{kind}-response",
        "entry": [entry_response(a) for a in answers],
    }


async def handle_bundle(
    listener: ListenerConfig, intake: FhirIntake, raw: bytes, max_bytes: int
) -> BundleAnswer:
    try:
        bundle = read_json(raw, max_bytes)
        kind = bundle.get("type")
        if bundle.get("resourceType") != "Bundle":
            raise _invalid(400, "not-supported", "expected a Bundle here (an Appointment goes "
                           "to [base]/Appointment)", "Bundle")
        if kind not in BUNDLE_TYPES:
            raise _invalid(422, "not-supported", "Bundle.type must be batch or transaction",
                           "Bundle.type")
        entries = bundle.get("entry", [])
        if not isinstance(entries, list):
            raise _invalid(400, "structure", "expected a JSON array", "Bundle.entry")
    except Invalid as invalid:
        refused = await intake.reject(listener, raw, invalid)
        return BundleAnswer(refused.status, refused.outcome or {})
    if kind == "transaction":
        return await _transaction(listener, intake, raw, entries)
    return await _batch(listener, intake, entries)


async def _transaction(
    listener: ListenerConfig, intake: FhirIntake, raw: bytes, entries: list[Any]
) -> BundleAnswer:
    try:
        requests = [entry_request(entry, i) for i, entry in enumerate(entries)]
    except Invalid as invalid:
        refused = await intake.reject(listener, raw, invalid)
        return BundleAnswer(refused.status, refused.outcome or {})
    result = await intake.transaction(listener, raw, requests)
    if isinstance(result, FhirAnswer):
        return BundleAnswer(result.status, result.outcome or operation_outcome([]))
    return BundleAnswer(200, _response_bundle("transaction", result))


async def _batch(listener: ListenerConfig, intake: FhirIntake, entries: list[Any]) -> BundleAnswer:
    answers = []
    for i, entry in enumerate(entries):
        try:
            request = entry_request(entry, i)
        except Invalid as invalid:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            raw = json.dumps(resource if resource is not None else entry).encode()
            answers.append(await intake.reject(listener, raw, invalid))
            continue
        answers.append(await intake.submit(listener, request))
    return BundleAnswer(200, _response_bundle("batch", answers))
