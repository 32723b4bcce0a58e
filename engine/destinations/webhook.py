"""The webhook destination: POSTs an event (JSON bytes the channel built) to a subscriber's URL,
signed per Standard Webhooks with `engine.webhooks`.

The rules it keeps:
- every attempt of one delivery carries the same `webhook-id` (`message_id`), so a
  receiver drops our retries of an event it already accepted; the timestamp and signatures are
  fresh per attempt. During key rotation each request is signed with both secrets, so the
  subscriber may switch to the new secret whenever it likes.
- 2xx is `Sent`; 408, 429, 5xx, timeouts and connection errors are `Retry` (with the
  subscriber's `Retry-After`); 410 Gone disables the endpoint: that send and every later one is
  a `Reject` without a request, and one alert line goes to the `engine.alerts` logger; any
  other status (3xx included: redirects are not followed, so a signed body never lands on a
  host nobody configured) is a `Reject`.
- an https:// URL is verified against the system CAs, or `tls.ca`; a certificate that fails
  is a `Retry` naming scheme://host:port and saying it was refused, nothing else.
- no reason or log line carries the URL's path, query or credentials, a secret or the body:
  the endpoint is named by scheme, host and port only.

The disabled state lives in this object: a reload or restart (a new configuration) enables the
endpoint again, which is the operator's way to say it is back.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from engine.config import env
from engine.config.errors import ConfigProblem
from engine.config.model import DestinationConfig
from engine.config.registry import CheckContext, Plugin
from engine.destinations.base import DeliveryMeta, Outcome, Reject, Retry, Sent
from engine.destinations.http_common import (
    client_ssl,
    endpoint,
    origin,
    read_capped,
    retry_after,
)
from engine.destinations.options import (
    MAX_CONNECTIONS,
    check_tls,
    client_tls,
    connections_option,
    timeout_option,
    tls_option,
)
from engine.security.alerts import LOGGER, alert_extra
from engine.security.tls import handshake_failed, refused
from engine.webhooks import WebhookSecret, headers

alerts = logging.getLogger(LOGGER)

DEFAULT_TIMEOUT = 10.0
DEFAULT_CONNECTIONS = 4
# What a subscriber says back is kept with the attempt for `engine show`; an endpoint that
# answers with a page of HTML must not fill the store.
# A Retry-After further out than this is a subscriber's mistake, not a plan; the retry policy
# still applies beyond it.
DISABLED_REASON = "endpoint disabled after 410"
USER_AGENT = "engine-webhooks/1"

_SECRET_OPTIONS = ("secret", "secret_next")
_RETRY_STATUSES = frozenset({408, 429})

PLUGIN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["url", "secret"],
    "properties": {
        "url": {
            "type": "string",
            "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]",
            "x-expected": "an http:// or https:// URL",
            "description": "The subscriber's endpoint; events are POSTed to it.",
        },
        "secret": {
            "type": "string",
            "minLength": 1,
            "x-expected": "a webhook secret whsec_<base64>, from ${NAME}",
            "description": "Signs every request (Standard Webhooks, whsec_<base64>).",
        },
        "secret_next": {
            "type": "string",
            "minLength": 1,
            "x-expected": "a webhook secret whsec_<base64>, from ${NAME}",
            "description": "During key rotation: requests are signed with both secrets.",
        },
        "timeout": timeout_option(
            DEFAULT_TIMEOUT, "How long one request may take, from connect to the last byte."
        ),
        "connections": connections_option(
            DEFAULT_CONNECTIONS, "Requests in flight at once (pooled keep-alive connections)."
        ),
        "tls": tls_option("For an https:// url: {ca, cert, key, verify}; without it the "
                          "system CAs verify the subscriber."),
    },
}


def _check(args: Any, ctx: CheckContext) -> list[ConfigProblem]:
    """Secrets that are set but are not `whsec_<base64>` of a usable length, found by
    `engine check` rather than at start-up. The message names the option, never the value.

    A secret's value must be written as exactly `${NAME}` (engine.config.env), and a reference
    that did not resolve is left as written, with the loader's "environment variable NAME is
    not set" at the same position. Such a value is not judged here: a second problem with the
    same cause would only send the reader looking for a second mistake."""
    if not isinstance(args, dict):
        return []
    problems = check_tls(args, ctx, "url")
    for option in _SECRET_OPTIONS:
        value = args.get(option)
        if not isinstance(value, str) or not value or env.is_secret_reference(value):
            continue
        try:
            WebhookSecret.parse(value)
        except ValueError as exc:
            problems.append(ConfigProblem(ctx.at((option,)), str(exc)))
    return problems


PLUGIN = Plugin(
    name="webhook",
    description="Signed JSON events POSTed to a subscriber (Standard Webhooks).",
    schema=PLUGIN_SCHEMA,
    check=_check,
)


def build(config: DestinationConfig) -> WebhookDestination:
    opts = config.options
    secrets = [_secret(config, option) for option in _SECRET_OPTIONS if opts.get(option)]
    return WebhookDestination(
        config.name,
        url=str(opts["url"]),
        secrets=secrets,
        timeout=float(opts.get("timeout", DEFAULT_TIMEOUT)),
        connections=int(opts.get("connections", DEFAULT_CONNECTIONS)),
        tls=client_tls(opts, config.name) if "tls" in opts else None,
    )


def _secret(config: DestinationConfig, option: str) -> WebhookSecret:
    try:
        return WebhookSecret.parse(str(config.options[option]))
    except ValueError as exc:
        raise ValueError(
            f"{config.pos}: webhook destination {config.name!r}: option {option!r}: {exc}"
        ) from None


class WebhookDestination:
    """Delivers to one URL. Safe to call `send` concurrently: up to `connections` requests are
    in flight, the others wait for a free connection in the session's pool."""

    def __init__(
        self,
        name: str,
        *,
        url: str,
        secrets: Sequence[WebhookSecret],
        timeout: float = DEFAULT_TIMEOUT,
        connections: int = DEFAULT_CONNECTIONS,
        clock: Callable[[], float] = time.time,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if not 1 <= connections <= MAX_CONNECTIONS:
            raise ValueError(f"connections must be 1..{MAX_CONNECTIONS}, got {connections}")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if not secrets:
            raise ValueError("a webhook destination needs at least one secret")
        # Scheme, host and port name the endpoint in reasons and logs: the path and query of
        # a webhook URL often hold a token.
        self.origin = origin(url)
        self.tls_peer = endpoint(url)
        self._ssl = client_ssl(url, tls)
        self.name = name
        self.concurrency = connections
        self.url = url
        self.timeout = timeout
        self.disabled = False
        self.requests = 0  # requests sent so far (observability and tests)
        self._secrets = tuple(secrets)
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def send(self, payload: bytes, meta: DeliveryMeta) -> Outcome:
        if self.disabled:
            return Reject(DISABLED_REASON, code="410")
        if self._closed:
            return Retry(f"destination {self.name} is closed")
        msg_id = message_id(meta.delivery_id, payload)
        signed = headers(self._secrets, msg_id, int(self._clock()), payload)
        signed["Content-Type"] = "application/json"
        signed["User-Agent"] = USER_AGENT
        session = self._open()
        self.requests += 1
        try:
            async with session.post(
                self.url, data=payload, headers=signed, allow_redirects=False
            ) as response:
                body = await read_capped(response)
                return self._judge(response.status, response.headers.get("Retry-After"), body)
        except TimeoutError:
            return Retry(f"no answer from {self.origin} within {self.timeout:g} s")
        except aiohttp.ClientConnectorCertificateError:
            return Retry(refused(self.tls_peer))
        except aiohttp.ClientSSLError:
            return Retry(handshake_failed(self.tls_peer))
        except aiohttp.ClientConnectorError as exc:
            # The OS reason only: the exception's own text repeats the URL.
            why = exc.os_error.strerror or type(exc.os_error).__name__
            return Retry(f"could not connect to {self.origin}: {why}")
        except aiohttp.ClientError as exc:
            return Retry(f"request to {self.origin} failed: {type(exc).__name__}")

    async def close(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _open(self) -> aiohttp.ClientSession:
        # Created on first use: a session belongs to the running event loop, and a
        # destination is built before the loop that will drive it exists.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency, ssl=self._ssl),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                # Ambient proxy settings are ignored: where events go is in the configuration.
                trust_env=False,
            )
        return self._session

    def _judge(self, status: int, retry_after_header: str | None, body: bytes) -> Outcome:
        code = str(status)
        if 200 <= status < 300:
            return Sent(code=code, response=body)
        if status == 410:
            self._disable(status)
            return Reject(f"410 Gone from {self.origin}: {DISABLED_REASON}", code, body)
        if status in _RETRY_STATUSES or status >= 500:
            after = (
                None
                if retry_after_header is None
                else retry_after(retry_after_header, self._clock())
            )
            return Retry(f"{status} from {self.origin}", code, body, after)
        if 300 <= status < 400:
            return Reject(f"{status} redirect from {self.origin} (not followed)", code, body)
        return Reject(f"{status} from {self.origin}", code, body)

    def _disable(self, status: int) -> None:
        # Requests in flight when the first 410 arrives may see one too: alert once.
        if self.disabled:
            return
        self.disabled = True
        alerts.warning(
            "ALERT webhook endpoint disabled: destination %s answered %d Gone; "
            "further deliveries are rejected until the configuration is reloaded",
            self.name,
            status,
            extra=alert_extra("webhook_disabled", destination=self.name, status=status),
        )


def message_id(delivery_id: int, payload: bytes) -> str:
    """The `webhook-id` of a delivery: the same on every retry, and unique beyond this store.
    A delivery id alone repeats after a store is restored or in another engine's store, and
    receivers that remember ids for days would drop those events as replays; the payload's
    digest (the event carries its own time and ids) tells them apart."""
    return f"msg_{delivery_id}_{hashlib.sha256(payload).hexdigest()[:16]}"


__all__ = ["PLUGIN", "WebhookDestination", "build", "message_id"]
