"""Channel filters: a `Condition` tree compiled once into a predicate over a message.

Field tests read the first occurrence of the field (`engine.protocol.er7.Message.get`):
`equals` compares text, `in`/`not_in` test membership, `exists: true` means non-empty,
`matches` is a regular-expression search (anchor with ^ and $ for a whole-value match).
A message passes the channel when the condition is true.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from engine.config.model import Condition
from engine.protocol.er7 import Message, parse_path

Predicate = Callable[[Message], bool]


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "Y" if value else "N"
    return str(value)


def compile_condition(cond: Condition) -> Predicate:
    if cond.op == "all":
        parts = [compile_condition(c) for c in cond.children]
        return lambda m: all(p(m) for p in parts)
    if cond.op == "any":
        parts = [compile_condition(c) for c in cond.children]
        return lambda m: any(p(m) for p in parts)
    if cond.op == "not":
        (inner,) = (compile_condition(c) for c in cond.children)
        return lambda m: not inner(m)
    if cond.field is None:
        raise ValueError(f"{cond.pos}: condition '{cond.op}' needs a field")
    path = parse_path(cond.field)
    if cond.op == "equals":
        expected = _text(cond.value)
        return lambda m: m.get(path) == expected
    if cond.op in ("in", "not_in"):
        values = frozenset(_text(v) for v in cond.value)
        if cond.op == "in":
            return lambda m: m.get(path) in values
        return lambda m: m.get(path) not in values
    if cond.op == "exists":
        wanted = bool(cond.value)
        return lambda m: (m.get(path) != "") is wanted
    if cond.op == "matches":
        pattern = re.compile(str(cond.value))
        return lambda m: pattern.search(m.get(path)) is not None
    raise ValueError(f"{cond.pos}: unknown condition '{cond.op}'")
