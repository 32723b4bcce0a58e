"""Suite-wide hooks: the PHI scan of the whole session's logs (tests/phi_scan.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.phi_scan import PhiScanPlugin

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(PhiScanPlugin(SAMPLES), "phi_scan")
