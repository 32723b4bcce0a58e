"""Fixtures for the configuration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.config.support import ConfigDir


@pytest.fixture
def cfg(tmp_path: Path) -> ConfigDir:
    """A valid baseline configuration that each test changes where it needs to."""
    return ConfigDir(tmp_path).baseline()
