"""The FHIR listener over real HTTP: each interaction's status, headers and OperationOutcome,
and what the store holds afterwards."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from engine.runtime.engine import Engine
from engine.store.base import MessageFilter
from tests.integration.conftest import free_port, running
from tests.integration.fhir_support import (
    FhirClient,
    appointment,
    archive_channel,
    expressions,
    issues,
    write_fhir_config,
)

IDENTIFIER = "urn:booking-portal:appointments|WEB2001"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[Engine, FhirClient, Path]]:
    port = free_port()
    archive = tmp_path / "archive"
    routes = write_fhir_config(tmp_path / "cfg", port, {"to-ehr": archive_channel(archive)})
    async with running(routes) as engine, aiohttp.ClientSession() as session:
        yield engine, FhirClient(session, f"http://127.0.0.1:{port}/fhir"), archive


async def messages(engine: Engine, status: str | None = None) -> int:
    return len(await engine.store.search(MessageFilter(status=status)))


async def test_create_answers_201_after_storing(api: tuple[Engine, FhirClient, Path]) -> None:
    engine, client, _ = api
    status, headers, body = await client.post("/Appointment", appointment())
    assert status == 201
    assert headers["Content-Type"].startswith("application/fhir+json")
    assert headers["ETag"] == 'W/"1"'
    rid = body["id"]
    assert headers["Location"].endswith(f"/fhir/Appointment/{rid}/_history/1")
    assert body["meta"]["versionId"] == "1" and body["status"] == "booked"
    row = await engine.store.appointment(IDENTIFIER)
    assert row is not None and row.id == rid and row.version == 1
    status, headers, read = await client.get(f"/Appointment/{rid}")
    assert status == 200 and read == body and headers["ETag"] == 'W/"1"'


async def test_conditional_create_finds_the_existing_one(
    api: tuple[Engine, FhirClient, Path],
) -> None:
    engine, client, _ = api
    _, _, created = await client.post("/Appointment", appointment())
    changed = appointment(comment="a different comment")
    status, _, body = await client.post(
        "/Appointment", changed, headers={"If-None-Exist": f"identifier={IDENTIFIER}"}
    )
    assert status == 200
    assert body["id"] == created["id"] and body["comment"] == created["comment"]
    assert await messages(engine) == 1  # nothing stored for the match
    bad = await client.post("/Appointment", changed, headers={"If-None-Exist": "name=x"})
    assert bad[0] == 400 and "If-None-Exist" in issues(bad[2])[0]["diagnostics"]


async def test_update_with_a_stale_etag_is_412(api: tuple[Engine, FhirClient, Path]) -> None:
    engine, client, _ = api
    _, _, created = await client.post("/Appointment", appointment())
    rid = created["id"]
    moved = appointment("rescheduled", id=rid)
    status, headers, body = await client.put(
        f"/Appointment/{rid}", moved, headers={"If-Match": 'W/"1"'}
    )
    assert status == 200 and headers["ETag"] == 'W/"2"' and body["start"] == moved["start"]
    status, _, outcome = await client.put(
        f"/Appointment/{rid}", appointment("cancelled", id=rid), headers={"If-Match": 'W/"1"'}
    )
    assert status == 412
    assert issues(outcome)[0]["code"] == "conflict"
    row = await engine.store.appointment(IDENTIFIER)
    assert row is not None and row.version == 2 and row.status == "booked"
    assert await messages(engine, "rejected") == 1  # the refused request is kept


async def test_update_of_an_unknown_id_is_404(api: tuple[Engine, FhirClient, Path]) -> None:
    _, client, _ = api
    status, _, outcome = await client.put("/Appointment/nope", appointment())
    assert status == 404 and issues(outcome)[0]["code"] == "not-found"


async def test_transaction_with_one_bad_entry_stores_nothing(
    api: tuple[Engine, FhirClient, Path],
) -> None:
    engine, client, archive = api
    good = appointment()
    bad = appointment(identifier=[{"system": "urn:x", "value": "OTHER1"}], status="bogus")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": good, "request": {"method": "POST", "url": "Appointment"}},
            {"resource": bad, "request": {"method": "POST", "url": "Appointment"}},
        ],
    }
    status, _, outcome = await client.post("", bundle)
    assert status == 422
    assert "Bundle.entry[1].resource.status" in expressions(outcome)
    assert await engine.store.appointment(IDENTIFIER) is None
    assert await engine.store.deliveries() == []
    assert await messages(engine, "processed") == 0
    assert not archive.exists() or not any(archive.iterdir())
    bundle["entry"][1]["resource"] = appointment(
        identifier=[{"system": "urn:x", "value": "OTHER1"}]
    )
    status, _, result = await client.post("", bundle)
    assert status == 200 and result["type"] == "transaction-response"
    assert [e["response"]["status"] for e in result["entry"]] == ["201 Created", "201 Created"]
    assert len(await engine.store.deliveries()) == 2


async def test_batch_answers_each_entry(api: tuple[Engine, FhirClient, Path]) -> None:
    engine, client, _ = api
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": appointment(), "request": {"method": "POST", "url": "Appointment"}},
            {"resource": appointment(end="2025-04-02T13:00:00Z"),
             "request": {"method": "POST", "url": "Appointment"}},
        ],
    }
    status, _, result = await client.post("", bundle)
    assert status == 200 and result["type"] == "batch-response"
    first, second = (e["response"] for e in result["entry"])
    assert first["status"] == "201 Created" and first["etag"] == 'W/"1"'
    assert second["status"].startswith("422")
    assert "Bundle.entry[1].resource.end" in expressions(second["outcome"])
    assert await engine.store.appointment(IDENTIFIER) is not None


@pytest.mark.parametrize(
    ("body", "status", "code", "where"),
    [
        (b'{"resourceType": "Appointment", ', 400, "structure", None),
        (json.dumps({"resourceType": "Patient"}).encode(), 400, "not-supported", None),
        (json.dumps(appointment(status="bogus")).encode(), 422, None, "Appointment.status"),
        (
            json.dumps(appointment(end="2025-04-02T13:00:00Z")).encode(),
            422,
            None,
            "Appointment.end",
        ),
        (json.dumps(appointment(participant=[])).encode(), 422, None, "Appointment.participant"),
        (json.dumps(appointment(identifier=[])).encode(), 422, None, "Appointment.identifier"),
    ],
    ids=["malformed-json", "wrong-resource-type", "unknown-status", "end-before-start",
         "no-participant", "no-identifier"],
)
async def test_bad_bodies_get_an_operation_outcome(
    api: tuple[Engine, FhirClient, Path], body: bytes, status: int, code: str | None,
    where: str | None,
) -> None:
    engine, client, _ = api
    got, headers, outcome = await client.post("/Appointment", raw=body)
    assert got == status
    assert headers["Content-Type"].startswith("application/fhir+json")
    found = issues(outcome)
    if code is not None:
        assert found[0]["code"] == code
    if where is not None:
        assert where in expressions(outcome)
    assert await messages(engine, "rejected") == 1
    assert await engine.store.deliveries() == []


async def test_oversized_body_is_413(api: tuple[Engine, FhirClient, Path]) -> None:
    engine, client, _ = api
    huge = appointment(comment="x" * 70_000)
    status, _, outcome = await client.post("/Appointment", huge)
    assert status == 413 and issues(outcome)[0]["code"] == "too-long"
    (row,) = await engine.store.search(MessageFilter(status="rejected"))
    assert row.size <= 64 * 1024  # only the head is kept


async def test_wrong_media_type_and_unknown_paths(api: tuple[Engine, FhirClient, Path]) -> None:
    _, client, _ = api
    status, _, outcome = await client.post(
        "/Appointment", raw=b"MSH|^~\\&|", content_type="application/hl7-v2"
    )
    assert status == 415 and issues(outcome)[0]["code"] == "not-supported"
    assert (await client.get("/Patient/1"))[0] == 404
    status, headers, _ = await client.request("DELETE", "/Appointment/x")
    assert status == 405 and headers["Allow"] == "GET, PUT"
    assert (await client.get("/Appointment/unknown"))[0] == 404


async def test_metadata_tells_what_is_supported(api: tuple[Engine, FhirClient, Path]) -> None:
    _, client, _ = api
    status, _, statement = await client.get("/metadata")
    assert status == 200 and statement["resourceType"] == "CapabilityStatement"
    (rest,) = statement["rest"]
    (resource,) = rest["resource"]
    assert resource["type"] == "Appointment"
    assert {i["code"] for i in resource["interaction"]} == {"read", "create", "update"}
    assert resource["conditionalCreate"] is True and resource["updateCreate"] is False
    assert {i["code"] for i in rest["interaction"]} == {"batch", "transaction"}
    assert statement["fhirVersion"] == "4.3.0"


async def test_what_metadata_leaves_out_is_refused(api: tuple[Engine, FhirClient, Path]) -> None:
    """The CapabilityStatement's silence is true: no delete, patch, history or search."""
    _, client, _ = api
    _, _, created = await client.post("/Appointment", appointment())
    rid = created["id"]
    assert (await client.request("DELETE", f"/Appointment/{rid}"))[0] == 405
    patch = await client.request("PATCH", f"/Appointment/{rid}", {"status": "noshow"})
    assert patch[0] == 405
    assert (await client.get(f"/Appointment/{rid}/_history/1"))[0] == 404
    assert (await client.get("/Appointment?identifier=x"))[0] == 405
    assert (await client.post("/Appointment/_search", {}))[0] == 405
    assert (await client.request("PUT", "/Appointment", appointment()))[0] == 405


def entry(resource: dict[str, object], method: str = "POST", url: str = "Appointment",
          **request: str) -> dict[str, object]:
    return {"resource": resource, "request": {"method": method, "url": url, **request}}


async def test_transaction_with_a_matching_conditional_create_commits_the_rest(
    api: tuple[Engine, FhirClient, Path],
) -> None:
    engine, client, _ = api
    _, _, created = await client.post("/Appointment", appointment())
    other = appointment(identifier=[{"system": "urn:x", "value": "OTHER2"}])
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        entry(appointment(comment="changed"), ifNoneExist=f"identifier={IDENTIFIER}"),
        entry(other),
    ]}
    status, _, result = await client.post("", bundle)
    assert status == 200 and result["type"] == "transaction-response"
    first, second = result["entry"]
    assert first["response"]["status"] == "200 OK"
    assert first["resource"]["id"] == created["id"]
    assert first["resource"]["comment"] == created["comment"]  # matched, not changed
    assert second["response"]["status"] == "201 Created"
    assert await engine.store.appointment("urn:x|OTHER2") is not None


@pytest.mark.parametrize("case", ["stale-if-match", "unknown-id"])
async def test_a_failing_entry_fails_the_whole_transaction(
    api: tuple[Engine, FhirClient, Path], case: str
) -> None:
    engine, client, _ = api
    _, _, created = await client.post("/Appointment", appointment())
    rid = created["id"] if case == "stale-if-match" else "no-such-id"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        entry(appointment(identifier=[{"system": "urn:x", "value": "OTHER3"}])),
        entry(appointment("rescheduled"), "PUT", f"Appointment/{rid}", ifMatch='W/"7"'),
    ]}
    status, _, outcome = await client.post("", bundle)
    assert status == (412 if case == "stale-if-match" else 404)
    assert expressions(outcome) == ["Bundle.entry[1].resource"]
    assert await engine.store.appointment("urn:x|OTHER3") is None
    row = await engine.store.appointment(IDENTIFIER)
    assert row is not None and row.version == 1
    assert len(await engine.store.deliveries()) == 1  # the first POST's only


async def test_conditional_create_by_another_identifier_of_the_resource(
    api: tuple[Engine, FhirClient, Path],
) -> None:
    engine, client, _ = api
    filler = {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                   "code": "FILL"}]}, "system": "urn:clinic", "value": "F9"}
    booked = appointment()
    booked["identifier"].append(filler)
    _, _, created = await client.post("/Appointment", booked)
    status, _, body = await client.post(
        "/Appointment", booked, headers={"If-None-Exist": "identifier=urn:clinic|F9"}
    )
    assert status == 200 and body["id"] == created["id"]
    assert len(await engine.store.search(MessageFilter())) == 1


async def test_a_client_clock_in_meta_does_not_make_an_update_stale(
    api: tuple[Engine, FhirClient, Path],
) -> None:
    _, client, _ = api
    _, headers, created = await client.post("/Appointment", appointment())
    moved = appointment("rescheduled", meta={"lastUpdated": "2001-01-01T00:00:00Z"})
    status, headers, body = await client.put(f"/Appointment/{created['id']}", moved)
    assert status == 200 and headers["ETag"] == 'W/"2"' and body["start"] == moved["start"]


async def test_a_chunked_body_over_the_limit_is_413(
    api: tuple[Engine, FhirClient, Path],
) -> None:
    engine, client, _ = api

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 8192  # JSON whitespace: 160 KiB against a 64 KiB limit

    async with client.session.post(
        f"{client.base}/Appointment", data=chunks(),
        headers={"Content-Type": "application/fhir+json"},
    ) as response:
        assert response.status == 413
        assert (await response.json(content_type=None))["issue"][0]["code"] == "too-long"
    (row,) = await engine.store.search(MessageFilter(status="rejected"))
    assert row.size <= 64 * 1024


async def test_a_channel_error_is_a_422_that_changes_and_sends_nothing(tmp_path: Path) -> None:
    port = free_port()
    failing = archive_channel(tmp_path / "archive")
    failing["steps"].append(
        {"map": {"field": "AIP-3.1", "table": "providers", "to": "ehr_id", "missing": "error"}}
    )
    routes = write_fhir_config(tmp_path / "cfg", port, {"to-ehr": failing})
    unknown_provider = appointment(participant=[
        {"actor": {"type": "Practitioner", "identifier": {"system": "urn:x", "value": "P9999"}},
         "status": "accepted"},
    ])
    async with running(routes) as engine, aiohttp.ClientSession() as session:
        client = FhirClient(session, f"http://127.0.0.1:{port}/fhir")
        status, _, outcome = await client.post("/Appointment", unknown_provider)
        assert status == 422
        (issue,) = issues(outcome)
        assert issue["code"] == "processing" and "channel to-ehr" in issue["diagnostics"]
        assert "P9999" not in json.dumps(outcome)
        assert await engine.store.appointment(IDENTIFIER) is None
        assert await engine.store.deliveries() == []
        (row,) = await engine.store.search(MessageFilter())
        detail = await engine.store.get(row.id)
        assert detail is not None and row.status == "error" and row.ack_code == "422"
        assert [r.status for r in detail.results] == ["error"]
        assert detail.appointment is not None and detail.appointment.disposition == "rejected"
