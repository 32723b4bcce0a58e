"""What an alert is: one WARNING line on the `engine.alerts` logger, starting `ALERT`, with a
kind and a few PHI-free facts riding in the record's `extra` (see `alert_extra`).

Rules kept here: an alert names staff users, key prefixes, listeners, channels, destinations,
message and delivery ids and counts, never a patient's identifiers (the log rules apply to
alerts too, and an alert leaves the host when an alert webhook is configured). Code raising
an alert logs as it always did; `Alert.of(record)` turns any `engine.alerts` record into the
JSON an alert webhook receives, `{"type": "alert.<kind>", "timestamp": ..., "data": {...}}`,
so alerts raised without a kind still go out (their kind is then read off the text).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

LOGGER = "engine.alerts"
_KIND = "alert_kind"
_DATA = "alert_data"
_TEXT_KIND = re.compile(r"^ALERT ([a-z][a-z ]*[a-z])")


def alert_extra(kind: str, **data: Any) -> dict[str, Any]:
    """`extra=` for an alert log call: its kind (`credential_locked`) and PHI-free facts."""
    return {_KIND: kind, _DATA: data}


@dataclass(frozen=True)
class Alert:
    kind: str
    timestamp: float
    text: str
    data: dict[str, Any]

    @classmethod
    def of(cls, record: logging.LogRecord) -> Alert:
        text = record.getMessage()
        kind = getattr(record, _KIND, None)
        if not isinstance(kind, str):
            found = _TEXT_KIND.match(text)
            kind = found.group(1).replace(" ", "_") if found else "other"
        data = getattr(record, _DATA, None)
        return cls(kind, record.created, text, dict(data) if isinstance(data, dict) else {})

    def payload(self) -> bytes:
        """The alert webhook's body."""
        when = datetime.fromtimestamp(self.timestamp, UTC).isoformat(timespec="milliseconds")
        body = {
            "type": f"alert.{self.kind}",
            "timestamp": when.replace("+00:00", "Z"),
            "data": {**self.data, "text": self.text},
        }
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
