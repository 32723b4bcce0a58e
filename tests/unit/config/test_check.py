"""`engine check`: problems printed as file:line:column: message, or a one-line summary."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from engine.config import run_check
from tests.unit.config.support import DESTINATIONS, STEPS, ConfigDir


def _check(cfg: ConfigDir, routes: Path | None = None) -> tuple[int, str]:
    out = io.StringIO()
    code = run_check(routes or cfg.routes_file, out, steps=STEPS, destinations=DESTINATIONS)
    return code, out.getvalue()


def test_ok_summary(cfg: ConfigDir) -> None:
    text = (cfg.root / "channels" / "siu-to-clinic-ehr.yaml").read_text()
    cfg.channel("siu-to-clinic-ehr", text + """\
  - name: follow up
    input: samples/siu_s12_new_patient.hl7
    expect: {clinic-ehr: {MSH-5: CLINIC_EHR}}
  - name: pending is filtered
    input: samples/siu_s12_new_patient.hl7
    outcome: filtered
""")
    assert _check(cfg) == (0, "ok: 1 listener, 1 channel, 2 tables, 3 channel tests\n")


def test_ok_summary_counts_in_plural_and_zero(cfg: ConfigDir) -> None:
    cfg.routes("""\
        listeners:
          epic-siu: {mllp: {port: 2575}}
          lab: {mllp: {port: 2576}}
        routes:
          epic-siu: [siu-to-clinic-ehr]
          lab: [events]
        """)
    cfg.channel("events", "description: no destinations yet\n")
    (cfg.root / "transforms" / "tables" / "providers.yaml").unlink()
    assert _check(cfg) == (0, "ok: 2 listeners, 2 channels, 1 table, 1 channel test\n")


def test_problems_are_printed_relative_to_the_current_directory(
    cfg: ConfigDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg.routes(cfg.routes_file.read_text().replace("ack: delivered", "ack: procesed"))
    cfg.channel("siu-to-clinic-ehr", "steps:\n  - mapp: {}\n")
    monkeypatch.chdir(cfg.root)
    assert _check(cfg, Path("routes.yaml")) == (
        1,
        "channels/siu-to-clinic-ehr.yaml:2:5: unknown step 'mapp' (expected one of: set, map, "
        "wait)\n"
        "routes.yaml:5:10: expected one of commit, processed, delivered, got 'procesed'\n",
    )


def test_problems_outside_the_current_directory_keep_their_full_path(
    cfg: ConfigDir, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cfg.channel("siu-to-clinic-ehr", "steps:\n  - mapp: {}\n")
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    code, printed = _check(cfg)
    assert code == 1
    assert printed == (
        f"{cfg.root / 'channels' / 'siu-to-clinic-ehr.yaml'}:2:5: unknown step 'mapp' "
        "(expected one of: set, map, wait)\n"
    )


def test_run_check_with_the_engine_registries(cfg: ConfigDir) -> None:
    out = io.StringIO()
    assert run_check(cfg.routes_file, out) == 0
    assert out.getvalue() == "ok: 1 listener, 1 channel, 2 tables, 1 channel test\n"
