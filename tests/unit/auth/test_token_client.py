"""TokenClient against the fake token endpoint over real HTTP: both grant types, caching and
renewal by a fake clock, renewal after a resource server's 401, one shared in-flight request,
and errors that are classified right and never carry a secret."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

import aiohttp
import pytest
from aiohttp import web

from engine.auth import ClientSecretAuth, SmartBackendAuth, TokenClient, TokenError
from engine.testing.fake_token import FakeTokenServer
from tests.unit.auth.conftest import FakeClock, KeyPair

SECRET = "s3cr:et+/=ä-synthetic"  # ':' '+' '/' and non-ASCII: RFC 6749 2.3.1 encoding matters


def secret_client(
    server: FakeTokenServer, clock: FakeClock, *, early: float = 30.0, timeout: float = 10.0
) -> TokenClient:
    server.add_secret_client("clinic-engine", SECRET)
    auth = ClientSecretAuth(server.url, "clinic-engine", SECRET, scope="system/Appointment.write")
    return TokenClient(auth, clock=clock, early=early, timeout=timeout)


def smart_auth(
    server: FakeTokenServer, keys: KeyPair, alg: Literal["RS384", "ES384"], *, kid: str = "k1"
) -> SmartBackendAuth:
    return SmartBackendAuth(server.url, "smart-engine", keys.private_pem, alg, key_id=kid)


@pytest.fixture
async def clients() -> AsyncIterator[list[TokenClient]]:
    """Clients a test makes; each is closed afterwards."""
    made: list[TokenClient] = []
    yield made
    for client in made:
        await client.close()


async def test_client_secret_grant(
    server: FakeTokenServer, clock: FakeClock, clients: list[TokenClient]
) -> None:
    client = secret_client(server, clock)
    clients.append(client)
    token = await client.token()
    assert token == server.issued[-1]
    assert server.valid(token)
    [seen] = server.requests
    assert (seen.status, seen.method) == (200, "client_secret_basic")
    assert seen.client_id == "clinic-engine"
    assert (seen.grant_type, seen.scope) == ("client_credentials", "system/Appointment.write")


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
async def test_smart_backend_grant(
    server: FakeTokenServer,
    clock: FakeClock,
    clients: list[TokenClient],
    rsa_keys: KeyPair,
    ec_keys: KeyPair,
    alg: Literal["RS384", "ES384"],
) -> None:
    keys = rsa_keys if alg == "RS384" else ec_keys
    server.add_jwt_client("smart-engine", keys.public_pem, alg)
    client = TokenClient(smart_auth(server, keys, alg), clock=clock)
    clients.append(client)
    first = await client.token()
    client.invalidate()
    second = await client.token()
    assert first != second
    assert server.valid(first) and server.valid(second)
    assert [r.status for r in server.requests] == [200, 200]
    assert {r.method for r in server.requests} == {"private_key_jwt"}
    assert {r.kid for r in server.requests} == {"k1"}
    jtis = [r.jti for r in server.requests]
    assert None not in jtis and len(set(jtis)) == 2  # a fresh jti per assertion


async def test_token_cached_until_near_expiry_then_renewed(
    server: FakeTokenServer, clock: FakeClock, clients: list[TokenClient]
) -> None:
    client = secret_client(server, clock, early=30.0)
    clients.append(client)
    first = await client.token()
    clock.advance(300 - 30 - 1)
    assert await client.token() == first
    assert len(server.requests) == 1
    clock.advance(1)
    second = await client.token()
    assert second != first and len(server.requests) == 2
    assert await client.token() == second


async def test_short_tokens_renew_at_half_life(
    server: FakeTokenServer, clock: FakeClock, clients: list[TokenClient]
) -> None:
    server.expires_in = 20  # shorter than twice `early`: renewing 30 s early would never cache
    client = secret_client(server, clock, early=30.0)
    clients.append(client)
    first = await client.token()
    clock.advance(9)
    assert await client.token() == first
    clock.advance(1)
    assert await client.token() != first
    assert len(server.requests) == 2


async def test_missing_expires_in_means_300_seconds(
    server: FakeTokenServer, clock: FakeClock, clients: list[TokenClient]
) -> None:
    server.expires_in = None
    client = secret_client(server, clock, early=30.0)
    clients.append(client)
    first = await client.token()
    clock.advance(269)
    assert await client.token() == first
    clock.advance(1)
    assert await client.token() != first


@pytest.fixture
async def resource(server: FakeTokenServer) -> AsyncIterator[str]:
    """A resource server that accepts only bearer tokens the token endpoint says are valid."""

    async def handle(request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not server.valid(token):
            return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})
        return web.Response(status=200, text="ok")

    app = web.Application()
    app.router.add_get("/fhir/Appointment", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/fhir/Appointment"
    await runner.cleanup()


async def get_with_renewal(client: TokenClient, url: str) -> int:
    """What a destination does: on 401, invalidate the refused token and try once more."""
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            token = await client.token()
            headers = {"Authorization": f"Bearer {token}"}
            async with session.get(url, headers=headers) as response:
                if response.status != 401:
                    return response.status
            client.invalidate(token)
    return 401


async def test_invalidate_after_401_gets_a_new_token(
    server: FakeTokenServer, clock: FakeClock, clients: list[TokenClient], resource: str
) -> None:
    client = secret_client(server, clock)
    clients.append(client)
    assert await get_with_renewal(client, resource) == 200
    revoked = server.issued[-1]
    server.revoke(revoked)  # the server forgets the token before its expiry
    assert await get_with_renewal(client, resource) == 200
    assert len(server.issued) == 2
    renewed = await client.token()
    assert renewed != revoked and server.valid(renewed)


async def test_invalidate_with_a_stale_token_keeps_the_newer_one(
    server: FakeTokenServer, clock: FakeClock, clients: list[TokenClient]
) -> None:
    client = secret_client(server, clock)
    clients.append(client)
    old = await client.token()
    client.invalidate(old)
    new = await client.token()
    client.invalidate(old)  # a second request refused with the old token, answered late
    assert await client.token() == new
    assert len(server.requests) == 2


async def test_concurrent_callers_share_one_request(
    server: FakeTokenServer, clock: FakeClock, clients: list[TokenClient]
) -> None:
    client = secret_client(server, clock)
    clients.append(client)
    server.hold()
    callers = [asyncio.create_task(client.token()) for _ in range(10)]
    await server.wait_until(lambda: server.held == 1)
    server.release()
    tokens = await asyncio.wait_for(asyncio.gather(*callers), 10)
    assert len(server.requests) == 1
    assert set(tokens) == {server.issued[0]}


async def test_a_failed_shared_request_fails_every_caller_once(
    server: FakeTokenServer, clock: FakeClock, clients: list[TokenClient]
) -> None:
    client = secret_client(server, clock)
    clients.append(client)
    server.fail_next(503)
    server.hold()
    callers = [asyncio.create_task(client.token()) for _ in range(5)]
    await server.wait_until(lambda: server.held == 1)
    server.release()
    results = await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), 10)
    assert all(isinstance(r, TokenError) and r.retryable for r in results)
    assert len(server.requests) == 1
    assert await client.token() == server.issued[0]  # the failure is not cached


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_server_errors_are_retryable(
    server: FakeTokenServer, clock: FakeClock, clients: list[TokenClient], status: int
) -> None:
    client = secret_client(server, clock)
    clients.append(client)
    server.fail_next(status, error="temporarily_unavailable")
    with pytest.raises(TokenError) as caught:
        await client.token()
    assert caught.value.retryable
    assert (caught.value.status, caught.value.error) == (status, "temporarily_unavailable")
    assert SECRET not in str(caught.value)


async def test_timeout_is_retryable(
    server: FakeTokenServer, clock: FakeClock, clients: list[TokenClient]
) -> None:
    client = secret_client(server, clock, timeout=0.2)
    clients.append(client)
    server.hold()
    with pytest.raises(TokenError) as caught:
        await client.token()
    server.release()
    assert caught.value.retryable and caught.value.error == "timeout"


async def test_unreachable_endpoint_is_retryable(clock: FakeClock) -> None:
    # A port bound but never listening: refused, and no other process can take it meanwhile.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{held.getsockname()[1]}/token"
        client = TokenClient(ClientSecretAuth(url, "clinic-engine", SECRET), clock=clock)
        try:
            with pytest.raises(TokenError) as caught:
                await client.token()
        finally:
            await client.close()
        assert caught.value.retryable and caught.value.error == "connection_error"


async def test_wrong_secret_is_refused_and_never_quoted(
    server: FakeTokenServer, clock: FakeClock, clients: list[TokenClient]
) -> None:
    server.add_secret_client("clinic-engine", "the-right-one")
    auth = ClientSecretAuth(server.url, "clinic-engine", SECRET)
    client = TokenClient(auth, clock=clock)
    clients.append(client)
    with pytest.raises(TokenError) as caught:
        await client.token()
    error = caught.value
    assert (error.status, error.error, error.retryable) == (401, "invalid_client", False)
    for text in (str(error), repr(error), repr(auth), repr(client.auth)):
        assert SECRET not in text and "the-right-one" not in text


Refusal = Callable[[FakeTokenServer, FakeClock, KeyPair, KeyPair], Awaitable[TokenClient]]


async def _wrong_key(
    server: FakeTokenServer, clock: FakeClock, keys: KeyPair, other: KeyPair
) -> TokenClient:
    server.add_jwt_client("smart-engine", other.public_pem, "RS384")
    return TokenClient(smart_auth(server, keys, "RS384"), clock=clock)


async def _clock_ahead(
    server: FakeTokenServer, clock: FakeClock, keys: KeyPair, other: KeyPair
) -> TokenClient:
    server.add_jwt_client("smart-engine", keys.public_pem, "RS384")
    ahead = FakeClock(clock.now + 120)  # exp lands 7 minutes after the server's now
    return TokenClient(smart_auth(server, keys, "RS384"), clock=ahead)


async def _clock_behind(
    server: FakeTokenServer, clock: FakeClock, keys: KeyPair, other: KeyPair
) -> TokenClient:
    server.add_jwt_client("smart-engine", keys.public_pem, "RS384")
    behind = FakeClock(clock.now - 301)  # exp is already past on the server
    return TokenClient(smart_auth(server, keys, "RS384"), clock=behind)


async def _wrong_aud(
    server: FakeTokenServer, clock: FakeClock, keys: KeyPair, other: KeyPair
) -> TokenClient:
    server.add_jwt_client("smart-engine", keys.public_pem, "RS384")
    auth = SmartBackendAuth(server.url + "?tenant=a", "smart-engine", keys.private_pem, "RS384")
    return TokenClient(auth, clock=clock)


@pytest.mark.parametrize("make", [_wrong_key, _clock_ahead, _clock_behind, _wrong_aud])
async def test_bad_assertions_are_refused(
    server: FakeTokenServer,
    clock: FakeClock,
    clients: list[TokenClient],
    rsa_keys: KeyPair,
    other_rsa_keys: KeyPair,
    make: Refusal,
) -> None:
    client = await make(server, clock, rsa_keys, other_rsa_keys)
    clients.append(client)
    with pytest.raises(TokenError) as caught:
        await client.token()
    error = caught.value
    assert (error.status, error.error, error.retryable) == (401, "invalid_client", False)
    assert server.issued == []
    pem_body = rsa_keys.private_pem.decode().splitlines()[1]
    for text in (str(error), repr(error), repr(client.auth)):
        assert pem_body not in text and "eyJ" not in text  # no key, no JWT


def test_key_must_fit_the_algorithm(rsa_keys: KeyPair, ec_keys: KeyPair) -> None:
    pairs: list[tuple[KeyPair, Literal["RS384", "ES384"]]] = [
        (rsa_keys, "ES384"),
        (ec_keys, "RS384"),
    ]
    for keys, alg in pairs:
        auth = SmartBackendAuth("http://127.0.0.1:1/token", "smart-engine", keys.private_pem, alg)
        with pytest.raises(ValueError, match="does not fit") as caught:
            TokenClient(auth)
        assert keys.private_pem.decode().splitlines()[1] not in str(caught.value)
    garbage = SmartBackendAuth("http://127.0.0.1:1/token", "x", b"not a key", "RS384")
    with pytest.raises(ValueError, match="not an unencrypted PEM key"):
        TokenClient(garbage)


def test_an_infinite_or_huge_lifetime_is_not_believed() -> None:
    from engine.auth.token_client import MAX_TOKEN_LIFETIME, _seconds

    assert _seconds(float("inf")) is None
    assert _seconds(float("nan")) is None
    assert _seconds("²") is None
    assert _seconds(10**12) == MAX_TOKEN_LIFETIME
    assert _seconds("300") == 300.0
