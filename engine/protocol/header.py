"""The MSH header: encoding characters from MSH-1/MSH-2, and a cheap peek at the fields the
engine routes and acknowledges by (MSH-3..MSH-18) without parsing the rest of the message.

`Er7Error` (malformed ER7, with an HL7 table 0357 code and an ERL location) lives here
because the header is where most malformed input is first noticed.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.protocol.encoding import Encoding, unescape


class Er7Error(ValueError):
    """Malformed ER7. `code` is from HL7 table 0357, `location` an ERL such as `MSH^1^10`."""

    def __init__(self, message: str, *, code: int = 102, location: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.location = location


# --------------------------------------------------------------------------- header

_ENCODINGS: dict[str, Encoding] = {}
_BAD_SEPARATORS = "\r\n"


def encoding_of(msh: str) -> Encoding:
    """Encoding from the start of an MSH segment (MSH-1 and MSH-2)."""
    fs = msh[3:4]
    end = msh.find(fs, 4) if fs else -1
    key = msh[3:] if end < 0 else msh[3:end]
    enc = _ENCODINGS.get(key)
    if enc is not None:
        return enc
    chars = key[1:]
    if not fs or fs.isalnum() or fs.isspace() or fs in _BAD_SEPARATORS:
        raise Er7Error("MSH-1 is not a valid field separator", code=102, location="MSH^1^1")
    if len(chars) not in (4, 5) or len(set(key)) != len(key) or any(
        c.isalnum() or c.isspace() for c in chars
    ):
        raise Er7Error(
            "MSH-2 must hold 4 or 5 distinct encoding characters", code=102, location="MSH^1^2"
        )
    enc = Encoding(fs, chars[0], chars[1], chars[2], chars[3], chars[4] if len(chars) > 4 else None)
    if len(_ENCODINGS) < 64:
        _ENCODINGS[key] = enc
    return enc


@dataclass(frozen=True, slots=True)
class Header:
    encoding: Encoding
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_type: str
    trigger: str
    structure: str
    control_id: str
    processing_id: str
    version: str
    accept_ack: str
    app_ack: str
    charset: str
    fields: tuple[str, ...]


def _first_segment(data: bytes | str) -> str:
    """The first segment's text, skipping a BOM and blank lines (bytes read as latin-1)."""
    if isinstance(data, bytes):
        start, n = (3 if data[:3] == b"\xef\xbb\xbf" else 0), len(data)
        while start < n and data[start] in b"\r\n":
            start += 1
        end = data.find(b"\r", start)
        lf = data.find(b"\n", start, n if end < 0 else end)
        end = lf if lf >= 0 else n if end < 0 else end
        return data[start:end].decode("latin-1")
    text = data.lstrip("\ufeff\r\n")
    end = text.find("\r")
    lf = text.find("\n", 0, len(text) if end < 0 else end)
    end = lf if lf >= 0 else len(text) if end < 0 else end
    return text[:end]


def peek_header(data: bytes | str) -> Header:
    """Read only the MSH segment (bytes are read as latin-1: separators are ASCII)."""
    msh = _first_segment(data)
    if msh[:3] != "MSH":
        raise Er7Error("message does not start with an MSH segment", code=100, location="MSH^1")
    enc = encoding_of(msh)
    fields = msh.split(enc.field)
    fields.insert(1, enc.field)
    padded = fields + [""] * (19 - len(fields)) if len(fields) < 19 else fields
    rs, cs, esc = enc.repetition, enc.component, enc.escape
    # Values are whole fields or components of the first repetition; most have no
    # separators at all, so test before splitting.
    values = []
    for n in (3, 4, 5, 6, 10, 11, 12, 15, 16, 18):
        value = padded[n]
        if rs in value:
            value = value[: value.find(rs)]
        if n in (3, 4, 5, 6, 11, 12, 18) and cs in value:
            value = value[: value.find(cs)]
        values.append(unescape(value, enc) if esc in value else value)
    msg_type = padded[9]
    if rs in msg_type:
        msg_type = msg_type[: msg_type.find(rs)]
    kind = [unescape(k, enc) if esc in k else k for k in msg_type.split(cs)[:3]]
    kind += [""] * (3 - len(kind))
    v = values
    return Header(enc, v[0], v[1], v[2], v[3], kind[0], kind[1], kind[2], v[4], v[5], v[6], v[7],
                  v[8], v[9], tuple(fields))
