"""Human-readable tables and times for the CLI, and JSON on request."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO


def when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], out: TextIO = sys.stdout
) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out.write(line.format(*headers).rstrip() + "\n")
    for row in cells:
        out.write(line.format(*row).rstrip() + "\n")


def dump_json(value: Any, out: TextIO = sys.stdout) -> None:
    json.dump(value, out, indent=2, default=str)
    out.write("\n")


def segments(data: bytes, codec: str) -> list[str]:
    """An HL7 message as one segment per line, or a JSON body (a FHIR resource, an event)
    indented, for reading in a terminal."""
    if data[:1] == b"{":
        try:
            return json.dumps(json.loads(data), indent=2, ensure_ascii=False).splitlines()
        except ValueError:
            pass  # not JSON after all: shown as text
    text = data.decode(codec or "utf-8", errors="replace")
    return [s for s in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s]
