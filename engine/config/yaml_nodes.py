"""Reading one configuration file into plain data while keeping where every value was written.

PyYAML is used for scanning and composing only (`compose` keeps `start_mark` on each node);
this module turns the node tree into dicts, lists and scalars plus a position index keyed by
path (`("destinations", "clinic-ehr", "retry")`). Rules it keeps:

- Scalars follow the YAML 1.2 core schema: only `true`/`false` are booleans and there are no
  timestamps or base-60 numbers, so HL7 values such as `NO`, `Y` or `10:30` stay text.
- Mapping keys are the text written; a key written twice is a problem (PyYAML would silently
  keep the last one). Merge keys (`<<: *defaults`) work, explicit keys winning.
- `${ENV}` references are resolved in every string scalar; an unquoted scalar is typed after
  substitution, so `port: ${PORT:-2575}` is an integer. Secret-named keys must hold exactly
  one `${NAME}` and their paths are remembered so that no message repeats their values.
- Syntax errors become problems at the position PyYAML reports, 1-based.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml
from yaml.composer import Composer
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from engine.config import env
from engine.config.errors import ConfigProblem
from engine.config.model import Pos

KeyPath = tuple[str | int, ...]

_TAG = "tag:yaml.org,2002:"
_MERGE_TAG = _TAG + "merge"
# Bounds how many values aliases may copy ("billion laughs"); written values are not counted,
# so a large mapping table is fine.
MAX_ALIASED = 100_000

_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False,
         "FALSE": False}
_INT = re.compile(r"^[-+]?[0-9]+$")
_OCT = re.compile(r"^0o[0-7]+$")
_HEX = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_INF = re.compile(r"^[-+]?\.(?:inf|Inf|INF)$")
_NAN = re.compile(r"^\.(?:nan|NaN|NAN)$")


@dataclass
class Doc:
    """One file's data with positions: `values` of every node, `keys` of mapping keys,
    `texts` the text of every scalar as written (after `${ENV}`), `scalars` its typed value
    before any unit conversion, `secrets` the paths whose values must never be shown."""

    file: Path
    data: Any = None
    values: dict[KeyPath, Pos] = field(default_factory=dict)
    keys: dict[KeyPath, Pos] = field(default_factory=dict)
    texts: dict[KeyPath, str] = field(default_factory=dict)
    scalars: dict[KeyPath, Any] = field(default_factory=dict)
    secrets: set[KeyPath] = field(default_factory=set)

    def at(self, path: Sequence[str | int]) -> Pos:
        """Position of the value at `path`, else of its nearest written ancestor."""
        key = tuple(path)
        while key and key not in self.values:
            key = key[:-1]
        return self.values.get(key, Pos(self.file, 1, 1))

    def key_at(self, path: Sequence[str | int]) -> Pos:
        """Position of the mapping key that ends `path` (falls back to the value's)."""
        return self.keys.get(tuple(path)) or self.at(path)

    def is_secret(self, path: Sequence[str | int]) -> bool:
        key = tuple(path)
        return any(key[:n] in self.secrets for n in range(len(key) + 1))


class _PlainMarks(Composer):
    """Remembers which scalars were plain and untagged: only those get an implicit type."""

    plain: set[int]

    def compose_scalar_node(self, anchor: Any) -> ScalarNode:
        event = cast(Any, self).peek_event()  # from the parser this is mixed with
        node = super().compose_scalar_node(anchor)
        if event.tag in (None, "!") and event.implicit[0]:
            self.plain.add(id(node))
        return node

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        # Scalars are typed later by `_plain_value` (YAML 1.2 core); only the merge key
        # needs a tag here, and skipping PyYAML's YAML 1.1 regexes saves a third of the time.
        if kind is ScalarNode:
            return _MERGE_TAG if implicit[0] and value == "<<" else _TAG + "str"
        return _TAG + ("seq" if kind is SequenceNode else "map")


class _Loader(_PlainMarks, yaml.SafeLoader):
    """Pure-Python scanning: slow, but its syntax error messages are the clearest."""

    def __init__(self, stream: str) -> None:
        yaml.SafeLoader.__init__(self, stream)
        self.plain = set()


_FastLoader: Any = None
if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _CLoader(_PlainMarks, CParser, Resolver):
        """libyaml events composed by PyYAML's Composer (so marks and plain-ness are kept):
        about four times faster (0.44 s against 1.7 s for a 10,000-row table here)."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            Composer.__init__(self)
            Resolver.__init__(self)
            self.plain = set()

    _FastLoader = _CLoader


def _compose_with(cls: Any, text: str) -> tuple[Node | None, set[int]]:
    loader = cls(text)
    try:
        return loader.get_single_node(), loader.plain
    finally:
        loader.dispose()


def _compose(text: str) -> tuple[Node | None, set[int]]:
    if _FastLoader is not None:
        try:
            return _compose_with(_FastLoader, text)
        except yaml.YAMLError:
            pass  # PyYAML's own parser words the same error better; let it report it
    return _compose_with(_Loader, text)


def _syntax_problem(file: Path, text: str, exc: yaml.MarkedYAMLError) -> ConfigProblem:
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    what = exc.problem or exc.context or "syntax error"
    context = ""
    if exc.context and exc.problem and exc.problem.startswith("but "):
        what = f"{exc.context}, {exc.problem}"  # one sentence split in two by PyYAML
    elif exc.context and exc.problem:
        start = exc.context_mark
        # Where the unfinished construct began is often the line to fix.
        where = (f" at line {start.line + 1}, column {start.column + 1}"
                 if start is not None and start.line + 1 != line else "")
        context = f" ({exc.context}{where})"
    if mark is not None and text[max(mark.index - 1, 0) : mark.index + 1] == "${":
        # `{a: ${X}}`: inside {...} or [...] an unquoted `${` opens a flow mapping.
        context += '; inside {...} or [...] write "${NAME}" in quotes'
    return ConfigProblem(Pos(file, line, column), f"invalid YAML: {what}{context}")


class _TooLarge(Exception):
    pass


def _pos(file: Path, node: Node) -> Pos:
    return Pos(file, node.start_mark.line + 1, node.start_mark.column + 1)


def _plain_value(text: str) -> Any:
    if _NULL.match(text):
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT.match(text):
        return int(text)
    if _OCT.match(text):
        return int(text[2:], 8)
    if _HEX.match(text):
        return int(text[2:], 16)
    if _FLOAT.match(text):
        return float(text)
    if _INF.match(text):
        return -math.inf if text.startswith("-") else math.inf
    if _NAN.match(text):
        return math.nan
    return text


def _tagged_value(tag: str, text: str) -> Any:
    """Value of an explicitly tagged scalar (`!!str 0123`); ValueError when it does not fit."""
    if tag == _TAG + "str":
        return text
    value = _plain_value(text)
    kinds = {_TAG + "int": int, _TAG + "float": float, _TAG + "bool": bool}
    if tag == _TAG + "null" and value is None:
        return None
    kind = kinds.get(tag)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is not None and type(value) is kind:
        return value
    raise ValueError(tag)


class _Builder:
    def __init__(self, doc: Doc, plain: set[int], environ: Mapping[str, str],
                 problems: list[ConfigProblem], max_aliased: int) -> None:
        self.doc = doc
        self.plain = plain
        self.environ = environ
        self.problems = problems
        self.max_aliased = max_aliased
        self.built: set[int] = set()
        self.aliased = 0

    def problem(self, pos: Pos, message: str) -> None:
        self.problems.append(ConfigProblem(pos, message))

    def build(self, node: Node, path: KeyPath, stack: tuple[int, ...], secret: bool) -> Any:
        if id(node) in self.built:
            self.aliased += 1
            if self.aliased > self.max_aliased:
                raise _TooLarge
        self.built.add(id(node))
        if id(node) in stack:
            self.problem(_pos(self.doc.file, node), "expected a value, got a recursive alias")
            return None
        stack = (*stack, id(node))
        if isinstance(node, MappingNode):
            value: Any = self.mapping(node, path, stack, secret)
        elif isinstance(node, SequenceNode):
            value = [
                self.build(item, (*path, i), stack, secret) for i, item in enumerate(node.value)
            ]
        else:
            assert isinstance(node, ScalarNode)
            value = self.scalar(node, path, secret)
        self.doc.values[path] = _pos(self.doc.file, node)
        return value

    def mapping(
        self, node: MappingNode, path: KeyPath, stack: tuple[int, ...], secret: bool
    ) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged = self.merge(value_node, path, stack, secret) | merged
        out: dict[str, Any] = {}
        seen: dict[str, Pos] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key_pos = _pos(self.doc.file, key_node)
            if not isinstance(key_node, ScalarNode):
                self.problem(key_pos, "expected a plain key, got a mapping or list as a key")
                continue
            key = str(key_node.value)
            if key in seen:
                first = seen[key]
                self.problem(key_pos, f"duplicate key '{key}' (first at line {first.line}, "
                                      f"column {first.column})")
                continue
            seen[key] = key_pos
            sub = (*path, key)
            self.doc.keys[sub] = key_pos
            secret_key = env.is_secret_key(key) or env.is_secret_path(sub)
            if secret_key:
                self.doc.secrets.add(sub)
                if not (isinstance(value_node, ScalarNode)
                        and env.is_secret_reference(str(value_node.value))):
                    self.problem(_pos(self.doc.file, value_node), env.SECRET_MESSAGE)
            out[key] = self.build(value_node, sub, stack, secret or secret_key)
        return merged | out

    def merge(
        self, node: Node, path: KeyPath, stack: tuple[int, ...], secret: bool
    ) -> dict[str, Any]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        merged: dict[str, Any] = {}
        # Earlier sources win over later ones (YAML merge key rules).
        for source in reversed(sources):
            if not isinstance(source, MappingNode):
                self.problem(_pos(self.doc.file, source),
                             "expected a mapping (or a list of mappings) after <<")
                continue
            merged |= self.build(source, path, stack, secret)
        return merged

    def scalar(self, node: ScalarNode, path: KeyPath, secret: bool) -> Any:
        text = str(node.value)
        is_plain = id(node) in self.plain
        if is_plain:
            value = _plain_value(text)
        else:
            try:
                value = _tagged_value(node.tag, text)
            except ValueError:
                self.problem(_pos(self.doc.file, node),
                             f"unsupported tag '{node.tag}' for this value (expected plain "
                             "text, numbers, true/false or nothing)")
                value = text
        if isinstance(value, str):
            if env.has_literal_url_password(text):
                self.doc.secrets.add(path)
                self.problem(_pos(self.doc.file, node), env.SECRET_MESSAGE)
                secret = True
            result = env.substitute(value, self.environ, show=not secret)
            for error in result.errors:
                self.problem(_pos(self.doc.file, node), error)
            if result.changed and not result.errors:
                text = result.text
                value = _plain_value(text) if is_plain else text
        self.doc.texts[path] = text
        self.doc.scalars[path] = value
        return value


def read(
    file: Path, environ: Mapping[str, str], problems: list[ConfigProblem], *,
    max_aliased: int = MAX_ALIASED,
) -> Doc | None:
    """The file as a `Doc`, or None (with a problem) when it cannot be read or parsed.
    Problems inside a parsable file (duplicate keys, unset variables) are appended to
    `problems` and the Doc is still returned, so later checks can report theirs too."""
    doc = Doc(file)
    try:
        text = file.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        problems.append(ConfigProblem(Pos(file, 1, 1), f"cannot read file: {exc.strerror}"))
        return None
    except UnicodeDecodeError as exc:
        line = exc.object.count(b"\n", 0, exc.start) + 1
        problems.append(ConfigProblem(Pos(file, line, 1), "expected UTF-8 text"))
        return None
    try:
        root, plain = _compose(text)
    except yaml.MarkedYAMLError as exc:
        problems.append(_syntax_problem(file, text, exc))
        return None
    except yaml.YAMLError as exc:
        problems.append(ConfigProblem(Pos(file, 1, 1), f"invalid YAML: {exc}"))
        return None
    if root is None:
        return doc
    builder = _Builder(doc, plain, environ, problems, max_aliased)
    try:
        doc.data = builder.build(root, (), (), False)
    except _TooLarge:
        problems.append(ConfigProblem(_pos(file, root), "expected aliases to repeat at most "
                                      f"{max_aliased} values, they repeat more"))
        return None
    return doc
