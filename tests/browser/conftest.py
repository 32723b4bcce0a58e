"""Real headless Chromium (Debian's `chromium`, /usr/bin/chromium) driven by Playwright,
against a real engine in the test's event loop (the admin API fixture of
tests/integration/admin_support.py: an MLLP feed, an admin listener, identities, audit).

Rules kept: Playwright's own browser download is never used (`make test` installs the
Debian package, see the Makefile); the browser talks to nothing but 127.0.0.1 (no network
features on); screenshots go to test-artifacts/browser/ (git-ignored) and their paths are
printed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield launched
        finally:
            await launched.close()


def screenshot_path(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / f"{name}.png"
