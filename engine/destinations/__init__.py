"""Destination types by name: the configuration checker reads `REGISTRY` (schema and semantic
check per type), the runtime calls `build` to turn a validated `DestinationConfig` into a
`Destination`.

Rule: adding a destination type is one new module exporting `PLUGIN` and `build`, plus one
line in `_TYPES` below; nothing else dispatches on the type name.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.config.model import DestinationConfig
from engine.config.registry import Plugin
from engine.destinations import fhir, file, mllp, webhook
from engine.destinations.base import Destination

_TYPES: dict[str, tuple[Plugin, Callable[[DestinationConfig], Destination]]] = {
    "mllp": (mllp.PLUGIN, mllp.build),
    "file": (file.PLUGIN, file.build),
    "webhook": (webhook.PLUGIN, webhook.build),
    "fhir": (fhir.PLUGIN, fhir.build),
}

REGISTRY: dict[str, Plugin] = {kind: plugin for kind, (plugin, _) in _TYPES.items()}


def build(config: DestinationConfig) -> Destination:
    """The runtime destination for `config`. Options must already be validated and converted
    by the configuration loader (durations in seconds, sizes in bytes, absolute paths)."""
    try:
        _, builder = _TYPES[config.kind]
    except KeyError:
        known = ", ".join(sorted(_TYPES))
        raise ValueError(
            f"{config.pos}: unknown destination type {config.kind!r}; expected one of {known}"
        ) from None
    return builder(config)
