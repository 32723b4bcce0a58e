"""Fixtures of the security tests: the identity tests' clock and store path (a test module
with a clock of its own keeps it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.security.identities_store import default_path
from tests.unit.security.identity_support import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return default_path(tmp_path / "engine.db")
