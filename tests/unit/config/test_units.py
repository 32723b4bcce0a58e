"""Durations, sizes and paths: parsing, schema-driven conversion, and bad units as problems."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.config.units import parse_duration, parse_size, resolve_path
from tests.unit.config.support import ConfigDir


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("24h", 86400.0), ("1d", 86400.0),
     ("1.5s", 1.5), (" 2 m ", 120.0), (30, 30.0), (0.25, 0.25), (0, 0.0)],
)
def test_durations(written: Any, seconds: float) -> None:
    assert parse_duration(written) == seconds


@pytest.mark.parametrize("written", ["30 sec", "30", "-1s", "1w", "", "s", True, -1, None, [1]])
def test_bad_durations(written: Any) -> None:
    assert parse_duration(written) is None


@pytest.mark.parametrize(
    ("written", "size"),
    [("512KiB", 512 * 1024), ("10MiB", 10 * 1024**2), ("1GiB", 1024**3), ("100kB", 100_000),
     ("2MB", 2_000_000), ("3GB", 3 * 10**9), ("12B", 12), ("0.5KiB", 512), (4096, 4096)],
)
def test_sizes(written: Any, size: int) -> None:
    assert parse_size(written) == size


@pytest.mark.parametrize("written", ["10mb", "10KB", "0.3B", "1.5", 1.5, -1, False, "MiB"])
def test_bad_sizes(written: Any) -> None:
    assert parse_size(written) is None


def test_paths_resolve_against_the_root(tmp_path: Path) -> None:
    assert resolve_path("out/files", tmp_path) == str(tmp_path / "out" / "files")
    assert resolve_path("/srv/out", tmp_path) == "/srv/out"
    assert resolve_path("", tmp_path) is None


def test_units_convert_in_core_and_plugin_schemas(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", """\
        steps:
          - wait: {for: 250ms}
        destinations:
          clinic-ehr:
            mllp: {host: ehr.test, port: 6661, ack_timeout: 2m}
            retry: {first: 2s, max: 1h}
          archive:
            file: {directory: archive/siu, max_bytes: 64KiB}
        dedupe: {window: 0}
        """)
    channel = cfg.load().channels["siu-to-clinic-ehr"]
    assert channel.steps[0].args == {"for": 0.25}
    mllp, file = channel.destinations
    assert mllp.options["ack_timeout"] == 120.0
    assert (mllp.retry.first, mllp.retry.max) == (2.0, 3600.0)
    assert file.options == {"directory": str(cfg.root / "archive" / "siu"), "max_bytes": 65536}
    assert channel.dedupe_window == 0.0


def test_bad_duration_is_a_problem_at_its_position(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", """\
        destinations:
          clinic-ehr:
            mllp: {host: ehr.test, port: 6661, ack_timeout: 30 sec}
        """)
    assert cfg.problems() == [
        "channels/siu-to-clinic-ehr.yaml:3:53: expected a duration like 500ms, 30s, 5m, 24h "
        "or 1d (or a number of seconds), got '30 sec'",
    ]


def test_bad_size_is_a_problem_at_its_position(cfg: ConfigDir) -> None:
    cfg.routes(cfg.routes_file.read_text().replace("1MiB", "1 megabyte"))
    assert cfg.problems() == [
        "routes.yaml:4:43: expected a size like 512KiB, 10MiB, 1GiB or 100kB "
        "(or a whole number of bytes), got '1 megabyte'",
    ]


def test_duration_bounds_name_the_unit_and_the_text_written(cfg: ConfigDir) -> None:
    cfg.routes(cfg.routes_file.read_text().replace("ack_timeout: 45s", "ack_timeout: 0s"))
    assert cfg.problems() == ["routes.yaml:6:18: expected a duration > 0, got '0s'"]


def test_duration_of_the_wrong_kind(cfg: ConfigDir) -> None:
    cfg.channel("siu-to-clinic-ehr", "dedupe: {window: [1h]}\n")
    assert cfg.problems() == [
        "channels/siu-to-clinic-ehr.yaml:1:18: expected a duration like 500ms, 30s, 5m, 24h "
        "or 1d (or a number of seconds), got a list",
    ]
