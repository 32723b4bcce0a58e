"""The fake token endpoint checks assertions like a strict server: hand-made JWTs and forms over
real HTTP, each refused for one reason, and a replayed jti refused the second time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest

from engine.auth.token_client import ASSERTION_TYPE
from engine.testing.fake_token import FakeTokenServer
from tests.unit.auth.conftest import FakeClock, KeyPair

CLIENT = "smart-engine"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


def claims(server: FakeTokenServer, clock: FakeClock, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": CLIENT,
        "sub": CLIENT,
        "aud": server.url,
        "exp": int(clock()) + 240,
        "jti": secrets.token_hex(8),
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def sign(payload: dict[str, Any], keys: KeyPair, alg: str = "RS384") -> str:
    return jwt.encode(payload, keys.private_pem, algorithm=alg)


def hmac_forgery(payload: dict[str, Any], public_pem: bytes) -> str:
    """An HS384 JWT keyed with the client's public key (PyJWT refuses to make one)."""

    def part(data: dict[str, Any]) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=")

    signed = part({"alg": "HS384", "typ": "JWT"}) + b"." + part(payload)
    mac = hmac.new(public_pem, signed, hashlib.sha384).digest()
    return (signed + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()


async def post(
    session: aiohttp.ClientSession,
    server: FakeTokenServer,
    assertion: str,
    **extra: str,
) -> tuple[int, dict[str, Any]]:
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        "scope": "system/Appointment.write",
    }
    form.update(extra)
    async with session.post(server.url, data=form) as response:
        return response.status, await response.json()


async def test_valid_assertion_gets_a_token_then_its_replay_is_refused(
    server: FakeTokenServer, clock: FakeClock, session: aiohttp.ClientSession, rsa_keys: KeyPair
) -> None:
    server.add_jwt_client(CLIENT, rsa_keys.public_pem, "RS384")
    assertion = sign(claims(server, clock, exp=int(clock()) + 300), rsa_keys)  # 5 min: allowed
    status, body = await post(session, server, assertion)
    assert status == 200
    assert body["token_type"] == "bearer" and body["expires_in"] == 300
    assert body["scope"] == "system/Appointment.write"
    assert server.valid(body["access_token"])
    status, body = await post(session, server, assertion)
    assert (status, body["error"]) == (401, "invalid_client")
    assert "jti" in body["error_description"]
    assert len(server.issued) == 1


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"aud": "http://127.0.0.1:1/token"}, "aud"),
        ({"sub": "someone-else"}, "sub"),
        ({"exp": -1}, "expired"),
        ({"exp": 301}, "five minutes"),
        ({"jti": None}, "jti"),
        ({"iss": "unknown-client", "sub": "unknown-client"}, "unknown client"),
    ],
)
async def test_bad_claims_are_refused(
    server: FakeTokenServer,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    rsa_keys: KeyPair,
    changes: dict[str, Any],
    reason: str,
) -> None:
    server.add_jwt_client(CLIENT, rsa_keys.public_pem, "RS384")
    if "exp" in changes:
        changes = {"exp": int(clock()) + changes["exp"]}
    status, body = await post(session, server, sign(claims(server, clock, **changes), rsa_keys))
    assert (status, body["error"]) == (401, "invalid_client")
    assert reason in body["error_description"]
    assert server.issued == []


async def test_expiry_follows_the_injected_clock(
    server: FakeTokenServer, clock: FakeClock, session: aiohttp.ClientSession, rsa_keys: KeyPair
) -> None:
    server.add_jwt_client(CLIENT, rsa_keys.public_pem, "RS384")
    assertion = sign(claims(server, clock, exp=int(clock()) + 60), rsa_keys)
    clock.advance(60)
    status, body = await post(session, server, assertion)
    assert (status, body["error_description"]) == (401, "the assertion has expired")
    status, body = await post(session, server, sign(claims(server, clock), rsa_keys))
    assert status == 200
    token = body["access_token"]
    clock.advance(299)
    assert server.valid(token)
    clock.advance(1)
    assert not server.valid(token)


async def test_wrong_key_wrong_alg_and_hmac_forgery_are_refused(
    server: FakeTokenServer,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    rsa_keys: KeyPair,
    other_rsa_keys: KeyPair,
    ec_keys: KeyPair,
) -> None:
    server.add_jwt_client(CLIENT, rsa_keys.public_pem, "RS384")
    jti = "reused-after-forgery"
    forged = [
        sign(claims(server, clock, jti=jti), other_rsa_keys),
        sign(claims(server, clock, jti=jti), rsa_keys, alg="RS256"),
        sign(claims(server, clock, jti=jti), ec_keys, alg="ES384"),
        # The classic confusion: HMAC keyed with the public key the server holds.
        hmac_forgery(claims(server, clock, jti=jti), rsa_keys.public_pem),
        "not-a-jwt",
    ]
    for assertion in forged:
        status, body = await post(session, server, assertion)
        assert (status, body["error"]) == (401, "invalid_client"), body
    # Forged assertions do not burn the jti they carry: the real client can still use it.
    status, _ = await post(session, server, sign(claims(server, clock, jti=jti), rsa_keys))
    assert status == 200


async def test_request_shape_errors(
    server: FakeTokenServer, clock: FakeClock, session: aiohttp.ClientSession, rsa_keys: KeyPair
) -> None:
    server.add_jwt_client(CLIENT, rsa_keys.public_pem, "RS384")
    server.add_secret_client("clinic-engine", "synthetic-secret")
    good = sign(claims(server, clock), rsa_keys)
    status, body = await post(session, server, good, grant_type="authorization_code")
    assert (status, body["error"]) == (400, "unsupported_grant_type")
    status, body = await post(session, server, good, client_assertion_type="urn:other")
    assert (status, body["error"]) == (400, "invalid_request")
    basic = "Basic " + base64.b64encode(b"clinic-engine:synthetic-secret").decode()
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE}
    async with session.post(server.url, data=form, headers={"Authorization": basic}) as response:
        assert response.status == 400  # two authentication methods at once
    async with session.post(server.url, data={"grant_type": "client_credentials"}) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic")
        assert response.headers["Cache-Control"] == "no-store"
    async with session.post(server.url, json={"grant_type": "client_credentials"}) as response:
        assert (response.status, (await response.json())["error"]) == (400, "invalid_request")
    assert [r.status for r in server.requests] == [400, 400, 400, 401, 400]


async def test_revoked_token_is_no_longer_valid(
    server: FakeTokenServer, session: aiohttp.ClientSession
) -> None:
    server.add_secret_client("clinic-engine", "synthetic-secret")
    basic = "Basic " + base64.b64encode(b"clinic-engine:synthetic-secret").decode()
    form = {"grant_type": "client_credentials"}
    async with session.post(server.url, data=form, headers={"Authorization": basic}) as response:
        token = (await response.json())["access_token"]
    assert server.valid(token)
    server.revoke(token)
    assert not server.valid(token)
    assert not server.valid("never-issued")
