"""What "mapped" means in the round-trip tests: the SIU fields of the conversion table, read
into comparable values (meanings, not spellings: statuses as their FHIR code, times as
instants, units as minutes). Any field not read here is outside the round-trip promise.
"""

from __future__ import annotations

from datetime import datetime, timedelta, tzinfo
from typing import Any

from engine.conversions.codes import fhir_status, parse_hl7_timestamp, participant_status
from engine.protocol.er7 import Message

_MINUTES = {"min", "minute", "minutes"}


def _hd(m: Message, path: str) -> tuple[str, str, str]:
    ns, uid, kind = m.get(f"{path}.1"), m.get(f"{path}.2"), m.get(f"{path}.3").upper()
    return (ns, uid, kind) if uid and kind in ("ISO", "URI") else (ns, "", "")


def _ei(m: Message, field: int) -> tuple[str, ...] | None:
    value = m.get(f"SCH-{field}.1")
    if not value:
        return None
    ns, uid, kind = (m.get(f"SCH-{field}.{n}") for n in (2, 3, 4))
    kind = kind.upper()
    return (value, ns, uid, kind) if uid and kind in ("ISO", "URI") else (value, ns, "", "")


def _cwe(m: Message, path: str) -> tuple[str, str, str]:
    code = " ".join(m.get(f"{path}.1").split())
    text = m.get(f"{path}.2")
    return (code, text, m.get(f"{path}.3")) if code else ("", text, "")


def _minutes(m: Message) -> int | None:
    duration = m.get("SCH-9")
    if m.get("SCH-10.1").casefold() in _MINUTES and duration.isdigit() and int(duration) > 0:
        return int(duration)
    return None


def _times(m: Message, tz: tzinfo) -> tuple[datetime | None, datetime | None]:
    pair = ("SCH-11.4.1", "SCH-11.5.1") if m.get("SCH-11.4.1") else ("TQ1-7.1", "TQ1-8.1")
    start, end = (parse_hl7_timestamp(m.get(p), tz, p) for p in pair)
    minutes = _minutes(m)
    if end is None and start is not None and minutes is not None:
        end = start + timedelta(minutes=minutes)
    return start, end


def _comment(m: Message) -> str:
    notes: list[str] = []
    names = m.segment_names()
    nte = 0
    for i, name in enumerate(names):
        if name == "NTE":
            nte += 1
            before = [n for n in names[:i] if n != "NTE"]
            if before and before[-1] in ("SCH", "TQ1"):
                notes.extend(m.get_all(f"NTE[{nte}]-3"))
    return "\n".join(notes)


def siu_mapped(m: Message, tz: tzinfo) -> dict[str, Any]:
    """Every mapped field of an SIU message, as comparable values."""
    def seg(name: str) -> list[str]:
        return [f"{name}[{k}]" for k in range(1, m.segment_count(name) + 1)]

    return {
        "placer": _ei(m, 1),
        "filler": _ei(m, 2),
        "status": fhir_status(m.get("SCH-25.1"), m.get("MSH-9.2")),
        "reason": _cwe(m, "SCH-7"),
        "type": _cwe(m, "SCH-8"),
        "minutes": _minutes(m),
        "times": _times(m, tz),
        "comment": _comment(m),
        "patients": [(m.get(f"{s}-3.1"), _hd(m, f"{s}-3.4"), m.get(f"{s}-3.5"))
                     for s in seg("PID") if m.get(f"{s}-3.1")],
        "services": [_cwe(m, f"{s}-3") for s in seg("AIS") if any(_cwe(m, f"{s}-3"))],
        "general": [(m.get(f"{s}-3.1"), m.get(f"{s}-3.2"),
                     m.get(f"{s}-3.3") if m.get(f"{s}-3.1") else "", _cwe(m, f"{s}-4"),
                     participant_status(m.get(f"{s}-14.1"), "AIG-14"))
                    for s in seg("AIG") if m.get(f"{s}-3.1") or m.get(f"{s}-3.2")],
        "locations": [(m.get(f"{s}-3.1"), _hd(m, f"{s}-3.4"), _cwe(m, f"{s}-4"),
                       participant_status(m.get(f"{s}-12.1"), "AIL-12"))
                      for s in seg("AIL") if m.get(f"{s}-3.1")],
        "personnel": [(m.get(f"{s}-3.1"), _hd(m, f"{s}-3.9"), _cwe(m, f"{s}-4"),
                       participant_status(m.get(f"{s}-12.1"), "AIP-12"))
                      for s in seg("AIP") if m.get(f"{s}-3.1")],
    }
