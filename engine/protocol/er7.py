"""Lazy HL7 v2 ER7 reader/writer: paths like `SCH-7.1`, escapes, and the MSH header peek.

Rule kept: work is done only where it is asked for. `Message.parse` splits segments and
nothing else; a segment's fields are split on first access and cached; components and
repetitions are split on each access (cheaper than caching them). A segment never touched by
a write is emitted exactly as received, so `parse(x).to_er7() == x` for `\\r` messages.

Semantics:
- Segments may be separated by `\\r`, `\\n` or `\\r\\n` (mixed too); blank lines and a trailing
  terminator are ignored. The first segment must be MSH; its MSH-1 (field separator) and
  MSH-2 (4 or 5 distinct encoding characters, the 5th being v2.7 truncation) define the
  `Encoding`; anything else is `Er7Error`. Error texts never quote message content.
- Numbering is HL7's: MSH-1 is the field separator itself, MSH-2 the encoding characters,
  MSH-3 the first field after them; PID-3 is the 3rd field after the segment name.
- `get` returns "" when the segment, field, repetition or component is absent or empty. No
  repetition index = first repetition, no segment index = first segment of that name. A
  leaf (no lower-level separators left) is returned with escapes decoded; an element that
  still has separators (`get("PID-5")` on `Doe^Jane`) is returned as undecoded ER7 text.
  A whole-segment path (`NTE`) returns the segment's ER7 text.
- Occurrences (`get_all`, `map_all`, `remove`): every segment of that name unless a segment
  index is given, every repetition unless a repetition index is given. `get_all` skips
  empty or absent occurrences (HL7: empty means not present). `map_all` also visits empty
  ones inside existing segments, so a mapping can supply a default or report a missing
  value; it passes `fn` what `get` would return, writes a result only when it differs
  (escaped, like `set`; so map leaves such as `SCH-7.1`, not composites) and returns how
  many it changed. `remove` clears each occurrence that has content and never pads.
- `set` takes plain text and escapes it. A field path without repetition index replaces the
  whole field (all repetitions); a component or subcomponent path replaces only that
  element (first repetition unless given), padding fields, repetitions and components as
  needed. A missing segment is appended (padded with empty segments up to its index).
  MSH-1 and MSH-2 cannot be set; MSH cannot be removed.
- Escapes: \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ (\\P\\ when a truncation character is defined), \\Xhh..\\
  (bytes decoded as UTF-8, else latin-1), \\.br\\ is "\\n". Unknown or malformed sequences
  are kept as written. `escape` writes "\\r" as \\X0D\\ and "\\n" as \\.br\\, so
  `unescape(escape(x)) == x` for any text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from engine.protocol.encoding import Encoding, escape, unescape
from engine.protocol.header import Er7Error, Header, encoding_of, peek_header
from engine.protocol.paths import Path, PathError, is_segment_name, parse_path

__all__ = [
    "Encoding",
    "Er7Error",
    "Header",
    "Message",
    "Path",
    "PathError",
    "escape",
    "parse_path",
    "peek_header",
    "unescape",
]


# -------------------------------------------------------------------------- message

_SEGMENT_NAMES: set[str] = set()  # names already validated (bounded: 3 characters)


def _element(text: str, enc: Encoding, comp: int | None, sub: int | None) -> str:
    """ER7 text of component/subcomponent of one repetition ("" if absent)."""
    if comp is None:
        return text
    cs = enc.component
    if cs in text:
        parts = text.split(cs)
        text = parts[comp - 1] if comp <= len(parts) else ""
    elif comp > 1:
        return ""
    if sub is None:
        return text
    ss = enc.subcomponent
    if ss in text:
        parts = text.split(ss)
        return parts[sub - 1] if sub <= len(parts) else ""
    return text if sub == 1 else ""


def _value(text: str, enc: Encoding, comp: int | None, sub: int | None) -> str:
    """A leaf decoded, anything with separators left as ER7."""
    if sub is None and (enc.subcomponent in text or (comp is None and enc.component in text)):
        return text
    return unescape(text, enc) if enc.escape in text else text


def _replace(field: str, enc: Encoding, rep: int, comp: int | None, sub: int | None,
             value: str) -> str:
    """Field text with one element replaced by ER7 `value`, padding as needed."""
    reps = field.split(enc.repetition)
    reps.extend([""] * (rep - len(reps)))
    if comp is None:
        reps[rep - 1] = value
    else:
        comps = reps[rep - 1].split(enc.component)
        comps.extend([""] * (comp - len(comps)))
        if sub is None:
            comps[comp - 1] = value
        else:
            subs = comps[comp - 1].split(enc.subcomponent)
            subs.extend([""] * (sub - len(subs)))
            subs[sub - 1] = value
            comps[comp - 1] = enc.subcomponent.join(subs)
        reps[rep - 1] = enc.component.join(comps)
    return enc.repetition.join(reps)


def _as_path(path: str | Path) -> Path:
    return path if isinstance(path, Path) else parse_path(path)


class Message:
    """A parsed ER7 message; see the module docstring for the access rules."""

    __slots__ = ("_fields", "_names", "_raw", "encoding")

    def __init__(self, encoding: Encoding, names: list[str], raw: list[str | None],
                 fields: list[list[str] | None]) -> None:
        self.encoding = encoding
        self._names = names
        self._raw = raw  # None once a write changed the segment: rebuilt from _fields
        self._fields = fields

    @classmethod
    def parse(cls, text: str) -> Message:
        if "\n" in text:
            text = text.replace("\r\n", "\r").replace("\n", "\r")
        segments = [s for s in text.lstrip("\ufeff").split("\r") if s and not s.isspace()]
        if not segments or segments[0][:3] != "MSH":
            raise Er7Error("message does not start with an MSH segment", code=100,
                           location="MSH^1")
        enc = encoding_of(segments[0])
        fs = enc.field
        names = []
        for n, s in enumerate(segments, 1):
            name = s[:3]
            if name not in _SEGMENT_NAMES:
                if not is_segment_name(name):
                    raise Er7Error(f"segment {n} does not start with a segment name", code=100)
                _SEGMENT_NAMES.add(name)
            if len(s) > 3 and s[3] != fs:
                raise Er7Error(f"segment {n} has no field separator after its name", code=100)
            names.append(name)
        return cls(enc, names, list(segments), [None] * len(segments))

    # -- segments

    def _fields_of(self, i: int) -> list[str]:
        fields = self._fields[i]
        if fields is None:
            fields = self._raw[i].split(self.encoding.field)  # type: ignore[union-attr]
            if self._names[i] == "MSH":
                fields.insert(1, self.encoding.field)  # so fields[n] is MSH-n
            self._fields[i] = fields
        return fields

    def _segment_text(self, i: int) -> str:
        raw = self._raw[i]
        if raw is not None:
            return raw
        fields = self._fields_of(i)
        fs = self.encoding.field
        if self._names[i] == "MSH":
            return fields[0] + fs + fs.join(fields[2:])
        return fs.join(fields)

    def _indices(self, p: Path) -> list[int]:
        names = self._names
        if p.segment_index is None:
            return [i for i, n in enumerate(names) if n == p.segment]
        i = self._find(p.segment, p.segment_index)
        return [] if i < 0 else [i]

    def _find(self, name: str, index: int | None) -> int:
        names = self._names
        if index is None or index == 1:
            try:
                return names.index(name)
            except ValueError:
                return -1
        seen = 0
        for i, n in enumerate(names):
            if n == name:
                seen += 1
                if seen == index:
                    return i
        return -1

    def _find_or_add(self, name: str, index: int | None) -> int:
        i = self._find(name, index)
        if i >= 0:
            return i
        if name == "MSH":
            raise PathError("a message has one MSH segment; MSH cannot be added")
        for _ in range((index or 1) - self._names.count(name)):
            self._names.append(name)
            self._raw.append(None)
            self._fields.append([name])
        return len(self._names) - 1

    def segment_count(self, name: str) -> int:
        return self._names.count(name)

    def segment_names(self) -> list[str]:
        return list(self._names)

    # -- reading

    def _field(self, i: int, p: Path) -> str:
        fields = self._fields[i] or self._fields_of(i)
        return fields[p.field] if p.field < len(fields) else ""

    def _protected(self, i: int, p: Path) -> bool:
        return p.field <= 2 and self._names[i] == "MSH"

    def get(self, path: str | Path) -> str:
        p = path if isinstance(path, Path) else parse_path(path)
        i = self._find(p.segment, p.segment_index)
        if i < 0:
            return ""
        if not p.field:
            return self._segment_text(i)
        text = self._field(i, p)
        if not text:
            return ""
        if self._protected(i, p):  # separators themselves: never split nor decoded
            deeper = (p.repetition or 1, p.component or 1, p.subcomponent or 1)
            return text if deeper == (1, 1, 1) else ""
        enc = self.encoding
        if enc.repetition in text:
            reps = text.split(enc.repetition)
            r = p.repetition or 1
            text = reps[r - 1] if r <= len(reps) else ""
        elif p.repetition is not None and p.repetition > 1:
            return ""
        text = _element(text, enc, p.component, p.subcomponent)
        return _value(text, enc, p.component, p.subcomponent) if text else ""

    def components(self, path: str | Path, count: int) -> list[str]:
        """`get` of components 1..`count` of a field (or subcomponents 1..`count` of a
        component) in one call: the field is found and split once. `path` names the field
        (`AIP-3`) or the component (`PID-3.4`); values are decoded as `get` decodes them."""
        p = _as_path(path)
        if p.subcomponent is not None or not p.field:
            raise PathError(f"{p}: name a field or a component")
        i = self._find(p.segment, p.segment_index)
        text = self._field(i, p) if i >= 0 else ""
        if not text:
            return [""] * count
        if self._protected(i, p):  # MSH-1/MSH-2: never split; exactly what `get` says
            deeper = [replace(p, component=n) if p.component is None
                      else replace(p, subcomponent=n) for n in range(1, count + 1)]
            return [self.get(d) for d in deeper]
        enc = self.encoding
        reps = text.split(enc.repetition)
        r = p.repetition or 1
        rep = reps[r - 1] if r <= len(reps) else ""
        if p.component is None:
            parts = rep.split(enc.component)
            return [_value(parts[n - 1], enc, n, None) if n <= len(parts) else ""
                    for n in range(1, count + 1)]
        comp = _element(rep, enc, p.component, None)
        parts = comp.split(enc.subcomponent)
        return [_value(parts[n - 1], enc, p.component, n) if n <= len(parts) else ""
                for n in range(1, count + 1)]

    def _occurrences(self, i: int, p: Path) -> list[tuple[int, str]]:
        """(repetition number, repetition ER7 text) for each addressed repetition."""
        text = self._field(i, p)
        if p.repetition is None:
            return list(enumerate(text.split(self.encoding.repetition), 1))
        reps = text.split(self.encoding.repetition)
        r = p.repetition
        return [(r, reps[r - 1] if r <= len(reps) else "")]

    def get_all(self, path: str | Path) -> list[str]:
        p = _as_path(path)
        enc = self.encoding
        if not p.field:
            return [self._segment_text(i) for i in self._indices(p)]
        out = []
        for i in self._indices(p):
            if self._protected(i, p):
                value = self.get(p)
                if value:
                    out.append(value)
                continue
            for _, rep in self._occurrences(i, p):
                text = _element(rep, enc, p.component, p.subcomponent)
                if text:
                    out.append(_value(text, enc, p.component, p.subcomponent))
        return out

    # -- writing

    def _check_writable(self, p: Path) -> None:
        if p.segment == "MSH" and p.field in (1, 2):
            raise PathError(f"{p} holds the separators and cannot be written")
        if not p.field:
            raise PathError(f"{p} names whole segments; a field number is needed here")

    def _write(self, i: int, p: Path, rep: int | None, er7: str) -> None:
        fields = self._fields_of(i)
        if len(fields) <= p.field:
            fields.extend([""] * (p.field + 1 - len(fields)))
        if rep is None and p.component is None:
            fields[p.field] = er7
        else:
            fields[p.field] = _replace(fields[p.field], self.encoding, rep or 1, p.component,
                                       p.subcomponent, er7)
        self._raw[i] = None

    def set(self, path: str | Path, value: str) -> None:
        p = _as_path(path)
        self._check_writable(p)
        i = self._find_or_add(p.segment, p.segment_index)
        self._write(i, p, p.repetition, escape(value, self.encoding))

    def map_all(self, path: str | Path, fn: Callable[[str], str | None]) -> int:
        p = _as_path(path)
        self._check_writable(p)
        enc = self.encoding
        changed = 0
        for i in self._indices(p):
            for r, rep in self._occurrences(i, p):
                text = _element(rep, enc, p.component, p.subcomponent)
                old = _value(text, enc, p.component, p.subcomponent) if text else ""
                new = fn(old)
                if new is not None and new != old:
                    self._write(i, p, r, escape(new, enc))
                    changed += 1
        return changed

    def remove(self, path: str | Path) -> None:
        p = _as_path(path)
        if p.segment == "MSH" and p.field <= 2:
            raise PathError(f"{p} cannot be removed")
        indices = self._indices(p)
        if not p.field:
            for i in reversed(indices):
                del self._names[i], self._raw[i], self._fields[i]
            return
        enc = self.encoding
        for i in indices:
            if not self._field(i, p):
                continue
            if p.repetition is None and p.component is None:
                self._write(i, p, None, "")
                continue
            for r, rep in self._occurrences(i, p):
                if _element(rep, enc, p.component, p.subcomponent):
                    self._write(i, p, r, "")

    # -- output

    def to_er7(self, terminator: str = "\r") -> str:
        raw = self._raw
        if None in raw:
            raw = [self._segment_text(i) for i in range(len(raw))]
        return terminator.join(raw) + terminator  # type: ignore[arg-type]  # no None left

    def copy(self) -> Message:
        return Message(
            self.encoding, list(self._names), list(self._raw),
            [None if r is not None else list(f or ())
             for r, f in zip(self._raw, self._fields, strict=True)],
        )
