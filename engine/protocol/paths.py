"""HL7 v2 field paths: `SCH-7.1`, `PID-3[2].1`, `AIP[2]-3.1`, `NTE`, parsed once and cached.

Grammar: SEG ( "[" n "]" )? ( "-" F ( "[" r "]" )? ( "." C ( "." S )? )? )? with SEG =
[A-Z][A-Z0-9]{2} and every number >= 1. A path without a field (`NTE`) names whole segments.
`Path.location()` gives the ERL form used in ERR-2 (`SCH^1^7^1^1`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass


class PathError(ValueError):
    """A field path that does not follow the grammar, or an operation it cannot address."""


# ---------------------------------------------------------------------------- paths


@dataclass(frozen=True, slots=True)
class Path:
    segment: str
    segment_index: int | None = None
    field: int = 0
    repetition: int | None = None
    component: int | None = None
    subcomponent: int | None = None

    def __post_init__(self) -> None:
        if self.field < 0 or any(
            n is not None and n < 1
            for n in (self.segment_index, self.repetition, self.component, self.subcomponent)
        ):
            raise PathError(f"indices in {self} must be 1 or more")
        if self.field == 0 and (self.repetition or self.component):
            raise PathError(f"{self}: a repetition or component needs a field")
        if self.subcomponent is not None and self.component is None:
            raise PathError(f"{self}: a subcomponent needs a component")

    def __str__(self) -> str:
        out = self.segment
        if self.segment_index is not None:
            out += f"[{self.segment_index}]"
        if self.field:
            out += f"-{self.field}"
            if self.repetition is not None:
                out += f"[{self.repetition}]"
            if self.component is not None:
                out += f".{self.component}"
                if self.subcomponent is not None:
                    out += f".{self.subcomponent}"
        return out

    def location(self, segment_index: int = 1) -> str:
        """ERR-2 (ERL) form, e.g. `SCH^1^7^1^1`; the path's own segment index wins."""
        seq = self.segment_index if self.segment_index is not None else segment_index
        parts = [self.segment, str(seq)]
        if self.field:
            parts.append(str(self.field))
            if self.repetition is not None or self.component is not None:
                parts.append(str(self.repetition or 1))
            if self.component is not None:
                parts.append(str(self.component))
                if self.subcomponent is not None:
                    parts.append(str(self.subcomponent))
        return "^".join(parts)


def is_segment_name(name: str) -> bool:
    return len(name) == 3 and name.isascii() and name.isalnum() and name[0].isupper() and (
        name.upper() == name
    )


def _number(text: str, pos: int, what: str) -> tuple[int, int]:
    end = pos
    while end < len(text) and text[end].isdigit() and text[end].isascii():
        end += 1
    if end == pos or int(text[pos:end]) < 1:
        raise PathError(f"expected {what} in {text!r}")
    return int(text[pos:end]), end


def _bracket(text: str, pos: int, what: str) -> tuple[int, int]:
    n, pos = _number(text, pos + 1, f"{what} (1 or more) after '['")
    if text[pos : pos + 1] != "]":
        raise PathError(f"expected ']' after the {what} in {text!r}")
    return n, pos + 1


@functools.lru_cache(maxsize=4096)
def parse_path(text: str) -> Path:
    """Parse `SEG[n]-F[r].C.S` (all but SEG optional, 1-based); raise PathError saying why."""
    if not is_segment_name(text[:3]):
        raise PathError(
            f"expected a segment name (a capital letter then two capitals or digits) "
            f"at the start of {text!r}"
        )
    seg_index = rep = comp = sub = None
    field, pos = 0, 3
    if text[pos : pos + 1] == "[":
        seg_index, pos = _bracket(text, pos, "segment index")
    if pos < len(text):
        if text[pos] != "-":
            raise PathError(f"expected '-' and a field number after {text[:pos]!r} in {text!r}")
        field, pos = _number(text, pos + 1, "a field number after '-'")
        if text[pos : pos + 1] == "[":
            rep, pos = _bracket(text, pos, "repetition")
        if text[pos : pos + 1] == ".":
            comp, pos = _number(text, pos + 1, "a component number after '.'")
            if text[pos : pos + 1] == ".":
                sub, pos = _number(text, pos + 1, "a subcomponent number after '.'")
        if pos < len(text):
            raise PathError(f"unexpected {text[pos:]!r} at the end of {text!r}")
    return Path(text[:3], seg_index, field, rep, comp, sub)
