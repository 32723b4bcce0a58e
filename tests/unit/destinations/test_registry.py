"""The destination registry: schemas per type, the file template check, build dispatch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from engine.config.model import DestinationConfig, Pos
from engine.config.registry import CheckContext
from engine.destinations import REGISTRY, build
from engine.destinations.file import FileDestination
from engine.destinations.mllp import MllpDestination

POS = Pos(Path("/cfg/channels/siu-to-clinic.yaml"), 12, 5)


def config(kind: str, options: dict[str, Any]) -> DestinationConfig:
    return DestinationConfig("clinic-ehr", "siu-to-clinic", kind, options, POS)


def valid(kind: str, options: Any) -> bool:
    schema = REGISTRY[kind].schema
    return not list(Draft202012Validator(schema).iter_errors(options))


def test_registry_names_match_plugins_and_schemas_are_valid_and_closed() -> None:
    assert set(REGISTRY) == {"mllp", "file", "webhook", "fhir"}
    for kind, plugin in REGISTRY.items():
        assert plugin.name == kind
        Draft202012Validator.check_schema(plugin.schema)
        assert plugin.schema["additionalProperties"] is False


@pytest.mark.parametrize(
    ("options", "ok"),
    [
        ({"host": "ehr.example.test", "port": 6661}, True),
        (
            {
                "host": "10.0.0.5",
                "port": 65535,
                "ack_timeout": 0.5,
                "connect_timeout": 2.0,
                "connections": 64,
                "max_ack_bytes": 4096,
            },
            True,
        ),
        ({"port": 6661}, False),
        ({"host": "", "port": 6661}, False),
        ({"host": "h", "port": 0}, False),
        ({"host": "h", "port": 65536}, False),
        ({"host": "h", "port": 1, "connections": 0}, False),
        ({"host": "h", "port": 1, "connections": 65}, False),
        ({"host": "h", "port": 1, "ack_timeout": 0}, False),
        ({"host": "h", "port": 1, "tls": True}, False),
    ],
)
def test_mllp_schema(options: dict[str, Any], ok: bool) -> None:
    assert valid("mllp", options) is ok


@pytest.mark.parametrize(
    ("options", "ok"),
    [
        ({"directory": "/var/outbox"}, True),
        ({"directory": "/var/outbox", "filename": "{control_id}.hl7"}, True),
        ({}, False),
        ({"directory": ""}, False),
        ({"directory": "/var/outbox", "mode": "0600"}, False),
    ],
)
def test_file_schema(options: dict[str, Any], ok: bool) -> None:
    assert valid("file", options) is ok


def test_file_check_points_at_the_filename() -> None:
    seen: list[tuple[str | int, ...]] = []

    def at(where: tuple[str | int, ...]) -> Pos:
        seen.append(where)
        return Pos(POS.file, 14, 17)

    ctx = CheckContext(tables={}, transforms_dir=Path("/cfg/transforms"), at=at)
    check = REGISTRY["file"].check
    assert check({"directory": "/x"}, ctx) == []
    assert check({"directory": "/x", "filename": "{message_id}.hl7"}, ctx) == []
    problems = check({"directory": "/x", "filename": "{patient_name}.hl7"}, ctx)
    assert len(problems) == 1
    assert str(problems[0]).startswith(f"{POS.file}:14:17: unknown placeholder {{patient_name}}")
    assert seen == [("filename",)]


def test_build_mllp_applies_defaults() -> None:
    d = build(config("mllp", {"host": "127.0.0.1", "port": 6661}))
    assert isinstance(d, MllpDestination)
    assert (d.name, d.concurrency, d.peer) == ("clinic-ehr", 1, "127.0.0.1:6661")
    assert (d.ack_timeout, d.connect_timeout, d.max_ack_bytes) == (30.0, 10.0, 1024 * 1024)


def test_build_mllp_takes_converted_options() -> None:
    opts = {"host": "h", "port": 1, "ack_timeout": 0.2, "connections": 4, "max_ack_bytes": 512}
    d = build(config("mllp", opts))
    assert isinstance(d, MllpDestination)
    assert (d.concurrency, d.ack_timeout, d.max_ack_bytes) == (4, 0.2, 512)


def test_build_file(tmp_path: Path) -> None:
    d = build(config("file", {"directory": str(tmp_path), "filename": "{control_id}.hl7"}))
    assert isinstance(d, FileDestination)
    assert (d.directory, d.filename, d.concurrency) == (tmp_path, "{control_id}.hl7", 1)


def test_build_unknown_kind_names_the_position() -> None:
    with pytest.raises(ValueError, match=r"siu-to-clinic\.yaml:12:5: unknown destination type"):
        build(config("carrier-pigeon", {}))
