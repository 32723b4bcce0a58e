"""TLS on real sockets: the engine's MLLP and HTTPS listeners refuse TLS 1.1 and accept 1.2
and 1.3, mutual TLS holds to the allow-list, and MLLP and FHIR destinations refuse a server
whose certificate another CA signed. Certificates come from `engine certs dev`'s code, made
into tmp_path; every port is chosen free at run time on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import ssl
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from engine.auth.token_client import ClientSecretAuth
from engine.commands.send import send_files
from engine.config.model import ClientTls, ListenerTls
from engine.destinations.base import DeliveryMeta, Retry, Sent
from engine.destinations.fhir import FhirDestination
from engine.destinations.mllp import MllpDestination
from engine.protocol.mllp import Framer, frame
from engine.runtime.engine import Engine
from engine.security.devcerts import DevCerts, make_dev_certs
from engine.security.tls import client_context, refused, server_context
from tests.integration.conftest import free_port, running, sample, write_channels
from tests.integration.fhir_support import FHIR_JSON, appointment, archive_channel

META = DeliveryMeta(delivery_id=1, message_id=1, channel="tls-test")
SIU = sample("siu_s12_new_patient.hl7")


@pytest.fixture
def certs(tmp_path: Path) -> DevCerts:
    return make_dev_certs(tmp_path / "certs")


@pytest.fixture
def other(tmp_path: Path) -> DevCerts:
    """A second CA with its own server and client (CN other-client)."""
    return make_dev_certs(tmp_path / "other", client_cn="other-client")


def siu_channel(directory: Path) -> dict[str, Any]:
    return {
        "accept": {"type": ["SIU^S12"]},
        "destinations": {"siu-archive": {"file": {"directory": str(directory)}}},
    }


def write_tls_config(
    root: Path, tls: dict[str, Any], host: str = "127.0.0.1"
) -> tuple[Path, int, int]:
    """An MLLP and an HTTPS listener on `host` sharing `tls`; their ports."""
    mllp_port, http_port = free_port(), free_port()
    write_channels(root, {"siu": siu_channel(root / "out-siu"),
                          "fhir": archive_channel(root / "out-fhir")})
    config = {
        "store": "sqlite:data/engine.db",
        "security": {"profile": "development"},
        "listeners": {
            "feed": {"mllp": {"port": mllp_port, "host": host, "tls": tls}},
            "api": {"http": {"port": http_port, "host": host, "tls": tls, "auth": "none"}},
        },
        "routes": {"feed": ["siu"], "api": ["fhir"]},
    }
    (root / "routes.yaml").write_text(yaml.safe_dump(config))
    return root / "routes.yaml", mllp_port, http_port


def server_tls(certs: DevCerts, **extra: Any) -> dict[str, Any]:
    return {"cert": str(certs.server), "key": str(certs.server_key), **extra}


def client(
    certs: DevCerts, version: ssl.TLSVersion | None = None, *, identity: DevCerts | None = None
) -> ssl.SSLContext:
    """A client trusting `certs`' CA, held to exactly `version` when given, presenting
    `identity`'s client certificate when given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(certs.ca)
    if version is not None:
        context.minimum_version = context.maximum_version = version
    if identity is not None:
        context.load_cert_chain(identity.client, identity.client_key)
    return context


def tls11_client(certs: DevCerts) -> ssl.SSLContext:
    """A client that offers TLS 1.1 and nothing else, with the ciphers TLS 1.1 can use."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1_1 itself is deprecated
        context = client(certs, ssl.TLSVersion.TLSv1_1)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    assert context.minimum_version == context.maximum_version == ssl.TLSVersion.TLSv1_1
    return context


@contextlib.asynccontextmanager
async def tls11_capable_server(certs: DevCerts) -> AsyncIterator[int]:
    """A server that does accept TLS 1.1: the control showing the 1.1 client really speaks
    it, so a refusal by the engine is the engine's doing."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.load_cert_chain(certs.server, certs.server_key)

    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(close, "127.0.0.1", 0, ssl=context)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def handshake(port: int, context: ssl.SSLContext) -> str:
    """The TLS version agreed with 127.0.0.1:port (verifying the name localhost)."""
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    try:
        obj = writer.get_extra_info("ssl_object")
        return str(obj.version())
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def mllp_exchange(port: int, context: ssl.SSLContext, payload: bytes = SIU) -> bytes | None:
    """Send one framed message over TLS; the ACK, or None if the connection ended first."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    framer = Framer(1024 * 1024)
    try:
        writer.write(frame(payload))
        await writer.drain()
        async with asyncio.timeout(10):
            while True:
                try:
                    data = await reader.read(65536)
                except (ConnectionResetError, ssl.SSLError):
                    return None
                if not data:
                    return None
                for event in framer.feed(data):
                    return bytes(getattr(event, "payload", b""))
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def msa(ack: bytes | None) -> str:
    assert ack is not None, "no ACK"
    return ack.split(b"MSA|", 1)[1][:2].decode()


async def post_appointment(port: int, context: ssl.SSLContext) -> tuple[int, Any]:
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session, session.post(
        f"https://localhost:{port}/fhir/Appointment",
        json=appointment(), headers={"Content-Type": FHIR_JSON},
    ) as response:
        return response.status, await response.json(content_type=None)


async def stored(engine: Engine) -> int:
    from engine.store.base import MessageFilter

    return len(await engine.store.search(MessageFilter()))


# -- listeners ---------------------------------------------------------------------------


async def test_tls11_client_is_refused_on_mllp_and_https(
    tmp_path: Path, certs: DevCerts
) -> None:
    old = tls11_client(certs)
    async with tls11_capable_server(certs) as control:
        assert await handshake(control, old) == "TLSv1.1"
    routes, mllp_port, http_port = write_tls_config(tmp_path / "cfg", server_tls(certs))
    async with running(routes) as engine:
        for port in (mllp_port, http_port):
            with pytest.raises((ssl.SSLError, ConnectionResetError)):
                await handshake(port, tls11_client(certs))
        assert await stored(engine) == 0


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_tls12_and_13_clients_get_aa_and_201(
    tmp_path: Path, certs: DevCerts, version: ssl.TLSVersion
) -> None:
    routes, mllp_port, http_port = write_tls_config(tmp_path / "cfg", server_tls(certs))
    async with running(routes):
        assert await handshake(mllp_port, client(certs, version)) == version.name.replace(
            "v1_", "v1.")
        assert msa(await mllp_exchange(mllp_port, client(certs, version))) == "AA"
        status, body = await post_appointment(http_port, client(certs, version))
        assert status == 201, body


async def test_engine_send_speaks_tls_and_verifies_the_listener(
    tmp_path: Path, certs: DevCerts, other: DevCerts, capsys: pytest.CaptureFixture[str]
) -> None:
    routes, mllp_port, _ = write_tls_config(tmp_path / "cfg", server_tls(certs))
    message = tmp_path / "siu.hl7"
    message.write_bytes(SIU)
    async with running(routes) as engine:
        out = io.StringIO()
        trusted = ClientTls(ca=str(certs.ca))
        assert await send_files([message], "127.0.0.1", mllp_port, 10, out, tls=trusted) == 0
        assert out.getvalue().endswith(": AA\n")
        # Another CA's listener certificate is refused before a byte of the message goes.
        wrong = ClientTls(ca=str(other.ca))
        assert await send_files([message], "127.0.0.1", mllp_port, 10, out, tls=wrong) == 2
        assert "TLS with 127.0.0.1:" in capsys.readouterr().err
        assert await stored(engine) == 1


async def test_tls12_offers_only_forward_secret_aead_ciphers(
    tmp_path: Path, certs: DevCerts
) -> None:
    routes, mllp_port, _ = write_tls_config(tmp_path / "cfg", server_tls(certs))
    legacy = client(certs, ssl.TLSVersion.TLSv1_2)
    legacy.set_ciphers("AES128-SHA:AES256-SHA:AES128-GCM-SHA256")  # RSA key exchange only
    async with running(routes):
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await handshake(mllp_port, legacy)
        modern = client(certs, ssl.TLSVersion.TLSv1_2)
        _, writer = await asyncio.open_connection(
            "127.0.0.1", mllp_port, ssl=modern, server_hostname="localhost")
        cipher = writer.get_extra_info("cipher")[0]
        writer.close()
        assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher)


async def test_mutual_tls_holds_to_the_allow_list(
    tmp_path: Path, certs: DevCerts, other: DevCerts
) -> None:
    # Both CAs are trusted, so `other`'s client passes verification and only the allow-list
    # (this CA's client, by fingerprint) keeps it out.
    bundle = tmp_path / "both-cas.pem"
    bundle.write_bytes(certs.ca.read_bytes() + other.ca.read_bytes())
    tls = server_tls(certs, client_ca=str(bundle), allow=[certs.client_fingerprint])
    routes, mllp_port, http_port = write_tls_config(tmp_path / "cfg", tls)
    async with running(routes) as engine:
        assert await mllp_exchange(mllp_port, client(certs, identity=other)) is None
        listener = engine.listeners["feed"]
        assert listener.stats.tls_refused == 1  # type: ignore[union-attr]
        status, body = await post_appointment(http_port, client(certs, identity=other))
        assert status == 403 and body["issue"][0]["code"] == "forbidden"
        assert await stored(engine) == 0

        # No certificate at all: the handshake itself fails (client_ca requires one).
        assert await mllp_exchange(mllp_port, client(certs)) is None

        assert msa(await mllp_exchange(mllp_port, client(certs, identity=certs))) == "AA"
        status, body = await post_appointment(http_port, client(certs, identity=certs))
        assert status == 201, body


async def test_allow_list_by_subject(tmp_path: Path, certs: DevCerts, other: DevCerts) -> None:
    bundle = tmp_path / "both-cas.pem"
    bundle.write_bytes(certs.ca.read_bytes() + other.ca.read_bytes())
    tls = server_tls(certs, client_ca=str(bundle), allow=["CN=other-client"])
    routes, mllp_port, http_port = write_tls_config(tmp_path / "cfg", tls)
    async with running(routes):
        status, _ = await post_appointment(http_port, client(certs, identity=certs))
        assert status == 403
        assert await mllp_exchange(mllp_port, client(certs, identity=certs)) is None
        assert msa(await mllp_exchange(mllp_port, client(certs, identity=other))) == "AA"


# -- destinations ------------------------------------------------------------------------


async def test_mllp_destination_refuses_a_certificate_from_another_ca(
    tmp_path: Path, certs: DevCerts, other: DevCerts
) -> None:
    routes, mllp_port, _ = write_tls_config(tmp_path / "ehr", server_tls(other))
    async with running(routes) as ehr:
        wrong = MllpDestination("ehr", host="127.0.0.1", port=mllp_port, connect_timeout=5,
                                tls=client_context(ClientTls(ca=str(certs.ca))))
        try:
            outcome = await wrong.send(SIU, META)
        finally:
            await wrong.close()
        assert outcome == Retry(refused(f"mllps://127.0.0.1:{mllp_port}"))
        assert await stored(ehr) == 0

        right = MllpDestination("ehr", host="127.0.0.1", port=mllp_port,
                                tls=client_context(ClientTls(ca=str(other.ca))))
        try:
            sent = await right.send(SIU, META)
        finally:
            await right.close()
        assert isinstance(sent, Sent) and sent.code == "AA"
        assert await stored(ehr) == 1


async def test_mllp_destination_refuses_a_certificate_for_another_host(
    tmp_path: Path, certs: DevCerts
) -> None:
    # 127.0.0.2 is loopback too, but the certificate names only localhost and 127.0.0.1.
    routes, mllp_port, _ = write_tls_config(tmp_path / "ehr", server_tls(certs), "127.0.0.2")
    async with running(routes) as ehr:
        dest = MllpDestination("ehr", host="127.0.0.2", port=mllp_port, connect_timeout=5,
                               tls=client_context(ClientTls(ca=str(certs.ca))))
        try:
            outcome = await dest.send(SIU, META)
        finally:
            await dest.close()
        assert outcome == Retry(refused(f"mllps://127.0.0.2:{mllp_port}"))
        assert await stored(ehr) == 0


@contextlib.asynccontextmanager
async def https_fhir_server(certs: DevCerts) -> AsyncIterator[tuple[int, list[str]]]:
    """A FHIR server stand-in over HTTPS answering 201 to everything; the paths it saw."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.path)
        await request.read()
        if request.path == "/token":  # an OAuth token endpoint on the same server
            return web.json_response(
                {"access_token": "synthetic-token", "token_type": "bearer", "expires_in": 300})
        return web.json_response({"resourceType": "Appointment", "id": "1"}, status=201)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = server_context(ListenerTls(str(certs.server), str(certs.server_key)))
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield int(runner.addresses[0][1]), seen
    finally:
        await runner.cleanup()


async def test_fhir_destination_refuses_a_certificate_from_another_ca(
    certs: DevCerts, other: DevCerts
) -> None:
    payload = json.dumps(appointment()).encode()
    async with https_fhir_server(other) as (port, seen):
        base = f"https://127.0.0.1:{port}/fhir"
        wrong = FhirDestination("fhir", base_url=base, timeout=5,
                                tls=client_context(ClientTls(ca=str(certs.ca))))
        system = FhirDestination("fhir", base_url=base, timeout=5)  # system CAs only
        right = FhirDestination("fhir", base_url=base, timeout=5,
                                tls=client_context(ClientTls(ca=str(other.ca))))
        try:
            assert await wrong.send(payload, META) == Retry(
                refused(f"https://127.0.0.1:{port}"))
            assert await system.send(payload, META) == Retry(
                refused(f"https://127.0.0.1:{port}"))
            assert seen == []
            outcome = await right.send(payload, META)
            assert isinstance(outcome, Sent) and outcome.code == "201"
            assert seen == ["/fhir/Appointment"]
        finally:
            for dest in (wrong, system, right):
                await dest.close()


async def test_channel_delivery_to_a_wrong_certificate_fails_and_says_why(
    tmp_path: Path, certs: DevCerts, other: DevCerts
) -> None:
    """The whole path: a channel's MLLP-over-TLS destination trusting only `certs`' CA faces
    an EHR whose certificate `other` signed; every attempt is refused, nothing arrives."""
    from engine.testing.mllp_client import MllpClient
    from tests.integration.conftest import deliveries_of, eventually, write_config

    ehr_routes, ehr_port, _ = write_tls_config(tmp_path / "ehr", server_tls(other))
    dest = {"mllp": {"host": "127.0.0.1", "port": ehr_port, "connect_timeout": "5s",
                     "tls": {"ca": str(certs.ca)}},
            "retry": {"attempts": 2, "first": "50ms", "max": "100ms"}}
    feed_port = free_port()
    routes = write_config(tmp_path / "engine", feed_port,
                          {"siu": {"accept": {"type": ["SIU^S12"]},
                                   "destinations": {"clinic-ehr": dest}}})
    async with running(ehr_routes) as ehr, running(routes) as engine:
        client = await MllpClient.connect("127.0.0.1", feed_port)
        try:
            assert msa(await client.send(SIU)) == "AA"
        finally:
            await client.close()

        async def failed() -> bool:
            rows = await deliveries_of(engine)
            return bool(rows) and rows[0].status == "failed"

        await eventually(failed, what="the delivery to fail")
        [row] = await deliveries_of(engine)
        assert row.attempts == 3  # the first try and two retries
        assert row.last_error == refused(f"mllps://127.0.0.1:{ehr_port}")
        assert await stored(ehr) == 0


async def test_the_token_endpoint_gets_the_destinations_tls_settings(certs: DevCerts) -> None:
    """The bearer token is fetched with the destination's `ca` too: with it the token and the
    write go through; with the system CAs only, neither leaves the engine."""
    payload = json.dumps(appointment()).encode()
    async with https_fhir_server(certs) as (port, seen):
        base = f"https://127.0.0.1:{port}"
        auth = ClientSecretAuth(f"{base}/token", "engine-test", "synthetic-secret")
        trusted = FhirDestination("fhir", base_url=f"{base}/fhir", timeout=5, auth=auth,
                                  tls=client_context(ClientTls(ca=str(certs.ca))))
        untrusted = FhirDestination("fhir", base_url=f"{base}/fhir", timeout=5, auth=auth)
        try:
            refused_outcome = await untrusted.send(payload, META)
            assert isinstance(refused_outcome, Retry) and seen == []
            outcome = await trusted.send(payload, META)
            assert isinstance(outcome, Sent) and outcome.code == "201"
            assert seen == ["/token", "/fhir/Appointment"]
        finally:
            await trusted.close()
            await untrusted.close()
