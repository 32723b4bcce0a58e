"""The shipped example under the production profile, every control on, as `engine run` in its
own process: at-rest keys, the audit trail, credentials and roles on the FHIR listener and on
the CLI. Samples go in over MLLP and FHIR as an EHR feed would send them (the `system` role);
a provider (`viewer`) reads them back; an auditor verifies and searches the trail; the raw
store holds none of the sample patients' values; and the engine's log says nothing is off."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp

from engine.security.identities import Identities
from engine.security.identities_store import IdentityStore
from tests.integration.cli_fakes import fakes_running
from tests.integration.cli_support import Result, Site, engine, engine_running, example_copy, read
from tests.integration.test_atrest import FHIR_SAMPLES, KEY_FILE, raw_store_text
from tests.phi_scan import PhiMatcher, synthetic_phi

FHIR = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


async def production_site(tmp_path: Path) -> tuple[Site, dict[str, str]]:
    """The example switched to production (at-rest key, no `auth: none`), an identity file
    with a bootstrap admin, and an API key per role that may hold one."""
    site = example_copy(tmp_path)
    made = await engine("keys", "new", "--id", "k1", cwd=site.root, env=site.env)
    assert made.code == 0, made
    key_file = site.root / KEY_FILE
    key_file.touch(mode=0o600)
    key_file.write_text(made.out)
    text = re.sub(r"\nsecurity:\n(  .*\n)*",
                  f"\nsecurity:\n  encryption: {{key_file: {KEY_FILE}, current: k1}}\n",
                  site.routes.read_text())  # fmt: skip
    assert "profile:" not in text  # production is what a missing profile means
    text, removed = re.subn(r", auth: none\}", "}", text)
    assert removed == 2  # the booking API's and the admin API's
    site.routes.write_text(text)
    identities = tmp_path / "identities.db"
    site.env["ENGINE_IDENTITIES_DB"] = str(identities)
    with IdentityStore(identities) as store:
        ids = Identities(store)
        assert ids.add_user("root1", "admin", "correct horse battery staple") is not None
        keys = {role: ids.create_key("root1", role, 3600).secret
                for role in ("system", "viewer", "operator", "auditor")}  # fmt: skip
    return site, keys


async def audit(site: Site, verb: str, *args: str) -> Result:
    return await engine("audit", verb, "--config", str(site.routes), *args, cwd=site.root,
                        env=site.env)


def bearer(key: str) -> dict[str, str]:
    return {**FHIR, "Authorization": f"Bearer {key}"}


async def call(
    http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str],
    body: bytes | None = None,
) -> tuple[int, Any]:
    async with http.request(method, url, data=body, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def test_the_example_under_the_production_profile(tmp_path: Path) -> None:
    site, keys = await production_site(tmp_path)
    phi = PhiMatcher(synthetic_phi(site.root / "samples"))
    booked, moved, cancelled = [read(site, p) for p in FHIR_SAMPLES]
    hl7 = sorted(str(p.relative_to(site.root)) for p in (site.root / "samples").glob("*.hl7"))
    async with fakes_running(site), engine_running(site) as log:
        sent = await site.send(*hl7)  # MLLP: the listener's network rules, no credential
        assert sent.code == 0, sent
        async with aiohttp.ClientSession() as http:
            url = f"{site.fhir_api}/Appointment"
            status, outcome = await call(http, "POST", url, FHIR, booked)
            assert status == 401 and outcome["resourceType"] == "OperationOutcome"
            assert (await call(http, "POST", url, bearer(keys["viewer"]), booked))[0] == 403
            status, created = await call(http, "POST", url, bearer(keys["system"]), booked)
            assert status == 201, created
            one = f"{url}/{created['id']}"
            for body in (moved, cancelled):
                status, answer = await call(http, "PUT", one, bearer(keys["system"]), body)
                assert status == 200, answer
            assert (await call(http, "GET", one, bearer(keys["system"])))[0] == 403
            status, current = await call(http, "GET", one, bearer(keys["viewer"]))
            assert status == 200 and current["status"] == "cancelled"

        # The CLI: no credential, no PHI; a viewer reads; a viewer may not retry.
        refused = await site.cli("messages")
        assert refused.code == 2 and "needs a credential" in refused.err, refused
        site.env["ENGINE_API_KEY"] = keys["viewer"]
        await site.wait_delivered(len(hl7) + len(FHIR_SAMPLES), "every sample delivered")
        rows = await site.messages("--limit", "1000")
        detail = await site.show(rows[-1]["id"])
        assert detail["raw"].startswith("MSH|")
        retry = await site.cli("retry", str(rows[-1]["id"]))
        assert retry.code == 2 and "the viewer role may not do this" in retry.err, retry
        running_text = raw_store_text(site)
    # Nothing is off: no start-up warning (the samples' conflict alerts are engine.alerts').
    startup = [line for line in log.read_text().splitlines() if " WARNING engine: " in line]
    assert startup == [], startup

    leaked = {v.kind for v in phi.find(running_text + raw_store_text(site))}
    assert not leaked, f"sample PHI in the database file: {sorted(leaked)}"

    site.env["ENGINE_API_KEY"] = keys["viewer"]
    refused = await audit(site, "verify")
    assert refused.code == 2 and "the viewer role may not do this" in refused.err, refused
    site.env["ENGINE_API_KEY"] = keys["auditor"]
    verified = await audit(site, "verify")
    assert verified.code == 0 and verified.out.startswith("OK: "), verified
    found = await audit(site, "search", "--json", "--limit", "0")
    assert found.code == 0, found
    trail = found.json()
    by_what = {(r["what"], r["role"], r["outcome"]) for r in trail}
    assert ("GET Appointment", "viewer", 0) in by_what  # the FHIR read, from the engine
    assert ("POST fhir.create", "viewer", 4) in by_what  # the refused POST
    assert ("engine messages", "viewer", 0) in by_what  # the CLI search
    assert ("engine show", "viewer", 0) in by_what
    [read_event] = [r for r in trail if r["what"] == "GET Appointment"]
    assert read_event["appointment_ids"] == [created["id"]] and read_event["patient_ids"]
