"""Option schemas several destination types share (`connections`, `timeout`), so they read
and are checked the same way everywhere."""

from __future__ import annotations

from typing import Any

from engine.config.units import DURATION

MAX_CONNECTIONS = 64


def connections_option(default: int, description: str) -> dict[str, Any]:
    return {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_CONNECTIONS,
        "default": default,
        "x-expected": f"a number of connections 1..{MAX_CONNECTIONS}",
        "description": description,
    }


def timeout_option(default: float, description: str) -> dict[str, Any]:
    return {
        "x-unit": DURATION,
        "exclusiveMinimum": 0,
        "default": default,
        "description": description,
    }
