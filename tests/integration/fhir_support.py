"""Helpers for tests of the FHIR listener: a configuration with an HTTP listener (and,
optionally, the MLLP one), requests over real HTTP, sample Appointments."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from multidict import CIMultiDict

from tests.integration.conftest import SAMPLES, write_channels

FHIR_JSON = "application/fhir+json"
# (status, headers, parsed JSON body or None)
Answer = tuple[int, CIMultiDict[str], Any]


def appointment(name: str = "booked", **changes: Any) -> dict[str, Any]:
    resource: dict[str, Any] = json.loads((SAMPLES / f"fhir_appointment_{name}.json").read_text())
    resource.update(copy.deepcopy(changes))
    return resource


def write_fhir_config(
    root: Path,
    http_port: int,
    channels: dict[str, dict[str, Any]],
    *,
    routes: dict[str, list[str]] | None = None,
    mllp_port: int | None = None,
    max_body: str = "64KiB",
    ack: str = "processed",
    auth: str = "none",
    serve: tuple[str, ...] = ("fhir",),
) -> Path:
    """FHIR semantics are tested with `auth: none` (development profile); `auth="required"`
    gives the production profile, as test_auth.py uses."""
    write_channels(root, channels)
    listeners: dict[str, Any] = {
        "api": {"http": {"port": http_port, "max_body_bytes": max_body, "auth": auth,
                         "serve": list(serve)},
                "ack": ack}
    }
    if mllp_port is not None:
        listeners["feed"] = {"mllp": {"port": mllp_port}}
    config = {
        "store": "sqlite:data/engine.db",
        "security": {"profile": "development" if auth == "none" else "production"},
        "listeners": listeners,
        "routes": routes or {"api": list(channels)},
    }
    (root / "routes.yaml").write_text(yaml.safe_dump(config))
    return root / "routes.yaml"


def archive_channel(directory: Path, **extra: Any) -> dict[str, Any]:
    """FHIR in, SIU out to a file folder: enough to see what a request turned into."""
    return {
        "accept": {"type": ["Appointment"]},
        "steps": [{"convert": "fhir_to_siu"}],
        "destinations": {"archive": {"file": {"directory": str(directory)}}},
        **extra,
    }


class FhirClient:
    """Requests to the engine's FHIR base; answers as (status, headers, JSON or None)."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        content_type: str = FHIR_JSON,
    ) -> Answer:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        sent = {"Content-Type": content_type, **(headers or {})} if data is not None else headers
        async with self.session.request(
            method, f"{self.base}{path}", data=data, headers=sent
        ) as response:
            text = await response.read()
            parsed = json.loads(text) if text else None
            return response.status, CIMultiDict(response.headers), parsed

    async def post(self, path: str, body: Any = None, **kw: Any) -> Answer:
        return await self.request("POST", path, body, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> Answer:
        return await self.request("PUT", path, body, **kw)

    async def get(self, path: str, **kw: Any) -> Answer:
        return await self.request("GET", path, **kw)


def issues(outcome: Any) -> list[dict[str, Any]]:
    assert outcome["resourceType"] == "OperationOutcome", outcome
    return list(outcome["issue"])


def expressions(outcome: Any) -> list[str]:
    return [e for issue in issues(outcome) for e in issue.get("expression", ())]
