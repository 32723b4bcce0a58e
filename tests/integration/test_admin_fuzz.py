"""A schema-driven fuzz of the admin API (schemathesis): requests generated from the engine's
own OpenAPI document, sent as an admin (who may call every operation) to `engine run` in its
own process under the production profile, find no server error. Generation is derandomized,
so a run is repeatable."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings

from engine.bench import wait_port
from engine.security import totp
from engine.security.atrest import new_key_line
from engine.security.identities import Identities
from engine.security.identities_store import IdentityStore
from engine.security.permissions import HTTP_ROUTES
from tests.integration.cli_support import CLI_ENV, free_ports
from tests.integration.conftest import SAMPLES, channel, write_channels

PASSWORD = "correct horse battery staple"


@dataclass
class Running:
    origin: str
    headers: dict[str, str]
    schema: dict[str, Any]


def _wait(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    try:
        asyncio.run(wait_port(port, proc))
    except RuntimeError as exc:
        raise AssertionError(f"{exc}:\n{log.read_text()}") from None


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("fuzz")
    mllp, http, ehr = free_ports(3)
    write_channels(root, {"siu": channel(ehr, retry={"attempts": 1})})
    keys = root / "atrest.keys"
    keys.touch(mode=0o600)
    keys.write_text(new_key_line("k1") + "\n")
    (root / "routes.yaml").write_text(yaml.safe_dump({
        "store": "sqlite:data/engine.db",
        "security": {"encryption": {"key_file": str(keys), "current": "k1"}},
        "listeners": {"feed": {"mllp": {"port": mllp}},
                      "console": {"http": {"port": http, "serve": ["admin"]}}},
        "routes": {"feed": ["siu"]},
    }))  # fmt: skip
    identities = root / "identities.db"
    with IdentityStore(identities) as store:
        secret = Identities(store).add_user("root1", "admin", PASSWORD)
    assert secret is not None
    env = {**CLI_ENV, "ENGINE_AUDIT_KEY": secrets.token_hex(32),
           "ENGINE_IDENTITIES_DB": str(identities)}  # fmt: skip
    log = root / "engine.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "engine", "run", "--config",
                                 str(root / "routes.yaml")], cwd=root, env=env,
                                stdout=sink, stderr=sink)  # fmt: skip
    try:
        _wait(http, proc, log)
        _wait(mllp, proc, log)
        send = subprocess.run(
            [sys.executable, "-m", "engine", "send", "--port", str(mllp),
             str(SAMPLES / "siu_s12_new_patient.hl7")],
            env=env, capture_output=True, timeout=60)  # fmt: skip
        assert send.returncode == 0, send
        origin = f"http://127.0.0.1:{http}"
        answer = requests.post(f"{origin}/auth/login", timeout=30, json={
            "user": "root1", "password": PASSWORD, "totp": totp.code_at(secret, time.time())})
        assert answer.status_code == 200, answer.text
        headers = {"Cookie": f"engine_session={answer.cookies['engine_session']}",
                   "X-CSRF-Token": answer.json()["csrf_token"]}
        schema = requests.get(f"{origin}/api/openapi.json", timeout=30).json()
        yield Running(origin, headers, schema)
    finally:
        proc.terminate()
        proc.wait(30)
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize("label", [
    f"{r.method} {r.path}" for r in HTTP_ROUTES if r.service == "admin"])
def test_no_request_the_schema_allows_is_a_server_error(running: Running, label: str) -> None:
    schema = schemathesis.openapi.from_dict(running.schema)
    [operation] = [r.ok() for r in schema.get_all_operations() if r.ok().label == label]

    @given(case=operation.as_strategy())
    @settings(max_examples=25, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def no_server_error(case: schemathesis.Case) -> None:
        response = case.call(base_url=running.origin, headers=running.headers, timeout=30)
        assert response.status_code < 500, (label, response.status_code)

    no_server_error()
