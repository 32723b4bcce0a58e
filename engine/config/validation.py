"""Checking a value against a JSON Schema and reporting each error at its YAML position.

`check(doc, prefix, value, schema, root)` first converts every `x-unit` node it can reach
(durations to seconds, sizes to bytes, paths to absolute), then validates with jsonschema
(Draft 2020-12) and rewrites each error into a `ConfigProblem` whose message says what was
expected, positioned at the offending node (or, for an unknown key, at the key itself).
The rule it keeps: a value the schema rejects is never repeated if it sits under a secret key.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.exceptions import best_match

from engine.config import units
from engine.config.errors import ConfigProblem
from engine.config.yaml_nodes import Doc, KeyPath

_TYPE_WORDS = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "nothing",
}


def _x_unit(
    validator: Any, unit: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    # Conversion ran before validation, so anything not yet converted did not convert.
    if not units.is_converted(unit, instance):
        yield ValidationError(f"expected {units.EXPECTED[unit]}")


_extend: Any = validators.extend  # untyped in types-jsonschema
_Validator: Any = _extend(Draft202012Validator, {"x-unit": _x_unit})


def check(
    doc: Doc, prefix: KeyPath, value: Any, schema: dict[str, Any], root: Path
) -> tuple[Any, list[ConfigProblem]]:
    """`value` (found at `prefix` in `doc`) converted per `x-unit`, and its problems."""
    converted = convert(value, schema, schema, root)
    validator = _Validator(schema)
    errors = list(validator.iter_errors(converted))
    unit_paths = {tuple(e.absolute_path) for e in errors if e.validator == "x-unit"}
    typed: set[KeyPath] = set()
    problems: list[ConfigProblem] = []
    for error in errors:
        where = tuple(error.absolute_path)
        if error.validator == "type":
            # `type: [number, string]` next to `x-unit` would say "expected a number" for a
            # list: the unit's wording is the useful one. And one value has one type problem,
            # even when both a node and the branch it picks (if/else) check the type.
            if where in unit_paths or where in typed:
                continue
            typed.add(where)
        problems.extend(_problems(doc, (*prefix, *where), error))
    return converted, problems


def convert(value: Any, schema: Any, root_schema: dict[str, Any], root: Path) -> Any:
    """A copy of `value` with every `x-unit` node reachable through `schema` converted."""
    if not isinstance(schema, dict):
        return value
    if "$ref" in schema:
        value = convert(value, _resolve(schema["$ref"], root_schema), root_schema, root)
    if "x-unit" in schema:
        value = units.convert(schema["x-unit"], value, root)
    for sub in schema.get("allOf", ()):
        value = convert(value, sub, root_schema, root)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            value = _convert_branches(value, schema[key], root_schema, root)
    if "if" in schema:
        fits = _Validator(schema["if"] | _defs(root_schema)).is_valid(value)
        branch = schema.get("then" if fits else "else")
        value = convert(value, branch, root_schema, root)
    if isinstance(value, dict):
        return _convert_object(value, schema, root_schema, root)
    if isinstance(value, list):
        prefix = schema.get("prefixItems", [])
        items = schema.get("items")
        return [
            convert(item, prefix[i] if i < len(prefix) else items, root_schema, root)
            for i, item in enumerate(value)
        ]
    return value


def _convert_object(
    value: dict[str, Any], schema: dict[str, Any], root_schema: dict[str, Any], root: Path
) -> dict[str, Any]:
    properties = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    extra = schema.get("additionalProperties")
    out = {}
    for key, item in value.items():
        subs = [properties[key]] if key in properties else []
        subs += [s for p, s in patterns.items() if re.search(p, key)]
        if not subs and extra is not None:
            subs = [extra]
        for sub in subs:
            item = convert(item, sub, root_schema, root)
        out[key] = item
    return out


def _convert_branches(
    value: Any, branches: list[Any], root_schema: dict[str, Any], root: Path
) -> Any:
    """The conversion by the first branch the converted value satisfies; else unchanged."""
    for branch in branches:
        candidate = convert(copy.deepcopy(value), branch, root_schema, root)
        if _Validator(branch | _defs(root_schema)).is_valid(candidate):
            return candidate
    return value


def _defs(root_schema: dict[str, Any]) -> dict[str, Any]:
    return {k: root_schema[k] for k in ("$defs", "definitions") if k in root_schema}


def _resolve(ref: str, root_schema: dict[str, Any]) -> Any:
    if not ref.startswith("#"):
        return {}  # a remote reference: no units reachable through it
    node: Any = root_schema
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node


def describe(value: Any) -> str:
    """A short rendering of a value for "got ..." (strings quoted, containers by kind)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"'{shown}'"
    return str(value)


def _got(doc: Doc, path: KeyPath, instance: Any) -> str:
    if doc.is_secret(path):
        return ""
    # The value as written (`'30 sec'`), not as converted, when the node was a scalar.
    written = doc.scalars.get(path, instance)
    if isinstance(instance, dict | list):
        written = instance
    return f", got {describe(written)}"


def _expected(error: ValidationError) -> str:
    schema = error.schema if isinstance(error.schema, dict) else {}
    if "x-expected" in schema:
        return str(schema["x-expected"])
    rule: Any = error.validator_value
    kind = error.validator
    unit = schema.get("x-unit")
    what = units.EXPECTED[unit].split(" like ")[0] if unit else "a value"
    if kind == "type":
        types = [rule] if isinstance(rule, str) else list(rule)
        return " or ".join(_TYPE_WORDS.get(t, t) for t in types)
    if kind == "enum":
        options = [str(o) for o in rule]
        return options[0] if len(options) == 1 else "one of " + ", ".join(options)
    if kind == "const":
        return describe(rule)
    if kind == "x-unit":
        return units.EXPECTED[rule]
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if kind in bounds:
        return f"{what} {bounds[kind]} {rule}"
    if kind == "minLength":
        return "a non-empty string" if rule == 1 else f"at least {rule} characters"
    if kind == "maxLength":
        return f"at most {rule} characters"
    if kind == "minItems":
        return "a non-empty list" if rule == 1 else f"at least {rule} items"
    if kind == "maxItems":
        return f"at most {rule} item" + ("" if rule == 1 else "s")
    if kind == "minProperties":
        return "at least one key" if rule == 1 else f"at least {rule} keys"
    if kind == "maxProperties":
        return f"at most {rule} keys"
    if kind == "pattern":
        return f"text matching {rule}"
    if kind == "uniqueItems":
        return "a list without repeated items"
    return ""


def _problems(doc: Doc, path: KeyPath, error: ValidationError) -> list[ConfigProblem]:
    kind = error.validator
    schema = error.schema if isinstance(error.schema, dict) else {}
    if kind in ("additionalProperties", "unevaluatedProperties") and isinstance(
        error.instance, dict
    ):
        known = list(schema.get("properties", {}))
        patterns = schema.get("patternProperties", {})
        out = []
        for key in error.instance:
            if key in known or any(re.search(p, key) for p in patterns):
                continue
            listing = f" (expected one of: {', '.join(known)})" if known else ""
            out.append(ConfigProblem(doc.key_at((*path, key)), f"unknown key '{key}'{listing}"))
        return out
    if kind == "required":
        required: Any = error.validator_value
        present: Any = error.instance
        missing = [k for k in required if k not in present]
        return [
            ConfigProblem(doc.at(path), f"missing required key '{key}'") for key in missing
        ]
    if "propertyNames" in error.absolute_schema_path:
        # Errors about a key name: the instance is the key itself.
        key_path = (*path, str(error.instance))
        got = "" if doc.is_secret(key_path) else f", got {describe(error.instance)}"
        return [ConfigProblem(doc.key_at(key_path), f"expected {_expected(error)}{got}")]
    if kind in ("anyOf", "oneOf") and error.context:
        return _branch_problems(doc, path, error)
    expected = _expected(error)
    if not expected:
        text = "invalid value" if doc.is_secret(path) else error.message
        return [ConfigProblem(doc.at(path), text)]
    return [ConfigProblem(doc.at(path), f"expected {expected}{_got(doc, path, error.instance)}")]


def _branch_problems(doc: Doc, path: KeyPath, error: ValidationError) -> list[ConfigProblem]:
    """For anyOf/oneOf: say which types would do when no branch accepts the value's type,
    otherwise report the closest branch's own problem."""
    schema = error.schema if isinstance(error.schema, dict) else {}
    if "x-expected" in schema:
        got = _got(doc, path, error.instance)
        return [ConfigProblem(doc.at(path), f"expected {schema['x-expected']}{got}")]
    context: Sequence[ValidationError] = error.context or []
    deeper = [e for e in context if not (e.validator == "type" and not e.relative_path)]
    if not deeper:
        words = [_expected(e) for e in context]
        unique = list(dict.fromkeys(w for w in words if w))
        got = _got(doc, path, error.instance)
        return [ConfigProblem(doc.at(path), f"expected {' or '.join(unique)}{got}")]
    best = best_match(deeper)
    assert best is not None
    sub = (*path, *best.relative_path)
    return _problems(doc, sub, best)
