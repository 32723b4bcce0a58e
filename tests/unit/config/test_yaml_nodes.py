"""Reading YAML with positions: duplicate keys, syntax errors, YAML 1.2 scalars, merge keys,
aliases."""

from __future__ import annotations

from pathlib import Path

from engine.config.errors import ConfigProblem
from engine.config.model import Pos
from engine.config.yaml_nodes import Doc, read
from tests.unit.config.support import ConfigDir


def _read(tmp_path: Path, text: str) -> tuple[Doc | None, list[str]]:
    file = tmp_path / "file.yaml"
    file.write_text(text, encoding="utf-8")
    problems: list[ConfigProblem] = []
    doc = read(file, {}, problems)
    return doc, [f"{p.pos.line}:{p.pos.column}: {p.message}" for p in problems]


def test_positions_of_values_and_keys_are_one_based(tmp_path: Path) -> None:
    doc, problems = _read(tmp_path, "a:\n  b: [x, {c: 1}]\n")
    assert problems == []
    assert doc is not None
    assert doc.data == {"a": {"b": ["x", {"c": 1}]}}
    assert doc.at(("a", "b", 1, "c")) == Pos(tmp_path / "file.yaml", 2, 14)
    assert doc.key_at(("a", "b")) == Pos(tmp_path / "file.yaml", 2, 3)
    assert doc.at(("a", "b", 0)) == Pos(tmp_path / "file.yaml", 2, 7)
    # A path that was never written falls back to its nearest written ancestor.
    assert doc.at(("a", "b", 1, "missing")) == Pos(tmp_path / "file.yaml", 2, 10)


def test_duplicate_key_is_reported_at_the_second_key(cfg: ConfigDir) -> None:
    cfg.routes("""\
        listeners:
          epic-siu:
            mllp: {port: 2575}
            ack: commit
            ack: delivered
        routes:
          epic-siu: [siu-to-clinic-ehr]
        """)
    assert cfg.problems() == [
        "routes.yaml:5:5: duplicate key 'ack' (first at line 4, column 5)",
    ]


def test_duplicate_key_in_flow_mapping(tmp_path: Path) -> None:
    _, problems = _read(tmp_path, "mllp: {port: 1, host: h, port: 2}\n")
    assert problems == ["1:26: duplicate key 'port' (first at line 1, column 8)"]


def test_syntax_error_is_reported_at_its_position(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", """\
        steps:
          - set: {MSH-5: X}
           - map: {}
        """)
    assert cfg.problems() == [
        "channels/siu-to-clinic-ehr.yaml:3:4: invalid YAML: expected <block end>, but found "
        "'<block sequence start>' (while parsing a block collection at line 2, column 3)",
    ]


def test_tab_indentation_is_a_syntax_error(tmp_path: Path) -> None:
    doc, problems = _read(tmp_path, "steps:\n\t- set: {MSH-5: X}\n")
    assert doc is None
    assert problems == [
        "2:1: invalid YAML: found character '\\t' that cannot start any token "
        "(while scanning for the next token)"
    ]


def test_unclosed_quote_names_where_it_started(tmp_path: Path) -> None:
    _, problems = _read(tmp_path, 'description: "abc\n')
    assert problems == [
        "2:1: invalid YAML: found unexpected end of stream "
        "(while scanning a quoted scalar at line 1, column 14)"
    ]


def test_scalars_follow_yaml_1_2_core_schema(tmp_path: Path) -> None:
    doc, problems = _read(tmp_path, """\
country: NO
answer: yes
flag: true
time: 10:30
date: 2024-01-01
int: 042
hex: 0x1F
float: 1.5
nothing: ~
empty:
quoted: "true"
tagged: !!str 123
""")
    assert problems == []
    assert doc is not None
    assert doc.data == {
        "country": "NO",
        "answer": "yes",
        "flag": True,
        "time": "10:30",
        "date": "2024-01-01",
        "int": 42,
        "hex": 31,
        "float": 1.5,
        "nothing": None,
        "empty": None,
        "quoted": "true",
        "tagged": "123",
    }
    # The text as written is kept, so codes with leading zeros can be compared as text.
    assert doc.texts[("int",)] == "042"


def test_unsupported_tag_is_a_problem(tmp_path: Path) -> None:
    _, problems = _read(tmp_path, "a: !!binary aGVsbG8=\n")
    assert problems == [
        "1:4: unsupported tag 'tag:yaml.org,2002:binary' for this value "
        "(expected plain text, numbers, true/false or nothing)"
    ]


def test_keys_are_the_text_written(tmp_path: Path) -> None:
    doc, _ = _read(tmp_path, "01: a\ntrue: b\n1.0: c\n")
    assert doc is not None
    assert doc.data == {"01": "a", "true": "b", "1.0": "c"}


def test_merge_keys_with_explicit_keys_winning(tmp_path: Path) -> None:
    doc, problems = _read(tmp_path, """\
defaults: &retry {attempts: 5, first: 1s}
dest:
  <<: *retry
  attempts: 9
""")
    assert problems == []
    assert doc is not None
    assert doc.data["dest"] == {"attempts": 9, "first": "1s"}
    file = tmp_path / "file.yaml"
    assert doc.at(("dest", "attempts")) == Pos(file, 4, 13)
    assert doc.at(("dest", "first")) == Pos(file, 1, 39)
    assert doc.at(("dest",)) == Pos(file, 3, 3)


def test_merge_of_a_scalar_is_a_problem(tmp_path: Path) -> None:
    _, problems = _read(tmp_path, "a: &x 1\nb:\n  <<: *x\n")
    assert problems == ["1:4: expected a mapping (or a list of mappings) after <<"]


def test_recursive_alias_is_a_problem(tmp_path: Path) -> None:
    _, problems = _read(tmp_path, "a: &loop [*loop]\n")
    assert problems == ["1:4: expected a value, got a recursive alias"]


def test_alias_expansion_is_bounded(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    file = tmp_path / "file.yaml"
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    problems: list[ConfigProblem] = []
    assert read(file, {}, problems, max_aliased=1000) is None
    assert [str(p) for p in problems] == [
        f"{file}:1:1: expected aliases to repeat at most 1000 values, they repeat more"
    ]


def test_large_written_document_is_not_bounded(tmp_path: Path) -> None:
    rows = "".join(f"ZZ{i:05}: {{code: C{i}}}\n" for i in range(600))
    doc, problems = _read(tmp_path, rows)
    assert problems == []
    assert doc is not None and len(doc.data) == 600
    file = tmp_path / "file.yaml"
    assert read(file, {}, [], max_aliased=10) is not None


def test_empty_file_is_an_empty_document(tmp_path: Path) -> None:
    doc, problems = _read(tmp_path, "# nothing here\n")
    assert problems == []
    assert doc is not None and doc.data is None


def test_several_documents_are_a_problem(tmp_path: Path) -> None:
    doc, problems = _read(tmp_path, "a: 1\n---\nb: 2\n")
    assert doc is None
    assert problems == [
        "2:1: invalid YAML: expected a single document in the stream, "
        "but found another document"
    ]


def test_non_utf8_file_is_a_problem(tmp_path: Path) -> None:
    file = tmp_path / "file.yaml"
    file.write_bytes(b"a: 1\nb: \xff\n")
    problems: list[ConfigProblem] = []
    assert read(file, {}, problems) is None
    assert [str(p) for p in problems] == [f"{file}:2:1: expected UTF-8 text"]
