"""Element paths into JSON documents: `status`, `participant.0.actor.identifier.value`,
`data.appointment_id`; what channel tests expect of a JSON output and what `order_by` reads.

Grammar: names ([A-Za-z_][A-Za-z0-9_]*) and list indices (0-based digits) joined by dots; the
first part is a name starting with a lower-case letter, as FHIR and event element names do
(so a mistyped field path such as `SCH25` is not taken for one).

Reading follows the path and renders what it finds as text, the way a test compares it: a
string as itself, numbers and booleans as JSON writes them (`60`, `true`), objects and lists
as compact JSON, and null or an absent element as "" (as an absent HL7 v2 field reads "").
A path never raises on a document of another shape.

Where either kind of path is allowed, text that parses as an HL7 v2 field path (`SCH-1.1`, or
a bare segment name like `NTE`) is one; anything else must be an element path. They cannot
be confused in practice: a field path has a `-`, and FHIR and event element names are not
three-character upper-case segment names.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["ElementPath", "element_text", "is_element_path", "parse_element_path"]

_PATH = re.compile(r"^[a-z][A-Za-z0-9_]*(\.([A-Za-z_][A-Za-z0-9_]*|[0-9]+))*$")

ElementPath = tuple[str | int, ...]


def is_element_path(text: str) -> bool:
    return _PATH.match(text) is not None


def parse_element_path(text: str) -> ElementPath:
    """`participant.0.actor` -> ("participant", 0, "actor"); ValueError when it does not
    follow the grammar."""
    if not is_element_path(text):
        raise ValueError(
            f"expected an element path like status or participant.0.actor.reference, got {text!r}"
        )
    return tuple(int(p) if p.isdigit() else p for p in text.split("."))


def element(document: Any, path: ElementPath) -> Any:
    """The value at `path`, or None when any step of it is absent or of another shape."""
    node = document
    for part in path:
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return None
            node = node[part]
        else:
            if not isinstance(node, dict):
                return None
            node = node.get(part)
    return node


def element_text(document: Any, path: ElementPath) -> str:
    """The value at `path` as text (see the module docstring)."""
    value = element(document, path)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
