"""Rate limits on the FHIR listener over real HTTP on 127.0.0.1, the listener's limiter on a
fake clock: the request past the limit gets 429 with Retry-After and a `throttled`
OperationOutcome before its body is read, the window passing lets it in again, another
address is unaffected, X-Forwarded-For changes nothing, the body limit still holds, the
refusal is counted and logged once without the address, and `engine check` names a bad
`rate_limit` at its place."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from engine.listeners.http import HttpListener
from engine.runtime.engine import Engine
from engine.security.ratelimit import RequestLimits
from tests.integration.cli_support import engine as engine_cli
from tests.integration.conftest import free_port, running, write_channels
from tests.integration.fhir_support import FHIR_JSON, appointment, archive_channel, issues


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def write_config(root: Path, port: int, rate_limit: Any) -> Path:
    write_channels(root, {"fhir": archive_channel(root / "out")})
    http: dict[str, Any] = {"port": port, "max_body_bytes": "4KiB", "auth": "none"}
    if rate_limit is not None:
        http["rate_limit"] = rate_limit
    config = {
        "store": "sqlite:data/engine.db",
        "security": {"profile": "development"},
        "listeners": {"api": {"http": http}},
        "routes": {"api": ["fhir"]},
    }
    (root / "routes.yaml").write_text(yaml.safe_dump(config))
    return root / "routes.yaml"


Site = tuple[Engine, HttpListener, FakeClock, str]


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    port = free_port()
    async with running(write_config(tmp_path, port, {"per_ip": "3/minute"})) as engine:
        listener = engine.listeners["api"]
        assert isinstance(listener, HttpListener)
        clock = FakeClock()
        listener.limits = RequestLimits(listener.http.rate_limit, clock=clock)
        yield engine, listener, clock, f"http://127.0.0.1:{port}/fhir"


class Got:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


async def get(base: str, source: str = "127.0.0.1", **headers: str) -> Got:
    """GET metadata from `source` (a loopback address the client binds to)."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session, session.get(
        f"{base}/metadata", headers=headers
    ) as response:
        return Got(response.status, response.headers, await response.read())


async def post(base: str, body: bytes) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(
        f"{base}/Appointment", data=body, headers={"Content-Type": FHIR_JSON}
    ) as response:
        return response.status, json.loads(await response.read())


async def test_the_request_past_the_limit_gets_429_until_the_window_passes(site: Site) -> None:
    _, listener, clock, base = site
    assert [(await get(base)).status for _ in range(3)] == [200, 200, 200]
    refused = await get(base)
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "20"  # one of 3/minute back after 20 s
    outcome = json.loads(refused.body)
    (issue,) = issues(outcome)
    assert issue["code"] == "throttled" and "3/minute" in issue["diagnostics"]
    assert refused.headers["Content-Type"].startswith(FHIR_JSON)
    clock.now += 19
    after = await get(base)
    assert (after.status, after.headers["Retry-After"]) == (429, "1")
    clock.now += 1
    assert (await get(base)).status == 200
    clock.now += 60  # a whole window: the full count again
    assert [(await get(base)).status for _ in range(4)] == [200, 200, 200, 429]
    assert listener.stats.throttled == 3
    assert listener.stats.requests == 3 + 1 + 1 + 1 + 4


async def test_another_address_is_unaffected(site: Site) -> None:
    _, _, _, base = site
    for _ in range(3):
        await get(base, "127.0.0.1")
    assert (await get(base, "127.0.0.1")).status == 429
    assert [(await get(base, "127.0.0.2")).status for _ in range(4)] == [200, 200, 200, 429]


async def test_x_forwarded_for_is_not_trusted(site: Site) -> None:
    _, _, _, base = site
    statuses = [(await get(base, **{"X-Forwarded-For": f"198.51.100.{i}"})).status
                for i in range(4)]
    assert statuses == [200, 200, 200, 429]


async def test_the_refusal_comes_before_the_body_is_read(site: Site) -> None:
    _, _, _, base = site
    for _ in range(3):
        await get(base)
    # Headers announcing a body that is never sent: the answer cannot have waited for it.
    port = int(base.split(":")[2].split("/")[0])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /fhir/Appointment HTTP/1.1\r\nHost: x\r\nContent-Type: "
                 b"application/fhir+json\r\nContent-Length: 100000\r\n\r\n{")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 429 "), head
    assert b"Retry-After: 20\r\n" in head


async def test_the_body_limit_still_holds(site: Site) -> None:
    _, _, _, base = site
    status, outcome = await post(base, json.dumps(appointment(comment="x" * 8000)).encode())
    assert status == 413 and issues(outcome)[0]["code"] == "too-long"
    status, outcome = await post(base, json.dumps(appointment()).encode())
    assert status == 201, outcome
    status, outcome = await post(base, json.dumps(appointment(comment="x" * 8000)).encode())
    assert status == 413  # the third request, within the rate: the body limit answers
    status, outcome = await post(base, json.dumps(appointment()).encode())
    assert status == 429 and issues(outcome)[0]["code"] == "throttled"


async def test_a_refusal_is_logged_once_without_the_address(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    _, _, clock, base = site
    caplog.set_level(logging.WARNING, logger="engine.listener")
    for _ in range(6):
        await get(base)
    clock.now += 20  # one more goes, then refused again: same window, no new line
    assert [(await get(base)).status for _ in range(2)] == [200, 429]
    lines = [r.getMessage() for r in caplog.records if "rate limit" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "ip 127.0.0.0/24 #" in lines[0] and "127.0.0.1" not in lines[0]
    assert "3/minute" in lines[0] and "api" in lines[0]
    clock.now += 60
    for _ in range(4):
        await get(base)
    assert len([r for r in caplog.records if "rate limit" in r.getMessage()]) == 2


async def test_no_limit_without_rate_limit(tmp_path: Path) -> None:
    port = free_port()
    routes = write_config(tmp_path, port, None)
    assert "rate_limit" not in routes.read_text()
    async with running(routes) as engine:
        listener = engine.listeners["api"]
        assert isinstance(listener, HttpListener) and not listener.limits.enabled
        base = f"http://127.0.0.1:{port}/fhir"
        assert {(await get(base)).status for _ in range(20)} == {200}


async def test_engine_check_names_a_bad_rate_limit(tmp_path: Path) -> None:
    routes = write_config(tmp_path, free_port(), {"per_ip": "100/day"})
    lines = routes.read_text().splitlines()
    (row,) = [i for i, line in enumerate(lines) if "100/day" in line]
    where = f"routes.yaml:{row + 1}:{lines[row].index('100/day') + 1}"
    result = await engine_cli("check", cwd=tmp_path)
    assert result.code == 1, result
    (line,) = result.lines
    assert line.endswith(f"{where}: expected a rate like 100/hour: a whole number of requests "
                         "per second, minute or hour, got '100/day'"), result.out


def test_the_shipped_booking_policy_loads_when_uncommented(tmp_path: Path) -> None:
    """routes.yaml carries the 100/hour policy as a comment; uncommented it must be valid."""
    from engine.config.model import Rate, RateLimit
    from tests.unit.config.support import ConfigDir

    shipped = (Path(__file__).resolve().parents[2] / "routes.yaml").read_text().splitlines()
    (policy,) = [line.strip().removeprefix("# ") for line in shipped if "rate_limit:" in line]
    cfg = ConfigDir(tmp_path).baseline()
    cfg.routes(f"""\
        listeners:
          booking-api:
            http: {{port: 8080, {policy}}}
        routes:
          booking-api: [siu-to-clinic-ehr]
        """)
    http = cfg.load().listeners["booking-api"].http
    assert http is not None
    assert http.rate_limit == RateLimit(per_ip=Rate(100, 3600.0, "100/hour"))
