"""`security: encryption:` of routes.yaml turned into the at-rest `KeyRing`.

Shape (the routes schema checks it; this module checks the keys themselves):

    security:
      encryption:
        key_file: /etc/engine/atrest.keys   # lines `<id> <base64 of 32 bytes>`, chmod 600
        keys: {k2026b: ${ENGINE_KEY_K2026B}} # and/or keys from the environment
        current: k2026b                      # the key new values are sealed with

Rules kept: every problem names file:line:column (in routes.yaml, or in the key file for a
bad line there) and never shows a key; an id given twice (file and `keys:`) is refused, not
silently overridden; `current` must be one of the ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.config.errors import ConfigProblem
from engine.config.yaml_nodes import Doc
from engine.security.atrest import KeyFileError, KeyRing, decode_key, load_key_file

_PATH = ("security", "encryption")


def key_ring(doc: Doc, spec: Any, root: Path, problems: list[ConfigProblem]) -> KeyRing | None:
    """The ring `spec` (the `encryption:` mapping, schema-checked) describes, or None with
    problems appended. None without problems when `spec` is absent."""
    if not isinstance(spec, dict):
        return None
    found = len(problems)
    keys: dict[str, bytes] = {}
    key_file = spec.get("key_file")
    if isinstance(key_file, str) and key_file:
        file = Path(key_file).expanduser()
        try:
            keys.update(load_key_file(file if file.is_absolute() else root / file))
        except KeyFileError as exc:
            problems.append(ConfigProblem(doc.at((*_PATH, "key_file")), str(exc)))
    inline = spec.get("keys")
    for key_id, text in (inline if isinstance(inline, dict) else {}).items():
        where = doc.at((*_PATH, "keys", key_id))
        if key_id in keys:
            problems.append(ConfigProblem(
                doc.key_at((*_PATH, "keys", key_id)),
                f"key {key_id} is also in the key file: give each id once",
            ))
            continue
        if not isinstance(text, str):
            continue  # the schema reported it
        try:
            keys[key_id] = decode_key(text)
        except ValueError as exc:
            problems.append(ConfigProblem(where, f"key {key_id}: {exc}"))
    current = spec.get("current")
    if len(problems) > found or not isinstance(current, str):
        return None
    if current not in keys:
        known = ", ".join(sorted(keys)) or "none"
        problems.append(ConfigProblem(
            doc.at((*_PATH, "current")),
            f"current key {current} is not configured (keys: {known})",
        ))
        return None
    return KeyRing(keys, current)

