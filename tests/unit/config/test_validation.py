"""Schema checking as plugins use it: x-unit through $ref, anyOf and if/then/else; messages
rewritten into "expected ..."; secret values never repeated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.config.errors import ConfigProblem
from engine.config.validation import check
from engine.config.yaml_nodes import Doc, read

_ONE_OR_MANY = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}


def _check(tmp_path: Path, text: str, schema: dict[str, Any]) -> tuple[Any, list[str]]:
    file = tmp_path / "args.yaml"
    file.write_text(text, encoding="utf-8")
    problems: list[ConfigProblem] = []
    doc = read(file, {"ZZ_SECRET": "zz-synthetic-secret"}, problems)
    assert problems == []
    assert isinstance(doc, Doc)
    value, found = check(doc, (), doc.data, schema, tmp_path)
    return value, [f"{p.pos.line}:{p.pos.column}: {p.message}" for p in found]


def test_units_through_ref_and_any_of(tmp_path: Path) -> None:
    schema = {
        "type": "object",
        "properties": {
            "timeout": {"$ref": "#/$defs/seconds"},
            "limit": {"anyOf": [{"const": "unlimited"}, {"x-unit": "size"}]},
            "paths": {"type": "array", "items": {"x-unit": "path"}},
        },
        "$defs": {"seconds": {"x-unit": "duration"}},
    }
    value, problems = _check(tmp_path, "timeout: 2m\nlimit: 2KiB\npaths: [a, /b]\n", schema)
    assert problems == []
    assert value == {"timeout": 120.0, "limit": 2048, "paths": [str(tmp_path / "a"), "/b"]}
    value, problems = _check(tmp_path, "limit: unlimited\n", schema)
    assert (value, problems) == ({"limit": "unlimited"}, [])


def test_any_of_type_mismatch_lists_the_types(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"remove": _ONE_OR_MANY}}
    _, problems = _check(tmp_path, "remove: {PID-11: x}\n", schema)
    assert problems == ["1:9: expected a string or a list, got a mapping"]


def test_any_of_reports_the_closest_branch(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"remove": _ONE_OR_MANY}}
    _, problems = _check(tmp_path, "remove: [PID-11, [PID-13]]\n", schema)
    assert problems == ["1:18: expected a string, got a list"]


def test_messages_say_what_was_expected(tmp_path: Path) -> None:
    schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "mode": {"enum": ["fast"]},
            "count": {"type": "integer", "exclusiveMaximum": 10},
            "tags": {"type": "array", "maxItems": 1, "uniqueItems": True},
        },
    }
    text = "name: ''\nmode: slow\ncount: 10\ntags: [a, a]\n"
    _, problems = _check(tmp_path, text, schema)
    assert problems == [
        "1:7: expected a non-empty string, got ''",
        "2:7: expected fast, got 'slow'",
        "3:8: expected a value < 10, got 10",
        "4:7: expected at most 1 item, got a list",
        "4:7: expected a list without repeated items, got a list",
    ]


def test_secret_values_are_not_repeated(tmp_path: Path) -> None:
    schema = {
        "type": "object",
        "properties": {"api_key": {"type": "string", "pattern": "^sk-"}},
    }
    _, problems = _check(tmp_path, "api_key: ${ZZ_SECRET}\n", schema)
    assert problems == ["1:10: expected text matching ^sk-"]
    assert "zz-synthetic" not in "".join(problems)
