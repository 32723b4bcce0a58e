"""Option schemas several destination types share (`connections`, `timeout`, `tls`), so they
read and are checked the same way everywhere."""

from __future__ import annotations

import ssl
from typing import Any

from engine.config import semantic
from engine.config.errors import ConfigProblem
from engine.config.model import ClientTls
from engine.config.registry import CheckContext
from engine.config.schema import CLIENT_TLS
from engine.config.units import DURATION
from engine.security.tls import client_context

MAX_CONNECTIONS = 64


def connections_option(default: int, description: str) -> dict[str, Any]:
    return {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_CONNECTIONS,
        "default": default,
        "x-expected": f"a number of connections 1..{MAX_CONNECTIONS}",
        "description": description,
    }


def timeout_option(default: float, description: str) -> dict[str, Any]:
    return {
        "x-unit": DURATION,
        "exclusiveMinimum": 0,
        "default": default,
        "description": description,
    }


def tls_option(description: str) -> dict[str, Any]:
    return CLIENT_TLS | {"description": description}


def check_tls(args: Any, ctx: CheckContext, url_option: str | None = None) -> list[ConfigProblem]:
    """Problems with a destination's `tls:` files (named by option, never by content); with
    `url_option`, `tls` beside a plain http:// URL is a problem too (it would do nothing)."""
    if not isinstance(args, dict) or not isinstance(args.get("tls"), dict):
        return []
    problems: list[ConfigProblem] = []
    if url_option is not None and str(args.get(url_option, "")).lower().startswith("http://"):
        problems.append(ConfigProblem(
            ctx.at(("tls",)), f"tls applies to https:// URLs: {url_option} starts with http://"
        ))
    semantic.client_tls(args["tls"], ctx.at, problems)
    return problems


def client_tls(options: dict[str, Any], who: str) -> ssl.SSLContext:
    """The client context of a destination (system CAs when `tls` is absent); warns at
    start-up when `verify: false`."""
    spec = options.get("tls")
    tls = None
    if isinstance(spec, dict):
        tls = ClientTls(ca=spec.get("ca"), cert=spec.get("cert"), key=spec.get("key"),
                        verify=bool(spec.get("verify", True)))
    return client_context(tls, who=f"destination {who}")
