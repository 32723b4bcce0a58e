"""Encryption at rest end to end (issue 4, item 5): `engine run` with keys takes the samples,
and a raw read of the database file and its WAL (what `strings` would see) finds none of the
sample patients' names, birth dates or identifiers, while `engine messages --patient` and
`engine show` still work; `engine keys rotate` re-encrypts under a new key while the engine
keeps taking messages, after which the old key is retired; the production profile refuses to
start without keys and the development profile says it runs without them."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import aiohttp

from engine.security.atrest import KeyRing, RowSealer, decode_key
from engine.store.sqlite import SqliteStore
from engine.testing.mllp_client import MllpClient
from tests.integration.cli_fakes import fakes_running
from tests.integration.cli_support import (
    Result,
    Site,
    engine,
    engine_running,
    example_copy,
    read,
    sample_paths,
)
from tests.phi_scan import PhiMatcher, synthetic_phi

FHIR_SAMPLES = ("samples/fhir_appointment_booked.json",
                "samples/fhir_appointment_rescheduled.json",
                "samples/fhir_appointment_cancelled.json")
FHIR_HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
KEY_FILE = "atrest.keys"


async def keys(site: Site, command: str, *args: str, timeout: float = 60.0) -> Result:
    """`engine keys <command>` on the site's configuration."""
    more = () if command == "new" else ("--config", str(site.routes))
    return await engine("keys", command, *more, *args, cwd=site.root, timeout=timeout,
                        env=site.env)


async def new_key(site: Site, key_id: str) -> str:
    result = await keys(site, "new", "--id", key_id)
    assert result.code == 0, result
    line = result.out.strip()
    assert re.fullmatch(rf"{key_id} [A-Za-z0-9+/]{{43}}=", line), "not a key line"
    return line


def use_keys(site: Site, lines: list[str], current: str) -> None:
    """The key file holds `lines`; routes.yaml seals with `current`. The profile stays
    development (sealing is the same under both; the production end to end test, with every
    control on, is test_production.py)."""
    keys = site.root / KEY_FILE
    keys.touch(mode=0o600)
    keys.write_text("\n".join(lines) + "\n")
    text = site.routes.read_text()
    text = re.sub(r"\nsecurity:\n(  .*\n)*",
                  f"\nsecurity:\n  profile: development\n  encryption:\n"
                  f"    key_file: {KEY_FILE}\n    current: {current}\n", text)
    assert f"current: {current}" in text
    site.routes.write_text(text)


def raw_store_text(site: Site) -> str:
    """The database file and its WAL as bytes, read as `strings` would (one byte a char)."""
    data = site.root / "data"
    files = [data / "engine.db", data / "engine.db-wal"]
    return "".join(f.read_bytes().decode("latin-1") for f in files if f.exists())


async def send_fhir(site: Site) -> None:
    booked, moved, cancelled = [read(site, p) for p in FHIR_SAMPLES]
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{site.fhir_api}/Appointment", data=booked,
                             headers=FHIR_HEADERS) as response:
            assert response.status == 201, await response.text()
            url = response.headers["Location"].rsplit("/_history/", 1)[0]
        for body in (moved, cancelled):
            async with http.put(url, data=body, headers=FHIR_HEADERS) as response:
                assert response.status == 200, await response.text()


async def test_a_raw_read_of_the_store_finds_no_sample_phi(tmp_path: Path) -> None:
    site = example_copy(tmp_path)
    use_keys(site, [await new_key(site, "k2026a")], "k2026a")
    phi = PhiMatcher(synthetic_phi(site.root / "samples"))
    hl7 = sample_paths(site)
    async with fakes_running(site), engine_running(site):
        sent = await site.send(*hl7)
        assert sent.code == 0, sent
        await send_fhir(site)
        await site.wait_delivered(len(hl7) + len(FHIR_SAMPLES), "every sample delivered")
        running_text = raw_store_text(site)  # the WAL holds the recent writes now
        rows = await site.messages("--limit", "1000")
        patient = rows[-1]["keys"]["patient_ids"][0]
        by_patient = await site.messages("--patient", patient)
        assert by_patient and all(patient in r["keys"]["patient_ids"] for r in by_patient)
        assert len(by_patient) < len(rows)
        detail = await site.show(rows[-1]["id"])
    leaked = {v.kind for v in phi.find(running_text + raw_store_text(site))}
    assert not leaked, f"sample PHI in the database file: {sorted(leaked)}"
    # The check can fail: what `engine show` decrypts holds the very values looked for.
    assert phi.find(json.dumps(detail)), "engine show should show the decrypted message"
    assert detail["raw"].startswith("MSH|")
    status = await keys(site, "status", "--json")
    assert status.code == 0, status
    (current,) = [r for r in status.json() if r["key"] == "k2026a"]
    assert current["state"] == "current" and current["values"] > 0 and current["index_entries"]
    assert [r for r in status.json() if r["key"] == "(clear)"] == []


START = 40  # messages stored under the first key


def control_id_message(template: bytes, n: int) -> bytes:
    return re.sub(rb"\|MSG\d+\|", f"|ROT{n:05d}|".encode(), template, count=1)


async def test_rotation_while_the_engine_takes_messages_retires_the_old_key(
    tmp_path: Path,
) -> None:
    site = example_copy(tmp_path)
    first = await new_key(site, "k2026a")
    use_keys(site, [first], "k2026a")
    template = read(site, "samples/siu_s12_new_patient.hl7")
    async with fakes_running(site):
        async with engine_running(site):
            client = await MllpClient.connect("127.0.0.1", site.listen)
            for n in range(START):
                assert b"MSA|AA" in await client.send(control_id_message(template, n))
            await client.close()
        second = await new_key(site, "k2026b")
        use_keys(site, [first, second], "k2026b")
        async with engine_running(site):
            before = await keys(site, "status", "--json")
            assert {r["key"]: r["state"] for r in before.json()} == {
                "k2026a": "in use: run engine keys rotate", "k2026b": "current"}
            acked: list[int] = []
            rotating = asyncio.Event()
            stop = asyncio.Event()

            async def keep_sending() -> None:
                client = await MllpClient.connect("127.0.0.1", site.listen)
                n = 1000
                while not stop.is_set():
                    assert b"MSA|AA" in await client.send(control_id_message(template, n))
                    if rotating.is_set():
                        acked.append(n)
                    n += 1
                await client.close()

            sender = asyncio.create_task(keep_sending())
            rotating.set()
            rotated = await keys(site, "rotate", "--batch", "10", timeout=120)
            rotating.clear()
            stop.set()
            await sender
            assert rotated.code == 0, rotated
            assert "done:" in rotated.out and "re-encrypted with k2026b" in rotated.out
            # The engine really wrote while the rotation ran (its batches interleaved).
            assert acked, "no message was acknowledged during the rotation"
            after = await keys(site, "status", "--json")
            states = {r["key"]: r for r in after.json()}
            assert states["k2026a"]["values"] == states["k2026a"]["index_entries"] == 0
            assert states["k2026a"]["state"] == "unused: can be retired"
        use_keys(site, [second], "k2026b")  # k2026a retired
        async with engine_running(site):
            rows = await site.messages("--limit", "100000")
            ids = {r["keys"]["control_id"] for r in rows}
            assert {f"ROT{n:05d}" for n in range(START)} | {f"ROT{n:05d}" for n in acked} <= ids
            for row in (rows[0], rows[-1]):
                assert (await site.show(row["id"]))["raw"].startswith("MSH|")
            patient = rows[0]["keys"]["patient_ids"][0]
            assert len(await site.messages("--patient", patient, "--limit", "100000")) == len(
                rows)
            final = await keys(site, "status", "--json")
            assert [r["key"] for r in final.json()] == ["k2026b"]
    # Every stored value of every message opens with the new key alone.
    (key_line,) = (site.root / KEY_FILE).read_text().split()[1:]
    store = SqliteStore(site.root / "data" / "engine.db",
                        sealer=RowSealer(KeyRing({"k2026b": decode_key(key_line)}, "k2026b")))
    await store.open()
    try:
        for row in rows:
            detail = await store.get(row["id"])
            # get() opened the ACK, the channel outputs, the payloads, the responses and the
            # appointment version too: any of them still under k2026a would have raised.
            assert detail is not None and detail.raw.startswith(b"MSH|")
            assert any(d.payload.startswith(b"MSH|") for d in detail.deliveries)
    finally:
        await store.close()


async def test_production_refuses_to_start_without_keys_and_development_warns(
    tmp_path: Path,
) -> None:
    site = example_copy(tmp_path)
    text = site.routes.read_text()
    production = text.replace("profile: development", "profile: production")
    site.routes.write_text(production.replace(", auth: none}", "}"))
    refused = await site.cli("run", timeout=30)
    assert refused.code == 2, refused
    assert "cannot start (production profile): " in refused.err
    assert "the production profile needs at-rest encryption keys" in refused.err
    assert "security: encryption:" in refused.err
    assert not (site.root / "data" / "engine.db").exists()
    site.routes.write_text(text)
    async with engine_running(site) as log:
        pass
    warnings = [line for line in log.read_text().splitlines() if "WARNING" in line]
    assert [w for w in warnings if "no at-rest encryption keys" in w], warnings


async def test_a_sealed_store_without_its_key_fails_clearly(tmp_path: Path) -> None:
    site = example_copy(tmp_path)
    use_keys(site, [await new_key(site, "k2026a")], "k2026a")
    async with fakes_running(site), engine_running(site):
        assert (await site.send(sample_paths(site)[0])).code == 0
    use_keys(site, [await new_key(site, "k2026z")], "k2026z")
    for command in (("messages",), ("show", "1")):
        result = await site.cli(*command)
        assert result.code == 2, result
        assert "encrypted with key k2026a, which is not configured" in result.err
    bad = site.root / KEY_FILE
    bad.chmod(0o644)
    checked = await site.cli("check")
    assert checked.code != 0 and f"{bad}:1:1" in checked.out + checked.err
    assert "chmod 600" in checked.out + checked.err
