"""Durations, sizes and paths as analysts write them, converted to what the runtime uses.

A schema node marked `"x-unit": "duration"` takes a number of seconds or text like `500ms`,
`30s`, `5m`, `24h`, `1d` and becomes float seconds; `"x-unit": "size"` takes a whole number of
bytes or text like `512KiB`, `10MiB`, `1GiB`, `100kB` and becomes int bytes; `"x-unit": "path"`
takes text and becomes an absolute path (relative ones resolve against the configuration
root). The rule: a value either converts exactly or is left as written, so the schema check
can report it at its own position with `EXPECTED[unit]`.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

DURATION = "duration"
SIZE = "size"
PATH = "path"
UNITS = (DURATION, SIZE, PATH)

EXPECTED = {
    DURATION: "a duration like 500ms, 30s, 5m, 24h or 1d (or a number of seconds)",
    SIZE: "a size like 512KiB, 10MiB, 1GiB or 100kB (or a whole number of bytes)",
    PATH: "a file or folder path",
}

_SECONDS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600),
            "d": Decimal(86400)}
# SI and IEC prefixes only: "KB" and "mb" are ambiguous, so they are errors, not guesses.
_BYTES = {"B": 1, "kB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2, "GB": 1000**3,
          "GiB": 1024**3}
_AMOUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*$")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_duration(value: Any) -> float | None:
    """Seconds for a number or `<amount><ms|s|m|h|d>`; None when it is neither or negative."""
    if _is_number(value):
        return float(value) if value >= 0 else None
    if not isinstance(value, str):
        return None
    match = _AMOUNT.match(value)
    if match is None or match.group(2) not in _SECONDS:
        return None
    return float(Decimal(match.group(1)) * _SECONDS[match.group(2)])


def parse_size(value: Any) -> int | None:
    """Bytes for a whole number or `<amount><B|kB|KiB|MB|MiB|GB|GiB>`; None otherwise, and for
    amounts that are not a whole number of bytes (`0.5B`)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    if not isinstance(value, str):
        return None
    match = _AMOUNT.match(value)
    if match is None or match.group(2) not in _BYTES:
        return None
    try:
        amount = Decimal(match.group(1)) * _BYTES[match.group(2)]
    except InvalidOperation:  # pragma: no cover - the regex admits only plain decimals
        return None
    return int(amount) if amount == amount.to_integral_value() else None


def resolve_path(value: Any, root: Path) -> str | None:
    """The absolute path for `value`, relative ones taken from `root`; None for non-text."""
    if not isinstance(value, str) or not value:
        return None
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else root / path)


def convert(unit: str, value: Any, root: Path) -> Any:
    """`value` converted to `unit`, or `value` unchanged when it does not convert."""
    if unit == DURATION:
        seconds = parse_duration(value)
        return value if seconds is None else seconds
    if unit == SIZE:
        size = parse_size(value)
        return value if size is None else size
    if unit == PATH:
        path = resolve_path(value, root)
        return value if path is None else path
    raise ValueError(f"unknown x-unit {unit!r} (expected one of: {', '.join(UNITS)})")


def is_converted(unit: str, value: Any) -> bool:
    """Whether `value` is what a successful conversion to `unit` produces."""
    if unit == DURATION:
        return isinstance(value, float) and value >= 0
    if unit == SIZE:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if unit == PATH:
        return isinstance(value, str) and Path(value).is_absolute()
    raise ValueError(f"unknown x-unit {unit!r} (expected one of: {', '.join(UNITS)})")
