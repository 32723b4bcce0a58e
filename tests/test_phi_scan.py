"""The PHI log scan (tests/phi_scan.py) reads the samples' PHI and fails a session that leaks it.

The leaking session runs in a child pytest with its own tmp directory: its PHI must not reach
this session's own logs, which the scan of this session reads."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.phi_scan import PhiMatcher, synthetic_phi

PROJECT = Path(__file__).resolve().parents[1]
SAMPLES = PROJECT / "samples"


def test_every_sample_yields_its_patient() -> None:
    values = synthetic_phi(SAMPLES)
    kinds = {v.kind.split(" ", 1)[1] for v in values}
    assert {"identifier", "family name", "given name", "birth date", "street", "city", "zip",
            "phone", "e-mail"} <= kinds, kinds
    # Values shared by several samples (one patient's messages) are kept once, so check that
    # every sample holds some family name (SIU) or patient identifier (FHIR) that was read.
    families = [v.text for v in values if v.kind.startswith("PID-5.1")]
    identifiers = [v.text for v in values if v.kind == "Patient identifier"]
    for path in SAMPLES.glob("*.hl7"):
        assert any(f in path.read_bytes().decode("latin-1") for f in families), path.name
    for path in SAMPLES.glob("*.json"):
        assert any(i in path.read_text() for i in identifiers), path.name


def test_matching_is_whole_word_for_short_values_and_numbers() -> None:
    values = synthetic_phi(SAMPLES)
    matcher = PhiMatcher(values)
    short = next(v for v in values if v.text.isalpha() and len(v.text) < 6)
    number = next(v for v in values if v.text.isdigit())
    assert matcher.find(f"x {short.text}|") == [short]
    assert matcher.find(f"x{short.text.lower()}y") == []
    assert matcher.find(f"t=9{number.text}9") == []
    assert matcher.find(f"MRN:{number.text}.") == [number]


def test_a_leaking_session_fails_and_names_where_without_the_value(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        "from pathlib import Path\n"
        "from tests.phi_scan import PhiScanPlugin\n"
        "def pytest_configure(config):\n"
        f"    config.pluginmanager.register(PhiScanPlugin(Path({str(SAMPLES)!r})), 'phi_scan')\n"
    )
    (tmp_path / "test_leak.py").write_text(
        "import logging\n"
        "from pathlib import Path\n"
        "from tests.integration.cli_support import Result\n"
        f"RAW = Path({str(SAMPLES / 'siu_s12_new_patient.hl7')!r}).read_bytes()\n"
        "def test_record():\n"
        "    logging.getLogger('engine.selftest').debug('received %r', RAW)\n"
        "def test_cli_stderr():\n"
        "    Result(1, '', 'error: ' + RAW.decode())\n"
        "def test_log_file(tmp_path):\n"
        "    (tmp_path / 'engine.log').write_bytes(\n"
        "        b'2025-01-01 00:00:00,000 WARNING engine.intake: got ' + RAW)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    with tempfile.TemporaryDirectory() as basetemp:
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "--rootdir", str(tmp_path), "--basetemp", str(Path(basetemp) / "t"),
             str(tmp_path)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "3 passed" in out, out
    assert "PHI found in logs" in out, out
    assert "log record: logger engine.selftest DEBUG template 'received %r'" in out, out
    assert "engine command stderr: unformatted line" in out, out
    assert "engine.log: logger engine.intake WARNING" in out, out
    family = next(
        v for v in synthetic_phi(SAMPLES)
        if v.kind.startswith("PID-5.1") and v.sample == "siu_s12_new_patient.hl7"
    )
    assert f"{family.kind} of {family.sample} {family.masked}" in out, out
    # The report names no value in full.
    assert PhiMatcher(synthetic_phi(SAMPLES)).find(out) == []
