"""The admin listener under test: a running engine with an MLLP feed (its EHR down until a
test starts a FakeEhr on `ehr_port`), a listener serving only `admin`, a real identity file
with a credential per role (an admin logged in with password + TOTP) and an audit trail.
Shared by the admin API tests and the browser tests."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from engine.config import load
from engine.runtime.engine import Engine
from engine.runtime.security import SecurityServices
from engine.security import totp
from engine.security.audit import AuditKey
from engine.security.audit_store import AuditLog, AuditStore
from engine.security.identities import Identities
from engine.security.identities_store import IdentityStore
from engine.testing.mllp_client import MllpClient
from tests.integration.conftest import channel, eventually, free_port, sample, write_channels

PASSWORD = "correct horse battery staple"
JSON = {"Content-Type": "application/json"}


@dataclass
class Admin:
    engine: Engine
    http: aiohttp.ClientSession
    origin: str
    mllp_port: int
    ehr_port: int
    trail: AuditStore
    headers: dict[str, dict[str, str]]  # role -> credential headers

    async def call(self, method: str, path: str, role: str | None, body: Any = None,
                   content_type: str = "application/json") -> tuple[int, Any]:
        headers = {**(self.headers[role] if role else {}), "Content-Type": content_type}
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        async with self.http.request(method, self.origin + path, data=data,
                                     headers=headers) as response:  # fmt: skip
            return response.status, await response.json(content_type=None)

    async def send(self, control_id: str, patient: str = "PAT1",
                   name: str = "siu_s12_new_patient.hl7", appointment: str = "APT1001") -> None:
        message = re.sub(rb"\|MSG\d+\|", f"|{control_id}|".encode(), sample(name), count=1)
        message = message.replace(b"APT1001", appointment.encode())
        message = re.sub(rb"(PID\|1\|\|)[^|^]+", rb"\g<1>" + patient.encode(), message, count=1)
        client = await MllpClient.connect("127.0.0.1", self.mllp_port)
        try:
            assert b"MSA|AA" in await client.send(message)
        finally:
            await client.close()


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[Admin]:
    mllp_port, http_port, ehr_port = free_port(), free_port(), free_port()
    write_channels(tmp_path, {"siu": channel(ehr_port, retry={"attempts": 1})})
    config = {
        "store": "sqlite:data/engine.db",
        "listeners": {
            "feed": {"mllp": {"port": mllp_port}},
            "console": {"http": {"port": http_port, "serve": ["admin"]}},
        },
        "routes": {"feed": ["siu"]},
    }
    (tmp_path / "routes.yaml").write_text(yaml.safe_dump(config))
    store = IdentityStore(tmp_path / "identities.db")
    ids = Identities(store)
    admin_secret = ids.add_user("root1", "admin", PASSWORD)
    assert admin_secret is not None
    trail = AuditStore(tmp_path / "audit.db",
                       AuditKey.from_bytes(secrets.token_hex(32).encode(), "test"))
    loaded = load(tmp_path / "routes.yaml")
    security = SecurityServices(loaded, identities=ids, audit=AuditLog(trail))
    engine = Engine(loaded, poll_interval=0.05, security=security)
    await engine.start()
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            site = Admin(engine, http, f"http://127.0.0.1:{http_port}", mllp_port, ehr_port,
                         trail, {})  # fmt: skip
            for role in ("operator", "viewer", "auditor"):
                site.headers[role] = {"Authorization": "Bearer "
                                      + ids.create_key("root1", role, 3600).secret}
            code = totp.code_at(admin_secret, security.access.now())  # type: ignore[union-attr]
            async with http.post(site.origin + "/auth/login", json={
                    "user": "root1", "password": PASSWORD, "totp": code}) as response:
                assert response.status == 200, await response.text()
                body = await response.json()
                cookie = response.cookies["engine_session"].value
            site.headers["admin"] = {"Cookie": f"engine_session={cookie}",
                                     "X-CSRF-Token": body["csrf_token"]}
            yield site
    finally:
        await engine.stop()
        store.close()


async def failed_queue(admin: Admin) -> list[dict[str, Any]]:
    status, body = await admin.call("GET", "/api/deliveries/failed", "operator")
    assert status == 200, body
    return list(body["deliveries"])


async def wait_failed(admin: Admin, count: int = 1) -> None:
    """Until the failed-sync queue holds `count` deliveries (a delivery fails after its
    retry)."""

    async def failed() -> bool:
        return len(await failed_queue(admin)) == count

    await eventually(failed, what="the delivery failed")

