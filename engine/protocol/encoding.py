r"""ER7 encoding characters (MSH-1/MSH-2) and escape sequences.

`escape` turns plain text into ER7 text for one `Encoding`; `unescape` reverses it:
\F\ \S\ \T\ \R\ \E\ (\P\ when a truncation character is defined), \Xhh..\ (bytes decoded as
UTF-8, else latin-1) and \.br\ ("\n"). Unknown or malformed sequences are kept as written,
and `unescape(escape(x)) == x` for any text.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Encoding:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str | None = None

    @property
    def msh2(self) -> str:
        """The encoding characters as written in MSH-2."""
        return (
            self.component + self.repetition + self.escape + self.subcomponent
            + (self.truncation or "")
        )


# -------------------------------------------------------------------------- escapes

_ESCAPE_TABLES: dict[Encoding, dict[int, str]] = {}
_last: tuple[Encoding | None, dict[int, str]] = (None, {})


def escape(text: str, enc: Encoding) -> str:
    """Plain text -> ER7 text safe inside any element."""
    global _last
    # Building a message escapes many values with one Encoding: the identity check spares
    # hashing the dataclass each time.
    last_enc, table = _last
    if last_enc is not enc:
        table = _table(enc)
        _last = (enc, table)
    return text.translate(table)


def _table(enc: Encoding) -> dict[int, str]:
    table = _ESCAPE_TABLES.get(enc)
    if table is None:
        e = enc.escape
        table = {
            ord(e): f"{e}E{e}", ord(enc.field): f"{e}F{e}", ord(enc.component): f"{e}S{e}",
            ord(enc.subcomponent): f"{e}T{e}", ord(enc.repetition): f"{e}R{e}",
            ord("\r"): f"{e}X0D{e}", ord("\n"): f"{e}.br{e}",
        }
        if enc.truncation:
            table[ord(enc.truncation)] = f"{e}P{e}"
        _ESCAPE_TABLES[enc] = table
    return table


def _decode_sequence(seq: str, enc: Encoding) -> str | None:
    if len(seq) == 1:
        return {
            "F": enc.field, "S": enc.component, "T": enc.subcomponent, "R": enc.repetition,
            "E": enc.escape, "P": enc.truncation,
        }.get(seq)
    if seq == ".br":
        return "\n"
    if seq[:1] == "X":
        try:
            raw = bytes.fromhex(seq[1:])
        except ValueError:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")
    return None


def unescape(text: str, enc: Encoding) -> str:
    """ER7 text -> plain text; unknown or unterminated sequences are kept as written."""
    e = enc.escape
    if e not in text:
        return text
    parts = text.split(e)
    out = [parts[0]]
    last = len(parts) - 1
    for i in range(1, last, 2):
        decoded = _decode_sequence(parts[i], enc)
        out.append(e + parts[i] + e if decoded is None else decoded)
        out.append(parts[i + 1])
    if last % 2:  # an odd number of escape characters: the last one opens nothing
        out.append(e + parts[last])
    return "".join(out)
