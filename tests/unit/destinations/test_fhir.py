"""The FHIR destination over real HTTP: conditional update against the fake FHIR server,
retry/reject by status, Retry-After, token renewal after a 401 (client secret and SMART
Backend Services with an ES384 key against the fake token endpoint), a server that is down or
never answers, and reasons that never carry a token, secret, identifier or diagnostics."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jsonschema import Draft202012Validator

from engine.auth.token_client import ClientSecretAuth
from engine.config.model import DestinationConfig, Pos
from engine.config.validation import convert
from engine.destinations.base import DeliveryMeta, Outcome, Reject, Retry, Sent
from engine.destinations.fhir import (
    PLUGIN,
    FhirDestination,
    build,
)
from engine.destinations.http_common import MAX_RETRY_AFTER
from engine.destinations.http_common import retry_after as parse_retry_after
from engine.testing.fake_fhir import FakeFhir
from engine.testing.fake_token import FakeTokenServer

META = DeliveryMeta(delivery_id=7, message_id=3, channel="siu-to-fhir")
POS = Pos(Path("/cfg/channels/siu-to-fhir.yaml"), 9, 5)
PLACER = "urn:example:placer"
SECRET = "s3cr3t-synthetic-value"
CLIENT = "engine-test-client"
DIAGNOSTICS = "Patient Jane Synthetic-Doe has no coverage"
NOW = 1_760_000_000.0

PLAC_TYPE = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PLAC"}]
}
FILL_TYPE = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "FILL"}]
}


def appointment(value: str = "PLC-TEST-0001", **changes: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Appointment",
        "identifier": [{"system": PLACER, "value": value, "type": PLAC_TYPE}],
        "status": "booked",
        "start": "2031-03-04T09:00:00Z",
        "end": "2031-03-04T09:30:00Z",
        "participant": [{"actor": {"reference": "Patient/pat-test-01"}, "status": "accepted"}],
    }
    resource.update(changes)
    return resource


def payload(resource: dict[str, Any]) -> bytes:
    return json.dumps(resource).encode()


@pytest.fixture
async def fhir() -> AsyncIterator[FakeFhir]:
    async with FakeFhir() as fake:
        yield fake


@pytest.fixture
async def tokens() -> AsyncIterator[FakeTokenServer]:
    async with FakeTokenServer() as fake:
        fake.add_secret_client(CLIENT, SECRET)
        yield fake


@pytest.fixture
async def open_dest(fhir: FakeFhir) -> AsyncIterator[FhirDestination]:
    dest = FhirDestination("fhir-server", base_url=fhir.url, timeout=5.0, clock=lambda: NOW)
    yield dest
    await dest.close()


@pytest.fixture
async def authed(fhir: FakeFhir, tokens: FakeTokenServer) -> AsyncIterator[FhirDestination]:
    auth = ClientSecretAuth(token_url=tokens.url, client_id=CLIENT, client_secret=SECRET)
    dest = FhirDestination("fhir-server", base_url=fhir.url, timeout=5.0, auth=auth)
    yield dest
    await dest.close()


def stored(fake: FakeFhir) -> dict[str, Any]:
    [resource] = fake.resources.values()
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}


async def test_create_then_update_of_one_identifier_is_one_resource(
    fhir: FakeFhir, open_dest: FhirDestination
) -> None:
    first = await open_dest.send(payload(appointment()), META)
    second = await open_dest.send(payload(appointment(status="cancelled")), META)
    assert isinstance(first, Sent) and first.code == "201"
    assert isinstance(second, Sent) and second.code == "200"
    assert json.loads(second.response)["status"] == "cancelled"
    assert stored(fhir) == appointment(status="cancelled")
    [resource] = fhir.resources.values()
    assert resource["meta"]["versionId"] == "2"
    for request in fhir.requests:
        assert request.method == "PUT"
        assert request.path == "/fhir/Appointment"
        assert request.query == {"identifier": f"{PLACER}|PLC-TEST-0001"}
        assert request.headers["content-type"] == "application/fhir+json"
        assert request.headers["accept"] == "application/fhir+json"
        assert "authorization" not in request.headers


async def test_replay_is_idempotent(fhir: FakeFhir, open_dest: FhirDestination) -> None:
    body = payload(appointment())
    outcomes = [await open_dest.send(body, META) for _ in range(3)]
    assert [o.code for o in outcomes if isinstance(o, Sent)] == ["201", "200", "200"]
    assert len(fhir.resources) == 1
    assert stored(fhir) == appointment()


async def test_placer_identifier_is_chosen_and_the_query_is_url_encoded(
    fhir: FakeFhir, open_dest: FhirDestination
) -> None:
    odd = "PLC 7&x=1|+"
    resource = appointment(
        identifier=[
            {"system": "urn:example:filler", "value": "FIL-1", "type": FILL_TYPE},
            {"system": PLACER, "value": odd, "type": PLAC_TYPE},
        ]
    )
    assert isinstance(await open_dest.send(payload(resource), META), Sent)
    untyped = appointment(identifier=[{"system": "urn:x"}, {"value": "NO-SYSTEM-1"}])
    assert isinstance(await open_dest.send(payload(untyped), META), Sent)
    assert [r.query for r in fhir.requests] == [
        {"identifier": f"{PLACER}|{odd}"},
        {"identifier": "|NO-SYSTEM-1"},
    ]
    assert len(fhir.find(f"{PLACER}|{odd}")) == 1
    assert len(fhir.resources) == 2


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", "not JSON"),
        (payload({"resourceType": "Patient", "id": "p1"}), "not a FHIR Appointment"),
        (payload(appointment(identifier=[{"system": PLACER}])), "no identifier"),
        (payload(appointment(identifier=None)), "no identifier"),
    ],
)
async def test_payload_without_a_usable_identifier_is_rejected_unsent(
    fhir: FakeFhir, open_dest: FhirDestination, body: bytes, words: str
) -> None:
    outcome = await open_dest.send(body, META)
    assert isinstance(outcome, Reject)
    assert words in outcome.reason
    assert fhir.requests == []


async def test_429_with_retry_after_seconds_is_retry_after(
    fhir: FakeFhir, open_dest: FhirDestination
) -> None:
    fhir.fail_next(429, retry_after=7)
    outcome = await open_dest.send(payload(appointment()), META)
    assert isinstance(outcome, Retry)
    assert (outcome.code, outcome.after) == ("429", 7.0)
    assert fhir.resources == {}


async def test_503_with_retry_after_http_date(fhir: FakeFhir, open_dest: FhirDestination) -> None:
    when = datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=90)
    fhir.fail_next(503, retry_after=format_datetime(when, usegmt=True))
    outcome = await open_dest.send(payload(appointment()), META)
    assert isinstance(outcome, Retry)
    assert (outcome.code, outcome.after) == ("503", 90.0)


def test_parse_retry_after() -> None:
    past = format_datetime(datetime.fromtimestamp(NOW - 60, UTC), usegmt=True)
    assert parse_retry_after(None, NOW) is None
    assert parse_retry_after(" 12 ", NOW) == 12.0
    assert parse_retry_after(past, NOW) == 0.0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after("-5", NOW) is None
    assert parse_retry_after("²", NOW) is None  # str.isdigit() is true for it; float() is not
    assert parse_retry_after("99999999999", NOW) == MAX_RETRY_AFTER


@pytest.mark.parametrize("status", [500, 502, 504, 408])
async def test_transient_statuses_are_retry(
    fhir: FakeFhir, open_dest: FhirDestination, status: int
) -> None:
    fhir.fail_next(status)
    outcome = await open_dest.send(payload(appointment()), META)
    assert isinstance(outcome, Retry)
    assert outcome.code == str(status) and outcome.after is None
    assert json.loads(outcome.response)["resourceType"] == "OperationOutcome"
    # The server recovered: the next attempt of the same payload goes through.
    assert isinstance(await open_dest.send(payload(appointment()), META), Sent)


async def test_422_is_reject_keeping_the_outcome_and_naming_only_codes(
    fhir: FakeFhir, open_dest: FhirDestination
) -> None:
    outcome_json = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "business-rule", "diagnostics": DIAGNOSTICS},
            {"severity": "error", "code": "invariant", "diagnostics": DIAGNOSTICS},
            {"severity": "error", "code": "Not A Code <script>"},
        ],
    }
    fhir.fail_next(422, outcome=outcome_json)
    outcome = await open_dest.send(payload(appointment()), META)
    assert isinstance(outcome, Reject)
    assert outcome.code == "422"
    assert json.loads(outcome.response) == outcome_json
    assert "422" in outcome.reason and "business-rule,invariant" in outcome.reason
    assert "Synthetic" not in outcome.reason and "script" not in outcome.reason


async def test_401_renews_the_token_once_and_sends(
    fhir: FakeFhir, tokens: FakeTokenServer, authed: FhirDestination
) -> None:
    assert isinstance(await authed.send(payload(appointment()), META), Sent)
    fhir.fail_next(401)
    outcome = await authed.send(payload(appointment(status="arrived")), META)
    assert isinstance(outcome, Sent) and outcome.code == "200"
    assert len(tokens.issued) == 2 and tokens.issued[0] != tokens.issued[1]
    # The cached token served the second send; the 401 made the one renewal.
    assert fhir.tokens_seen == [tokens.issued[0], tokens.issued[0], tokens.issued[1]]
    assert [r.method for r in tokens.requests] == ["client_secret_basic"] * 2
    assert stored(fhir) == appointment(status="arrived")


async def test_401_again_after_renewal_is_retry(
    fhir: FakeFhir, tokens: FakeTokenServer, authed: FhirDestination
) -> None:
    fhir.fail_next(401, times=2)
    outcome = await authed.send(payload(appointment()), META)
    assert isinstance(outcome, Retry) and outcome.code == "401"
    assert len(tokens.issued) == 2 and len(fhir.requests) == 2
    assert fhir.resources == {}


async def test_token_endpoint_refusal_is_retry_with_the_oauth_code(
    fhir: FakeFhir, tokens: FakeTokenServer, authed: FhirDestination
) -> None:
    tokens.fail_next(401, "invalid_client")
    outcome = await authed.send(payload(appointment()), META)
    assert isinstance(outcome, Retry) and outcome.code == "invalid_client"
    assert fhir.requests == []


def _es384_pem(tmp_path: Path) -> tuple[Path, bytes]:
    key = ec.generate_private_key(ec.SECP384R1())
    path = tmp_path / "client-es384.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return path, public


async def test_smart_backend_es384_end_to_end_from_config(
    fhir: FakeFhir, tmp_path: Path
) -> None:
    key_path, public = _es384_pem(tmp_path)
    async with FakeTokenServer() as token_server:
        token_server.add_jwt_client("smart-client", public, "ES384")
        options = {
            "base_url": fhir.url,
            "timeout": "5s",
            "connections": 2,
            "auth": {
                "type": "smart_backend",
                "token_url": token_server.url,
                "client_id": "smart-client",
                "private_key_file": key_path.name,
                "algorithm": "ES384",
                "key_id": "kid-1",
            },
        }
        converted = convert(options, PLUGIN.schema, PLUGIN.schema, tmp_path)
        assert not list(Draft202012Validator(PLUGIN.schema).iter_errors(converted))
        assert converted["timeout"] == 5.0
        assert converted["auth"]["private_key_file"] == str(key_path)
        dest = build(DestinationConfig("fhir-server", "siu-to-fhir", "fhir", converted, POS))
        try:
            assert isinstance(dest, FhirDestination) and dest.concurrency == 2
            assert isinstance(await dest.send(payload(appointment()), META), Sent)
            fhir.fail_next(401)
            assert isinstance(await dest.send(payload(appointment(status="noshow")), META), Sent)
        finally:
            await dest.close()
        requests = token_server.requests
        assert [(r.status, r.method, r.kid) for r in requests] == [
            (200, "private_key_jwt", "kid-1")
        ] * 2
        assert requests[0].jti != requests[1].jti
        assert fhir.tokens_seen == [token_server.issued[0]] * 2 + [token_server.issued[1]]
        assert stored(fhir)["status"] == "noshow"


async def test_server_down_is_retry() -> None:
    # A port bound but never listening: refused, and no other process can take it meanwhile.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{held.getsockname()[1]}/fhir"
        dest = FhirDestination("fhir-server", base_url=url, timeout=5.0)
        try:
            outcome = await dest.send(payload(appointment()), META)
        finally:
            await dest.close()
        assert isinstance(outcome, Retry)
        assert "could not connect" in outcome.reason


async def test_no_answer_within_the_timeout_is_retry() -> None:
    arrived = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        arrived.set()
        await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dest = FhirDestination("fhir-server", base_url=f"http://127.0.0.1:{port}/fhir", timeout=0.2)
    try:
        outcome = await dest.send(payload(appointment()), META)
    finally:
        await dest.close()
        server.close()
        await server.wait_closed()
    assert arrived.is_set()
    assert isinstance(outcome, Retry)
    assert "within 0.2 s" in outcome.reason


async def test_closed_destination_retries_without_sending(
    fhir: FakeFhir, open_dest: FhirDestination
) -> None:
    await open_dest.close()
    outcome = await open_dest.send(payload(appointment()), META)
    assert isinstance(outcome, Retry) and "closed" in outcome.reason
    assert fhir.requests == []


async def test_no_token_secret_identifier_or_diagnostics_in_any_reason(
    fhir: FakeFhir, tokens: FakeTokenServer, authed: FhirDestination
) -> None:
    body = payload(appointment("PLC-SECRETIVE-42"))
    outcomes: list[Outcome] = []
    outcome_json = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": DIAGNOSTICS}],
    }
    for status in (401, 429, 500, 400, 404, 409, 412, 422):
        # A 401 takes two answers: the first request and the one after the renewal.
        fhir.fail_next(status, outcome=outcome_json, retry_after=3, times=2 if status == 401 else 1)
        outcomes.append(await authed.send(body, META))
    auth = ClientSecretAuth(token_url=tokens.url, client_id=CLIENT, client_secret=SECRET)
    for failure in (401, 503):
        tokens.fail_next(failure, "invalid_client" if failure == 401 else "server_error")
        fresh = FhirDestination("fhir-server", base_url=fhir.url, timeout=5.0, auth=auth)
        try:
            outcomes.append(await fresh.send(body, META))
        finally:
            await fresh.close()
    reasons = [o.reason for o in outcomes if isinstance(o, Retry | Reject)]
    assert len(reasons) == len(outcomes) == 10
    assert tokens.issued
    for reason in reasons:
        for needle in (*tokens.issued, SECRET, "PLC-SECRETIVE-42", "Synthetic", "Bearer"):
            assert needle not in reason


CC_AUTH = {
    "type": "client_credentials",
    "token_url": "https://auth.example.test/token",
    "client_id": "c",
    "client_secret": "x",
}
SMART_AUTH = {
    "type": "smart_backend",
    "token_url": "https://auth.example.test/token",
    "client_id": "c",
    "private_key_file": "/keys/c.pem",
    "algorithm": "RS384",
}


@pytest.mark.parametrize(
    ("options", "ok"),
    [
        ({"base_url": "https://fhir.example.test/r4"}, True),
        ({"base_url": "https://f.test", "timeout": 1.5, "connections": 64, "auth": CC_AUTH}, True),
        ({"base_url": "https://f.test", "auth": SMART_AUTH | {"scope": "system/*.write"}}, True),
        ({}, False),
        ({"base_url": "ftp://f.test"}, False),
        ({"base_url": "https://f.test", "connections": 0}, False),
        ({"base_url": "https://f.test", "connections": 65}, False),
        ({"base_url": "https://f.test", "timeout": 0}, False),
        ({"base_url": "https://f.test", "tls": True}, False),
        ({"base_url": "https://f.test", "auth": CC_AUTH | {"type": "password"}}, False),
        ({"base_url": "https://f.test", "auth": {**CC_AUTH, "client_secret": None}}, False),
        ({"base_url": "https://f.test", "auth": SMART_AUTH | {"algorithm": "HS256"}}, False),
        ({"base_url": "https://f.test", "auth": SMART_AUTH | {"client_secret": "x"}}, False),
        ({"base_url": "https://f.test", "auth": CC_AUTH | {"private_key_file": "/k.pem"}}, False),
    ],
)
def test_options_schema(options: dict[str, Any], ok: bool) -> None:
    Draft202012Validator.check_schema(PLUGIN.schema)
    errors = list(Draft202012Validator(PLUGIN.schema).iter_errors(options))
    assert (not errors) is ok, errors


def test_build_refuses_a_missing_key_file_or_a_key_for_another_algorithm(tmp_path: Path) -> None:
    def config(auth: dict[str, Any]) -> DestinationConfig:
        options = {"base_url": "https://f.test", "auth": auth}
        return DestinationConfig("fhir-server", "siu-to-fhir", "fhir", options, POS)

    missing = str(tmp_path / "absent.pem")
    with pytest.raises(ValueError, match="cannot read private_key"):
        build(config(SMART_AUTH | {"private_key_file": missing}))
    key_path, _ = _es384_pem(tmp_path)
    with pytest.raises(ValueError, match="does not fit RS384"):
        build(config(SMART_AUTH | {"private_key_file": str(key_path)}))


async def test_401_without_auth_is_retry_after_one_request(
    fhir: FakeFhir, open_dest: FhirDestination
) -> None:
    fhir.fail_next(401)
    outcome = await open_dest.send(payload(appointment()), META)
    assert isinstance(outcome, Retry) and "no auth is configured" in outcome.reason
    assert len(fhir.requests) == 1


async def test_concurrent_sends_share_one_session(fhir: FakeFhir) -> None:
    dest = FhirDestination("fhir-server", base_url=fhir.url, timeout=5.0, connections=2)
    try:
        bodies = [payload(appointment(f"PLC-TEST-{n:04d}")) for n in range(8)]
        outcomes = await asyncio.gather(*(dest.send(body, META) for body in bodies))
    finally:
        await dest.close()
    assert [o.code for o in outcomes if isinstance(o, Sent)] == ["201"] * 8
    assert len(fhir.resources) == 8


def test_the_identifier_updated_is_the_one_the_state_is_kept_by() -> None:
    from engine.appointments.state import appointment_key
    from engine.destinations.fhir import pick_identifier

    identifiers = [
        {"system": "urn:a", "value": "X"},  # untyped, first
        {"system": "urn:b", "value": "Y", "type": {"coding": [{"code": "FILL"}]}},
    ]
    assert pick_identifier(identifiers) == ("urn:b", "Y")
    assert appointment_key({"identifier": identifiers}) == "urn:b|Y"


async def test_transaction_mode_sends_the_conditional_update_in_a_bundle(fhir: FakeFhir) -> None:
    destination = FhirDestination("fhir-server", base_url=fhir.url, mode="transaction")
    try:
        first = await destination.send(payload(appointment()), META)
        again = await destination.send(payload(appointment()), META)
        changed = await destination.send(payload(appointment(status="cancelled")), META)
    finally:
        await destination.close()
    assert [type(o) for o in (first, again, changed)] == [Sent, Sent, Sent]
    (request, *_) = fhir.requests
    assert (request.method, request.path) == ("POST", "/fhir")
    assert request.json["type"] == "transaction"
    (entry,) = request.json["entry"]
    token = quote(f"{PLACER}|PLC-TEST-0001", safe="")
    assert entry["request"] == {"method": "PUT", "url": f"Appointment?identifier={token}"}
    (stored,) = fhir.find(f"{PLACER}|PLC-TEST-0001")
    assert stored["meta"]["versionId"] == "2" and stored["status"] == "cancelled"


async def test_transaction_mode_judges_by_the_answer(fhir: FakeFhir) -> None:
    destination = FhirDestination("fhir-server", base_url=fhir.url, mode="transaction")
    try:
        fhir.fail_next(422)
        rejected = await destination.send(payload(appointment()), META)
        fhir.fail_next(503)
        retried = await destination.send(payload(appointment()), META)
    finally:
        await destination.close()
    assert isinstance(rejected, Reject) and rejected.code == "422"
    assert isinstance(retried, Retry) and retried.code == "503"


def test_mode_is_an_option(tmp_path: Path) -> None:
    config = DestinationConfig("fhir-server", "siu-to-fhir", "fhir",
                               {"base_url": "http://127.0.0.1:1/fhir", "mode": "transaction"}, POS)
    assert build(config).mode == "transaction"
    assert Draft202012Validator(PLUGIN.schema).is_valid({"base_url": "http://x", "mode": "update"})
    assert not Draft202012Validator(PLUGIN.schema).is_valid({"base_url": "http://x", "mode": "x"})
