"""The admin API over real HTTP against a running engine (real MLLP feed, real identity file
and audit trail): the failed-sync queue and a retry once the EHR is back, search paging and
the patient filter, message detail, replay with a dry run, bad bodies, the OpenAPI document,
and a listener serving only `admin`. Every route x role is in test_auth.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from engine.security.permissions import HTTP_ROUTES
from engine.testing.fake_ehr import FakeEhr
from tests.integration.admin_support import Admin, failed_queue, wait_failed
from tests.integration.conftest import eventually


async def test_a_failed_delivery_is_retried_once_the_ehr_is_back(admin: Admin) -> None:
    await admin.send("FAIL0001")  # nothing listens on the EHR's port yet

    await wait_failed(admin)
    [row] = await failed_queue(admin)
    assert row["destination"] == "clinic-ehr" and row["status"] == "failed"
    assert row["last_error"] and "payload" not in row
    async with FakeEhr(port=admin.ehr_port) as ehr:
        status, body = await admin.call("POST", "/api/deliveries/retry", "operator",
                                        {"delivery_ids": [row["id"]]})
        assert status == 200 and body == {"requeued": 1}

        async def sent() -> bool:
            status, detail = await admin.call("GET", f"/api/messages/{row['message_id']}",
                                              "viewer")  # fmt: skip
            return status == 200 and detail["deliveries"][0]["status"] == "sent"

        await eventually(sent, what="the retried delivery sent")
        assert len(ehr.received) == 1
    assert await failed_queue(admin) == []
    done = [(r.actor.role, r.event.what, r.event.outcome) for r in admin.trail.search()]
    assert ("operator", "POST api.deliveries.retry", 0) in done
    assert ("viewer", "GET api.message", 0) in done


async def test_search_pages_newest_first_and_finds_by_patient(admin: Admin) -> None:
    for n in range(5):
        await admin.send(f"PAGE000{n}", patient="PATX" if n == 2 else "PATY")
    status, first = await admin.call("POST", "/api/messages/search", "viewer", {"limit": 2})
    assert status == 200, first
    ids = [m["id"] for m in first["messages"]]
    assert ids == sorted(ids, reverse=True) and first["next_before_id"] == ids[-1]
    status, second = await admin.call("POST", "/api/messages/search", "viewer",
                                      {"limit": 2, "before_id": first["next_before_id"]})
    assert [m["id"] for m in second["messages"]] == [ids[-1] - 1, ids[-1] - 2]
    status, found = await admin.call("POST", "/api/messages/search", "viewer",
                                     {"patient_id": "PATX"})  # fmt: skip
    assert [m["keys"]["control_id"] for m in found["messages"]] == ["PAGE0002"]
    assert found["next_before_id"] is None
    [record] = [r for r in admin.trail.search(patient="PATX")
                if r.event.query and "patient_id" in r.event.query]
    assert record.event.count == 1 and record.event.query == {"patient_id": "PATX", "limit": 50}


async def test_a_replay_is_previewed_then_queued(admin: Admin) -> None:
    async with FakeEhr(port=admin.ehr_port) as ehr:
        await admin.send("RPL00001")
        await ehr.wait_until(lambda: len(ehr.received) == 1)
        status, found = await admin.call("POST", "/api/messages/search", "admin",
                                         {"control_id": "RPL00001"})  # fmt: skip
        assert status == 200, found
        [message] = found["messages"]
        request = {"message_ids": [message["id"]], "dry_run": True, "to": ["clinic-ehr"]}
        for to, said in (([], "to:"), (["nope"], "'nope'")):
            status, body = await admin.call("POST", "/api/replay", "admin", {**request, "to": to})
            assert status == 400 and said in body["issue"][0]["diagnostics"], body
        status, preview = await admin.call("POST", "/api/replay", "admin", request)
        assert status == 200, preview
        [plan] = preview["plans"]
        assert plan["replay_id"] is None and plan["sends"][0]["destination"] == "clinic-ehr"
        status, _ = await admin.call("POST", "/api/replay", "operator", request)
        assert status == 403
        status, done = await admin.call("POST", "/api/replay", "admin",
                                        {**request, "dry_run": False})  # fmt: skip
        assert status == 200 and done["plans"][0]["replay_id"], done
        await ehr.wait_until(lambda: len(ehr.received) == 2)


@pytest.mark.parametrize("body,field", [
    ({"patient_id": 12345}, "patient_id"),
    ({"no_such_filter": "x"}, "no_such_filter"),
    ({"limit": 100000}, "limit"),
    ({"since": "yesterday"}, "since"),
    ([1, 2], "object"),
])  # fmt: skip
async def test_a_bad_search_body_is_400_naming_the_field(
    admin: Admin, body: Any, field: str
) -> None:
    status, outcome = await admin.call("POST", "/api/messages/search", "viewer", body)
    assert status == 400 and outcome["resourceType"] == "OperationOutcome"
    text = outcome["issue"][0]["diagnostics"]
    assert field in text and "12345" not in text


async def test_a_search_needs_json(admin: Admin) -> None:
    status, _ = await admin.call("POST", "/api/messages/search", "viewer", b"{}",
                                 content_type="text/plain")  # fmt: skip
    assert status == 400


async def test_the_openapi_document_validates_and_names_every_admin_route(admin: Admin) -> None:
    status, document = await admin.call("GET", "/api/openapi.json", None)
    assert status == 200
    validate(document)
    described = {(method.upper(), path) for path, operations in document["paths"].items()
                 for method in operations}  # fmt: skip
    served = {(r.method, r.path) for r in HTTP_ROUTES if r.service == "admin"}
    assert described == served


async def test_a_reload_is_refused_with_its_problems_then_accepted(
    admin: Admin, tmp_path: Path
) -> None:
    channel_file = tmp_path / "channels" / "siu.yaml"
    good = channel_file.read_text()
    channel_file.write_text(good.replace("destinations:", "destinatons:"))
    status, body = await admin.call("POST", "/api/config/reload", "admin")
    assert status == 422 and not body["accepted"], body
    assert any(re.search(r"siu\.yaml:\d+:\d+: ", p) for p in body["problems"]), body
    channel_file.write_text(good.replace("CLINIC_EHR", "CLINIC_EHR2"))
    status, body = await admin.call("POST", "/api/config/reload", "admin")
    assert status == 200 and body["accepted"], body
    status, _ = await admin.call("POST", "/api/config/reload", "viewer")
    assert status == 403
    records = [(r.actor.who, r.event.outcome) for r in admin.trail.search()
               if r.event.what == "config reload"]
    assert records == [("user:root1", 0), ("user:root1", 4)]  # newest first


async def test_a_flagged_conflict_is_resolved_once(admin: Admin) -> None:
    await admin.send("CNF00001", name="siu_s15_cancel.hl7")  # cancels an unknown appointment
    await admin.send("CNF00002", appointment="APT2002")
    open_ = {"flagged": True, "resolved": False}
    status, found = await admin.call("POST", "/api/messages/search", "operator", open_)
    [conflict] = found["messages"]
    assert conflict["keys"]["control_id"] == "CNF00001"
    path = f"/api/conflicts/{conflict['id']}/resolve"
    status, body = await admin.call("POST", path, "operator", {"outcome": "maybe"})
    assert status == 400 and "outcome" in body["issue"][0]["diagnostics"]
    status, _ = await admin.call("POST", path, "viewer", {"outcome": "accepted"})
    assert status == 403
    status, body = await admin.call("POST", path, "operator", {"outcome": "accepted"})
    assert status == 200 and body == {"message_id": conflict["id"], "outcome": "accepted"}
    status, _ = await admin.call("POST", path, "operator", {"outcome": "dismissed"})
    assert status == 409
    _, other = await admin.call("POST", "/api/messages/search", "operator",
                                {"control_id": "CNF00002"})  # fmt: skip
    status, _ = await admin.call("POST", f"/api/conflicts/{other['messages'][0]['id']}/resolve",
                                 "operator", {"outcome": "accepted"})  # fmt: skip
    assert status == 404  # nothing flagged on it
    status, found = await admin.call("POST", "/api/messages/search", "operator", open_)
    assert found["messages"] == []
    status, found = await admin.call("POST", "/api/messages/search", "operator",
                                     {"flagged": True, "resolved": True})  # fmt: skip
    assert [m["id"] for m in found["messages"]] == [conflict["id"]]
    records = [(r.event.outcome, r.event.message_ids) for r in admin.trail.search(action="U")
               if r.event.what == "POST api.conflicts.resolve"]  # fmt: skip
    assert records == [(4, (other["messages"][0]["id"],)), (4, (conflict["id"],)),
                       (0, (conflict["id"],))]  # newest first; the 400 and 403 never got here


async def test_metrics_and_health_over_http(admin: Admin) -> None:
    async with FakeEhr(port=admin.ehr_port) as ehr:
        await admin.send("MET00001")
        await ehr.wait_until(lambda: len(ehr.received) == 1)
    async with admin.http.get(admin.origin + "/metrics") as response:
        assert response.status == 401
    async with admin.http.get(admin.origin + "/metrics",
                              headers=admin.headers["viewer"]) as response:  # fmt: skip
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    assert 'engine_messages_received_total{listener="feed"} 1.0' in text
    assert re.search(r'engine_deliveries_sent_total\{channel="siu",destination="clinic-ehr"\} '
                     r"1\.0", text)  # fmt: skip
    status, body = await admin.call("GET", "/health/live", None)
    assert status == 200, body
    status, body = await admin.call("GET", "/health/ready", None)
    assert status == 200 and body, body
    await admin.engine.listeners["feed"].stop()
    status, body = await admin.call("GET", "/health/ready", None)
    assert status == 503, body


async def test_a_listener_serving_only_admin_has_no_fhir_api(admin: Admin) -> None:
    status, _ = await admin.call("GET", "/fhir/metadata", None)
    assert status == 404
    status, body = await admin.call("GET", "/api/listeners", "viewer")
    assert status == 200
    kinds = {row["name"]: row["serve"] for row in body["listeners"]}
    assert kinds == {"feed": ["messages"], "console": ["admin"]}


async def test_stats_count_per_channel_and_destination_over_the_window(admin: Admin) -> None:
    await admin.send("STAT0001")  # the EHR is down: this one fails

    await wait_failed(admin)
    async with FakeEhr(port=admin.ehr_port) as ehr:
        await admin.send("STAT0002")
        await ehr.wait_until(lambda: len(ehr.received) == 1)

        async def sent() -> bool:
            status, body = await admin.call("POST", "/api/stats", "viewer", {})
            return status == 200 and sum(body["destinations"]["clinic-ehr"]["sent"]) == 1

        await eventually(sent, what="the delivery counted as sent")
    status, body = await admin.call("POST", "/api/stats", "viewer",
                                    {"window_minutes": 10, "buckets": 5})  # fmt: skip
    assert status == 200, body
    assert len(body["buckets"]) == 5 and body["bucket_seconds"] == 120
    siu = body["channels"]["siu"]
    assert sum(siu["received"]) == 2 and sum(siu["filtered"]) == sum(siu["errors"]) == 0
    ehr_series = body["destinations"]["clinic-ehr"]
    assert sum(ehr_series["failed"]) == 1 and sum(ehr_series["sent"]) == 1
    assert sum(ehr_series["queued"]) == 0 and max(ehr_series["latency_ms"]) > 0
    # Both were received within the last bucket of the window.
    assert siu["received"][-1] == 2
    status, outcome = await admin.call("POST", "/api/stats", "viewer", {"buckets": 100000})
    assert status == 400 and "buckets" in outcome["issue"][0]["diagnostics"]


async def test_me_names_the_caller_and_what_its_role_may_do(admin: Admin) -> None:
    status, me = await admin.call("GET", "/api/me", "viewer")
    assert status == 200
    assert me == {"name": "root1", "kind": "user", "role": "viewer",
                  "may": ["read", "search", "session", "status"]}  # fmt: skip
    status, me = await admin.call("GET", "/api/me", "admin")
    assert me["role"] == "admin" and "replay" in me["may"]


async def test_the_console_serves_its_shipped_files_only_under_its_policy(admin: Admin) -> None:
    for path, status, kind in [("/console/", 200, "text/html"), ("/console", 200, "text/html"),
                               ("/console/app.js", 200, "text/javascript"),
                               ("/console/no-such.js", 404, "text/plain")]:
        async with admin.http.get(admin.origin + path) as response:
            assert (response.status, response.content_type) == (status, kind), path
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]
            if status == 200:
                assert response.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/console/..%2fconsole.py", "/console/%2e%2e/console.py"):
        async with admin.http.get(admin.origin + path) as response:
            assert response.status == 404 and b"import" not in await response.read(), path
