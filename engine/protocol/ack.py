"""HL7 v2 acknowledgements: build the ACK we send, read the ACK we receive.

Rule kept: pure functions. The clock (`now`) and the ACK's own control id are passed in, so
the same inputs always give the same bytes. The ACK reuses the original's encoding
characters and copies its raw MSH values (never re-encoded), swaps sender and receiver, and
puts each error in an ERR segment (ERR-2 location, ERR-3 table 0357 code, ERR-4 severity,
ERR-8 user-facing text). Texts are escaped; they must not carry PHI (callers' duty).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from engine.protocol.er7 import Encoding, Er7Error, Header, Message, escape

# HL7 table 0357 (message error condition codes).
TABLE_0357 = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    104: "Value too long",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}
DEFAULT_PROCESSING_ID = "P"
DEFAULT_VERSION = "2.5.1"


@dataclass(frozen=True, slots=True)
class AckError:
    code: int  # table 0357
    text: str  # user-facing reason (ERR-8)
    location: str = ""  # ERL with "^" between parts, e.g. "SCH^1^7^1^1"
    severity: str = "E"  # E error, W warning, I information


@dataclass(frozen=True, slots=True)
class AckInfo:
    code: str  # MSA-1
    acked_control_id: str  # MSA-2
    text: str  # MSA-3
    control_id: str  # MSH-10 of the ACK itself
    errors: tuple[str, ...]  # ERR-8 texts (ERR-3 text when there is no ERR-8)


def _timestamp(now: datetime) -> str:
    offset = now.utcoffset()
    if offset is None:
        raise ValueError("build_ack needs a timezone-aware `now`")
    return _second(now.replace(microsecond=0), offset)


@functools.lru_cache(maxsize=4)
def _second(now: datetime, offset: timedelta) -> str:
    # One strftime per second instead of one per ACK: ACKs of one second share MSH-7. The
    # offset is part of the key because aware datetimes of one instant compare equal
    # whatever their time zone.
    return now.strftime("%Y%m%d%H%M%S%z")


def build_ack(header: Header | None, code: str, text: str, *, control_id: str, now: datetime,
              errors: Sequence[AckError] = (), application: str = "ENGINE",
              facility: str = "") -> str:
    """The ER7 text of an ACK (`\\r` after every segment); header None = unreadable input."""
    enc = header.encoding if header is not None else Encoding()
    fs, cs = enc.field, enc.component

    def raw(n: int) -> str:
        if header is None or n >= len(header.fields):
            return ""
        return header.fields[n]

    trigger = ""
    if header is not None:
        first_rep = raw(9).split(enc.repetition, 1)[0].split(cs)
        trigger = first_rep[1] if len(first_rep) > 1 else ""
    msh = [
        "MSH", enc.msh2,
        raw(5) or escape(application, enc), raw(6) or escape(facility, enc),
        raw(3), raw(4), _timestamp(now), "",
        f"ACK{cs}{trigger}{cs}ACK", escape(control_id, enc),
        raw(11) or DEFAULT_PROCESSING_ID, raw(12) or DEFAULT_VERSION,
    ]
    if raw(18):
        msh += ["", "", "", "", "", raw(18)]
    segments = [
        fs.join(msh),
        fs.join(("MSA", escape(code, enc), raw(10), escape(text, enc))),
    ]
    for err in errors:
        location = cs.join(escape(part, enc) for part in err.location.split("^"))
        condition = cs.join(
            (str(err.code), escape(TABLE_0357.get(err.code, ""), enc), "HL70357")
        )
        segments.append(fs.join(
            ("ERR", "", location, condition, escape(err.severity, enc), "", "", "",
             escape(err.text, enc))
        ))
    return "\r".join(segments) + "\r"


def parse_ack(text: str) -> AckInfo:
    """Read an ACK (or any message with MSA); Er7Error if it has no MSA segment."""
    msg = Message.parse(text)
    if not msg.segment_count("MSA"):
        raise Er7Error("acknowledgement has no MSA segment", code=100, location="MSA^1")
    errors = []
    for n in range(1, msg.segment_count("ERR") + 1):
        # v2.5+ puts the user text in ERR-8 and the coded condition in ERR-3; v2.3 senders
        # only fill ERR-1 (segment^seq^field^code&text).
        reason = (
            msg.get(f"ERR[{n}]-8") or msg.get(f"ERR[{n}]-3.2") or msg.get(f"ERR[{n}]-3.1")
            or msg.get(f"ERR[{n}]-1.4.2") or msg.get(f"ERR[{n}]-1.4.1")
        )
        if reason:
            errors.append(reason)
    return AckInfo(msg.get("MSA-1"), msg.get("MSA-2"), msg.get("MSA-3"), msg.get("MSH-10"),
                   tuple(errors))
