"""Suite-wide hooks: the PHI scan of the whole session's logs (tests/phi_scan.py), and the
fixtures more than one folder uses (the admin listener's `admin`, for the API and browser
tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.phi_scan import PhiScanPlugin

pytest_plugins = ["tests.integration.admin_support"]

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(PhiScanPlugin(SAMPLES), "phi_scan")
