"""The fake FHIR server seen from a real HTTP client on 127.0.0.1: conditional update, versions
and ETags, failure injection, bearer auth, Bundles, recording and the CLI entry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest

from engine.testing.fake_fhir import FHIR_JSON, FakeFhir, Recorded, format_request, run

SYSTEM = "urn:example:placer"


def appointment(value: str, status: str = "booked", **extra: Any) -> dict[str, Any]:
    """A synthetic Appointment; identifiers and references are invented."""
    return {
        "resourceType": "Appointment",
        "status": status,
        "identifier": [{"system": SYSTEM, "value": value}],
        "participant": [{"actor": {"reference": "Patient/pat-0001"}, "status": "accepted"}],
        **extra,
    }


@pytest.fixture
async def fhir() -> AsyncIterator[FakeFhir]:
    async with FakeFhir() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Content-Type": FHIR_JSON}) as session:
        yield session


async def call(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None, **headers: str
) -> tuple[int, Any, Mapping[str, str]]:
    async with http.request(method, url, json=body, headers=headers) as response:
        payload = await response.json(content_type=None) if await response.read() else None
        return response.status, payload, response.headers


async def test_conditional_update_creates_then_updates_then_refuses_ambiguity(
    fhir: FakeFhir, http: aiohttp.ClientSession
) -> None:
    url = f"{fhir.url}/Appointment?identifier={SYSTEM}|A-100"
    status, body, headers = await call(http, "PUT", url, appointment("A-100"))
    assert status == 201
    rid = body["id"]
    assert body["meta"]["versionId"] == "1"
    assert headers["ETag"] == 'W/"1"'
    assert headers["Location"] == f"{fhir.url}/Appointment/{rid}/_history/1"
    assert headers["Content-Type"].startswith(FHIR_JSON)

    status, body, headers = await call(http, "PUT", url, appointment("A-100", "cancelled"))
    assert (status, body["id"], body["meta"]["versionId"]) == (200, rid, "2")
    assert headers["ETag"] == 'W/"2"'
    assert fhir.resources[rid]["status"] == "cancelled"

    # A plain create does not look for matches, so now two resources carry A-100.
    status, _, _ = await call(http, "POST", f"{fhir.url}/Appointment", appointment("A-100"))
    assert status == 201
    status, body, _ = await call(http, "PUT", url, appointment("A-100", "noshow"))
    assert status == 412
    assert body["resourceType"] == "OperationOutcome"
    assert [r["status"] for r in fhir.find(f"{SYSTEM}|A-100")] == ["cancelled", "booked"]


async def test_update_by_id_checks_if_match_and_read_returns_the_etag(
    fhir: FakeFhir, http: aiohttp.ClientSession
) -> None:
    url = f"{fhir.url}/Appointment/visit-7"
    status, _, _ = await call(http, "PUT", url, appointment("A-7"))
    assert status == 201
    status, _, _ = await call(
        http, "PUT", url, appointment("A-7", "arrived"), **{"If-Match": 'W/"1"'}
    )
    assert status == 200
    status, body, _ = await call(
        http, "PUT", url, appointment("A-7", "noshow"), **{"If-Match": 'W/"1"'}
    )
    assert status == 412
    assert body["issue"][0]["code"] == "conflict"

    status, body, headers = await call(http, "GET", url)
    assert (status, body["status"], headers["ETag"]) == (200, "arrived", 'W/"2"')
    assert "Last-Modified" in headers
    status, body, _ = await call(http, "GET", f"{fhir.url}/Appointment/nope")
    assert (status, body["issue"][0]["code"]) == (404, "not-found")
    status, _, _ = await call(http, "PUT", url, appointment("A-7", id="other"))
    assert status == 400


async def test_conditional_create_and_search(fhir: FakeFhir, http: aiohttp.ClientSession) -> None:
    exist = {"If-None-Exist": f"identifier={SYSTEM}|B-1"}
    status, first, _ = await call(
        http, "POST", f"{fhir.url}/Appointment", appointment("B-1"), **exist
    )
    assert status == 201
    status, again, _ = await call(
        http, "POST", f"{fhir.url}/Appointment", appointment("B-1"), **exist
    )
    assert (status, again["id"], again["meta"]["versionId"]) == (200, first["id"], "1")
    await call(http, "POST", f"{fhir.url}/Appointment", appointment("B-2"))

    status, bundle, _ = await call(http, "GET", f"{fhir.url}/Appointment?identifier={SYSTEM}|B-2")
    assert (status, bundle["type"], bundle["total"]) == (200, "searchset", 1)
    assert bundle["entry"][0]["resource"]["identifier"][0]["value"] == "B-2"
    _, everything, _ = await call(http, "GET", f"{fhir.url}/Appointment")
    assert everything["total"] == 2
    _, by_value, _ = await call(http, "GET", f"{fhir.url}/Appointment?identifier=B-1")
    assert by_value["total"] == 1
    _, other_system, _ = await call(http, "GET", f"{fhir.url}/Appointment?identifier=urn:x|B-1")
    assert other_system["total"] == 0


async def test_prefer_return_minimal_sends_no_body(
    fhir: FakeFhir, http: aiohttp.ClientSession
) -> None:
    status, body, headers = await call(
        http, "POST", f"{fhir.url}/Appointment", appointment("C-1"), Prefer="return=minimal"
    )
    assert (status, body, headers["ETag"]) == (201, None, 'W/"1"')


async def test_injected_failures_are_answered_in_order_and_store_nothing(
    fhir: FakeFhir, http: aiohttp.ClientSession
) -> None:
    fhir.fail_next(429, retry_after=7)
    fhir.fail_next(503, times=2)
    custom = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "value"}]}
    fhir.fail_next(422, outcome=custom)
    fhir.fail_next(401)
    url = f"{fhir.url}/Appointment?identifier={SYSTEM}|D-1"

    seen: list[tuple[int, str | None]] = []
    bodies: list[Any] = []
    for _ in range(6):
        status, body, headers = await call(http, "PUT", url, appointment("D-1"))
        seen.append((status, headers.get("Retry-After")))
        bodies.append(body)
        if status == 401:
            assert headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert seen == [(429, "7"), (503, None), (503, None), (422, None), (401, None), (201, None)]
    assert bodies[3] == custom
    assert bodies[0]["resourceType"] == "OperationOutcome"
    assert [r.status for r in fhir.requests] == [s for s, _ in seen]
    assert len(fhir.resources) == 1
    with pytest.raises(ValueError):
        fhir.fail_next(200)


async def test_required_token_gates_everything_but_metadata(http: aiohttp.ClientSession) -> None:
    async with FakeFhir(required_token="tok-good") as fhir:
        create = f"{fhir.url}/Appointment"
        status, body, headers = await call(http, "POST", create, appointment("E-1"))
        assert (status, body["issue"][0]["code"]) == (401, "login")
        assert "error=" not in headers["WWW-Authenticate"]
        status, _, headers = await call(
            http, "POST", create, appointment("E-1"), Authorization="Bearer tok-stale"
        )
        assert (status, headers["WWW-Authenticate"]) == (401, 'Bearer error="invalid_token"')
        status, _, _ = await call(
            http, "POST", create, appointment("E-1"), Authorization="Bearer tok-good"
        )
        assert status == 201
        status, caps, _ = await call(http, "GET", f"{fhir.url}/metadata")
        assert (status, caps["resourceType"]) == (200, "CapabilityStatement")
        assert fhir.tokens_seen == ["tok-stale", "tok-good"]
        assert len(fhir.resources) == 1


def bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def put_entry(value: str, resource: Any = None) -> dict[str, Any]:
    return {
        "resource": appointment(value) if resource is None else resource,
        "request": {"method": "PUT", "url": f"Appointment?identifier={SYSTEM}|{value}"},
    }


async def test_transaction_is_all_or_nothing(fhir: FakeFhir, http: aiohttp.ClientSession) -> None:
    bad = put_entry("F-3", {"resourceType": "Patient"})
    status, body, _ = await call(
        http, "POST", fhir.url, bundle("transaction", put_entry("F-1"), put_entry("F-2"), bad)
    )
    assert status == 400
    assert body["issue"][0]["diagnostics"].startswith("entry 2:")
    assert fhir.resources == {}

    status, body, _ = await call(
        http, "POST", fhir.url, bundle("transaction", put_entry("F-1"), put_entry("F-2"))
    )
    assert (status, body["type"]) == (200, "transaction-response")
    responses = [e["response"] for e in body["entry"]]
    assert [r["status"] for r in responses] == ["201 Created", "201 Created"]
    # The failed transaction did not use up ids.
    assert [r["location"] for r in responses] == [
        f"{fhir.url}/Appointment/appt-1/_history/1",
        f"{fhir.url}/Appointment/appt-2/_history/1",
    ]


async def test_batch_answers_each_entry(fhir: FakeFhir, http: aiohttp.ClientSession) -> None:
    await call(http, "PUT", f"{fhir.url}/Appointment?identifier={SYSTEM}|G-1", appointment("G-1"))
    missing_request = {"resource": appointment("G-3")}
    status, body, _ = await call(
        http, "POST", fhir.url, bundle("batch", put_entry("G-1"), put_entry("G-2"), missing_request)
    )
    assert (status, body["type"]) == (200, "batch-response")
    assert [e["response"]["status"] for e in body["entry"]] == [
        "200 OK",
        "201 Created",
        "400 Bad Request",
    ]
    # G-1 is sent unchanged: a no-op update keeps its version.
    assert body["entry"][0]["response"]["etag"] == 'W/"1"'
    assert body["entry"][2]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert len(fhir.resources) == 2
    status, _, _ = await call(http, "POST", fhir.url, {"resourceType": "Bundle", "type": "history"})
    assert status == 400


async def test_bad_bodies_get_an_operation_outcome(
    fhir: FakeFhir, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{fhir.url}/Appointment", data=b"{not json") as response:
        assert response.status == 400
        assert response.content_type == FHIR_JSON
        assert (await response.json(content_type=None))["issue"][0]["code"] == "structure"
    status, _, _ = await call(http, "POST", f"{fhir.url}/Appointment", {"resourceType": "Patient"})
    assert status == 400
    async with http.post(
        f"{fhir.url}/Appointment", data=b"<xml/>", headers={"Content-Type": "application/xml"}
    ) as response:
        assert response.status == 415
    assert [r.status for r in fhir.requests] == [400, 400, 415]
    assert fhir.requests[1].json == {"resourceType": "Patient"}


async def test_requests_are_recorded_and_waited_for(
    fhir: FakeFhir, http: aiohttp.ClientSession
) -> None:
    url = f"{fhir.url}/Appointment?identifier={SYSTEM}|H-1"
    sending = asyncio.create_task(call(http, "PUT", url, appointment("H-1"), **{"X-Trace": "t1"}))
    await fhir.wait_until(lambda: len(fhir.requests) == 1, timeout=5)
    await sending
    recorded = fhir.requests[0]
    assert (recorded.method, recorded.path, recorded.status) == ("PUT", "/fhir/Appointment", 201)
    assert recorded.query == {"identifier": f"{SYSTEM}|H-1"}
    assert recorded.headers["x-trace"] == "t1"
    assert recorded.json["identifier"][0]["value"] == "H-1"
    with pytest.raises(TimeoutError):
        await fhir.wait_until(lambda: len(fhir.requests) == 2, timeout=0.05)


def test_format_request_leaves_identifier_values_out() -> None:
    line = format_request(
        Recorded("PUT", "/fhir/Appointment", {"identifier": "urn:x|MRN-SECRET"}, {}, None, 201)
    )
    assert line == "PUT /fhir/Appointment?identifier=… -> 201"


async def test_run_prints_one_line_per_request(http: aiohttp.ClientSession) -> None:
    lines: list[str] = []
    listening = asyncio.Event()
    answered = asyncio.Event()

    def write(line: str) -> None:
        lines.append(line)
        (answered if len(lines) > 1 else listening).set()

    serving = asyncio.create_task(run(0, write=write))
    try:
        await asyncio.wait_for(listening.wait(), 5)
        base = lines[0].rsplit(" ", 1)[1]
        status, _, _ = await call(http, "GET", f"{base}/metadata")
        assert status == 200
        await asyncio.wait_for(answered.wait(), 5)
    finally:
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
    assert lines[1] == "GET /fhir/metadata -> 200"


def test_the_capability_statement_is_valid_r4b() -> None:
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement

    from engine.testing.fake_fhir import CAPABILITIES

    CapabilityStatement.model_validate(CAPABILITIES)


async def test_an_update_that_changes_nothing_keeps_the_version(
    fhir: FakeFhir, http: aiohttp.ClientSession
) -> None:
    url = f"{fhir.url}/Appointment?identifier={SYSTEM}|N-1"
    first = await call(http, "PUT", url, appointment("N-1"))
    again = await call(http, "PUT", url, appointment("N-1"))
    assert (first[0], again[0]) == (201, 200)
    assert again[1]["meta"]["versionId"] == "1"
    changed = await call(http, "PUT", url, {**appointment("N-1"), "status": "cancelled"})
    assert changed[1]["meta"]["versionId"] == "2"
