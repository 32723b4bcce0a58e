"""What flows through a channel: a `Document` (an HL7 v2 `Message` or a JSON object), its
kind, a private copy of it per channel, and its bytes on the wire.

Rules kept: each channel works on its own copy, so one channel's steps never reach
another's; a JSON document goes out as compact UTF-8 JSON and is labelled
`application/fhir+json` when it is a FHIR resource (it has a `resourceType`), else
`application/json`; an HL7 v2 message is `application/hl7-v2`, written by the caller in the
charset its MSH-18 names. Texts of the errors raised here name kinds, never content.
"""

from __future__ import annotations

import json
from typing import Any

from engine.config.registry import KIND_TEXT, DocumentKind
from engine.pipeline.context import Document
from engine.pipeline.errors import StepError
from engine.protocol.er7 import Message

__all__ = [
    "FHIR_JSON",
    "HL7_V2",
    "JSON",
    "content_type",
    "copy_document",
    "copy_json",
    "describe",
    "encode_json",
    "kind_of",
]

HL7_V2 = "application/hl7-v2"
FHIR_JSON = "application/fhir+json"
JSON = "application/json"


def kind_of(document: Document) -> DocumentKind:
    if isinstance(document, Message):
        return "hl7v2"
    return "fhir" if isinstance(document.get("resourceType"), str) else "json"


def describe(document: Document) -> str:
    """"a FHIR Appointment", "an HL7 v2 message": for error texts. The resource type is
    named only when it looks like one (a short ASCII word), so the text cannot carry content."""
    if isinstance(document, dict) and isinstance(document.get("resourceType"), str):
        kind = document["resourceType"]
        if kind.isascii() and kind.isalpha() and len(kind) <= 64:
            return f"a FHIR {kind}"
    return KIND_TEXT[kind_of(document)]


def content_type(document: Document) -> str:
    kind = kind_of(document)
    return HL7_V2 if kind == "hl7v2" else FHIR_JSON if kind == "fhir" else JSON


def copy_document(source: Message | dict[str, Any]) -> Document:
    """A copy the channel may change freely."""
    if isinstance(source, Message):
        return source.copy()
    return copy_json(source)


def copy_json(source: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a parsed JSON object."""
    return {k: _json_copy(v) for k, v in source.items()}


def _json_copy(value: Any) -> Any:
    # Parsed JSON holds only dicts, lists and immutable scalars: copying the containers is a
    # deep copy, several times cheaper than copy.deepcopy.
    if isinstance(value, dict):
        return {k: _json_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_copy(v) for v in value]
    return value


def encode_json(document: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON; StepError when a step left something JSON cannot hold."""
    try:
        text = json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        # The text of a TypeError names only a Python type; a ValueError a float constant.
        raise StepError(
            "encode: the document cannot be written as JSON "
            f"(it holds a value JSON has no form for: {type(exc).__name__})",
            detail=f"{type(exc).__name__}: {exc}",
        ) from exc
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise StepError(
            "encode: the document holds text UTF-8 cannot carry (an unpaired surrogate)",
            detail=str(exc),
        ) from exc
