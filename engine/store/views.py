"""JSON views of stored messages: a search row and the whole story of one message, as
`engine messages --json` / `engine show --json` print them and the admin API answers them.

Rule kept: one shape for both, so a script written against the CLI reads the API too; bytes
are decoded with the message's own charset (replacement characters, never an exception);
times are given both as the stored epoch seconds and as text by the caller's `time_text`
(local time for the CLI, ISO 8601 UTC for the API).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from engine.store.base import MessageDetail, MessageFilter, MessageRow

TimeText = Callable[[float], str]


def message_json(row: MessageRow, time_text: TimeText) -> dict[str, Any]:
    data = asdict(row)
    data["received"] = time_text(row.received_at)
    return data


def filter_query(flt: MessageFilter) -> dict[str, Any]:
    """The filter's set fields: what a search's audit record says was asked."""
    return {k: v for k, v in asdict(flt).items() if v is not None}


def search_entities(rows: list[MessageRow]) -> dict[str, Any]:
    """What a search showed, for its audit record: the messages and, once each, the patients
    and appointments they name, and how many."""
    return {
        "message_ids": tuple(r.id for r in rows),
        "patient_ids": tuple(dict.fromkeys(p for r in rows for p in r.keys.patient_ids)),
        "appointment_ids": tuple(dict.fromkeys(a for r in rows for a in r.keys.appointment_ids)),
        "count": len(rows),
    }


def detail_json(detail: MessageDetail, time_text: TimeText) -> dict[str, Any]:
    codec = detail.message.charset or "utf-8"

    def text(data: bytes) -> str:
        return data.decode(codec, errors="replace")

    return {
        "message": message_json(detail.message, time_text),
        "raw": text(detail.raw),
        "ack": text(detail.ack),
        "results": [{**asdict(r), "output": text(r.output)} for r in detail.results],
        "deliveries": [
            {
                **asdict(d),
                "payload": text(d.payload),
                "attempts": [
                    {**asdict(a), "response": text(a.response)}
                    for a in detail.attempts
                    if a.delivery_id == d.id
                ],
            }
            for d in detail.deliveries
        ],
        "replays": list(detail.replays),
        "appointment": (
            {**asdict(detail.appointment), "resource": text(detail.appointment.resource)}
            if detail.appointment
            else None
        ),
    }
