"""The web console in real headless Chromium against a running engine: an admin logs in with
a password and TOTP, finds a failed delivery on the dashboard, reads why it failed in the
failed-sync queue, retries it once the EHR is back and watches it become sent; searches a
message by patient id and opens it (the HL7 tree and the channel's diff show); replays it
after a preview; a viewer sees no replay button and the API refuses it the replay anyway.
The page runs under a Content-Security-Policy of default-src 'self' and logs no error."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, expect

from engine.security import totp
from engine.testing.fake_ehr import FakeEhr
from tests.browser.conftest import screenshot_path
from tests.integration.admin_support import PASSWORD, Admin, wait_failed

EXPECTED_REFUSAL = re.compile(r"^Failed to load resource: .* status of 40[13] ")
WAIT = 15_000  # ms: Playwright's expect polls until then (deliveries retry in the engine)


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    opened = await context.new_page()
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        # The API's refusals (401 before logging in, the viewer's 403) are answers the test
        # expects; any other error (a CSP refusal, a script error, a missing file) is not.
        if message.type == "error" and not EXPECTED_REFUSAL.search(message.text):
            errors.append(message.text)

    opened.on("console", on_console)
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    await context.close()
    assert errors == [], errors  # a CSP refusal or a script error shows here


def add_user(admin: Admin, name: str, role: str) -> str | None:
    access = admin.engine.security.access
    assert access is not None
    return access.identities.add_user(name, role, PASSWORD)


async def log_in(admin: Admin, page: Page, name: str, role: str) -> None:
    secret = add_user(admin, name, role)
    access = admin.engine.security.access
    assert access is not None
    response = await page.goto(admin.origin + "/console/")
    assert response is not None and response.ok
    assert "default-src 'self'" in response.headers["content-security-policy"]
    await page.fill("input[name=user]", name)
    await page.fill("input[name=password]", PASSWORD)
    if secret is not None:
        await page.fill("input[name=totp]", totp.code_at(secret, access.now()))
    await page.click("#login button[type=submit]")
    await expect(page.locator("#who")).to_have_text(f"{name} ({role})")


async def test_an_admin_retries_a_failed_delivery_and_watches_it_sent(
    admin: Admin, page: Page
) -> None:
    await admin.send("FAIL0001")  # nothing listens on the EHR's port yet

    await wait_failed(admin)  # it fails after its retry; the dashboard shows it then
    await log_in(admin, page, "root2", "admin")
    waiting = page.locator("[data-destination=clinic-ehr] .failed-count")
    await expect(waiting).to_have_text("1 failed deliveries waiting", timeout=WAIT)
    await expect(page.locator("[data-channel=siu] polyline[data-series=received]")).to_have_count(1)
    shot = screenshot_path("dashboard")
    await page.screenshot(path=str(shot), full_page=True)
    print(f"dashboard screenshot: {shot}")

    await waiting.locator("a").click()
    row = page.locator("#failed tbody tr")
    await expect(row).to_have_count(1)
    why = await row.locator(".why").inner_text()
    assert why.strip(), "the queue says why the delivery failed"
    await row.get_by_role("button", name="Last response").click()
    await expect(row.locator(".last-response")).to_contain_text(re.compile(r"attempt \d: failed"))

    async with FakeEhr(port=admin.ehr_port) as ehr:
        await row.get_by_role("button", name="Retry").click()
        await page.click("#confirm-ok")
        await expect(row.locator(".status")).to_have_text("sent", timeout=WAIT)
        assert len(ehr.received) == 1
    done = [(r.actor.who, r.event.what) for r in admin.trail.search()]
    assert ("user:root2", "POST api.deliveries.retry") in done


async def test_a_message_found_by_patient_shows_its_tree_and_diff_and_replays(
    admin: Admin, page: Page
) -> None:
    async with FakeEhr(port=admin.ehr_port) as ehr:
        await admin.send("FIND0001", patient="PATFIND1")
        await admin.send("FIND0002", patient="PATOTHER")
        await ehr.wait_until(lambda: len(ehr.received) == 2)
        await log_in(admin, page, "root2", "admin")
        await page.click("text=Messages")
        await page.fill("input[name=patient_id]", "PATFIND1")
        await page.click("#search button[type=submit]")
        rows = page.locator("#results tbody tr")
        await expect(rows).to_have_count(1)
        await expect(rows).to_contain_text("FIND0001")
        assert "PATFIND1" not in page.url  # no PHI in the location

        await rows.locator("a").click()
        await expect(page.locator("h1")).to_contain_text("Message #")
        pid3 = page.locator("[data-field=PID-3]").first
        await expect(pid3).to_contain_text("PID-3 Patient Identifier List: PATFIND1")
        diff = page.locator("[data-channel=siu] .diff")
        await expect(diff.locator(".add").first).to_contain_text("CLINIC_EHR")  # MSH-5 set
        await expect(diff.locator(".del").first).to_be_visible()
        shot = screenshot_path("message")
        await page.screenshot(path=str(shot), full_page=True)
        print(f"message page screenshot: {shot}")

        await page.click("#replay")
        result = page.locator("#replay-result")
        await expect(result).to_contain_text("Preview: 1 deliveries would be sent")
        await expect(result.locator("tbody tr")).to_contain_text("clinic-ehr")
        assert len(ehr.received) == 2  # a preview sends nothing
        await page.click("#replay-confirm")
        await page.click("#confirm-ok")
        await expect(result).to_contain_text("Replayed: 1 deliveries queued")
        await ehr.wait_until(lambda: len(ehr.received) == 3)


async def test_a_viewer_sees_no_replay_button_and_cannot_replay(
    admin: Admin, page: Page
) -> None:
    async with FakeEhr(port=admin.ehr_port) as ehr:
        await admin.send("VIEW0001")
        await ehr.wait_until(lambda: len(ehr.received) == 1)
    await log_in(admin, page, "viewer2", "viewer")
    nav = page.locator("#nav")
    await expect(nav).to_contain_text("Messages")
    await expect(nav).not_to_contain_text("Audit")
    await page.click("text=Messages")
    await page.locator("#results tbody tr a").first.click()
    await expect(page.locator("h1")).to_contain_text("Message #")
    await expect(page.locator("[data-segment=MSH]").first).to_be_visible()
    await expect(page.locator("#replay")).to_have_count(0)
    status = await page.evaluate("""async () => {
        const response = await fetch("/api/replay", {method: "POST", headers: {
            "Content-Type": "application/json",
            "X-CSRF-Token": sessionStorage.getItem("engine.csrf")},
            body: JSON.stringify({message_ids: [1], dry_run: true})});
        return response.status;
    }""")
    assert status == 403


async def test_an_operator_resolves_a_flagged_conflict(admin: Admin, page: Page) -> None:
    await admin.send("CNF00001", name="siu_s15_cancel.hl7")  # cancels an unknown appointment
    await log_in(admin, page, "desk1", "operator")
    await page.goto(admin.origin + "/console/#/failed")
    row = page.locator("#conflicts tbody tr")
    await expect(row).to_have_count(1)
    await row.get_by_role("button", name="Corrected at source").click()
    await page.click("#confirm-ok")
    await expect(row.locator(".status")).to_have_text("resolved (corrected)")
    await page.reload()
    await expect(page.locator("#conflicts")).to_contain_text("No open conflicts.")
    done = [(r.actor.who, r.event.what, r.event.query) for r in admin.trail.search(action="U")]
    assert done == [("user:desk1", "POST api.conflicts.resolve", {"outcome": "corrected"})]
