"""Fixtures of the security tests: the identity tests' clock and store path (a test module
with a clock of its own keeps it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.security.locations import security_file
from tests.unit.security.identity_support import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return security_file(f"sqlite:{tmp_path / 'engine.db'}", "identities", {})
