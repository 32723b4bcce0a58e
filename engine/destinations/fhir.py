"""The FHIR destination: delivers one R4B Appointment to a FHIR server by conditional update
on its identifier (`PUT [base]/Appointment?identifier=<system>|<value>`), so a replay updates
the same resource instead of creating a second one. With `mode: transaction` the same
conditional update goes inside a transaction Bundle POSTed to the base (for servers that take
writes as Bundles only); the entry's status in the transaction-response decides, and a 2xx
that names none is a retry (the write was not confirmed).

The rule it keeps: `Sent` only on a 2xx. 429, 5xx, 408, timeouts and dropped connections are
`Retry` (with the server's `Retry-After`, seconds or HTTP-date, as `after`); a 401 renews the
bearer token and tries once more at once, then is a `Retry`; any other answer is a `Reject`
that keeps the OperationOutcome as the response. Reasons name the server, the status and the
OperationOutcome issue codes only (a TLS failure: the server's scheme://host:port and that its
certificate was refused or the handshake failed): never the payload, its identifier, a
diagnostics text (it may quote the patient), a token or a secret.

One aiohttp session per destination, opened by the first send and closed by `close()`; its
connection pool holds `connections` connections, which is also `concurrency`. The token
client (when `auth` is set) shares that session.
"""

from __future__ import annotations

import json
import re
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import quote

import aiohttp
from yarl import URL

from engine.appointments.state import booking_identifier
from engine.auth.token_client import (
    ClientSecretAuth,
    SmartBackendAuth,
    TokenClient,
    TokenError,
)
from engine.config.model import DestinationConfig
from engine.config.registry import Plugin
from engine.config.units import PATH
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
from engine.security.tls import handshake_failed, refused

FHIR_JSON = "application/fhir+json"
DEFAULT_TIMEOUT = 30.0
DEFAULT_CONNECTIONS = 4
TOKEN_TIMEOUT = 10.0
# 408 is the server saying it timed out waiting for us: as transient as our own timeout.
_RETRY_STATUSES = frozenset({408, 429})
_ISSUE_CODE = re.compile(r"[a-z][a-z-]{0,63}")  # FHIR issue-type codes; anything else is dropped

_URL: dict[str, Any] = {"type": "string", "minLength": 1}
_CLIENT_CREDENTIALS: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "token_url", "client_id", "client_secret"],
    "properties": {
        "type": {"const": "client_credentials"},
        "token_url": _URL,
        "client_id": {"type": "string", "minLength": 1},
        "client_secret": {"type": "string", "minLength": 1},
        "scope": {"type": "string"},
    },
}
_SMART_BACKEND: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "token_url", "client_id", "private_key_file", "algorithm"],
    "properties": {
        "type": {"const": "smart_backend"},
        "token_url": _URL,
        "client_id": {"type": "string", "minLength": 1},
        "private_key_file": {
            "x-unit": PATH,
            "type": "string",
            "minLength": 1,
            "description": "PEM file of the client's private key (unencrypted).",
        },
        "algorithm": {"enum": ["RS384", "ES384"]},
        "key_id": {"type": "string", "minLength": 1},
        "scope": {"type": "string"},
    },
}

PLUGIN = Plugin(
    name="fhir",
    description="FHIR R4B Appointment by conditional update on its identifier; 2xx is success.",
    schema={
        "type": "object",
        "additionalProperties": False,
        "required": ["base_url"],
        "properties": {
            "mode": {
                "enum": ["update", "transaction"],
                "description": "update (default): PUT [base]/Appointment?identifier=...; "
                "transaction: the same conditional update inside a transaction Bundle "
                "POSTed to [base], for servers that take writes as Bundles only.",
            },
            "base_url": {
                "type": "string",
                "pattern": r"^https?://",
                "x-expected": "a FHIR base URL like https://fhir.example.org/r4",
            },
            "timeout": timeout_option(
                DEFAULT_TIMEOUT, "Longest a request may take, answer included."
            ),
            "connections": connections_option(DEFAULT_CONNECTIONS, "Requests in flight at once."),
            "auth": {
                "type": "object",
                "required": ["type"],
                "properties": {"type": {"enum": ["client_credentials", "smart_backend"]}},
                # if/then/else rather than oneOf: errors point into the branch the type names.
                "if": {"properties": {"type": {"const": "smart_backend"}}},
                "then": _SMART_BACKEND,
                "else": _CLIENT_CREDENTIALS,
            },
            "tls": tls_option("For an https:// base_url: {ca, cert, key, verify}; without it "
                              "the system CAs verify the server."),
        },
    },
    check=lambda args, ctx: check_tls(args, ctx, "base_url"),
)


def build(config: DestinationConfig) -> FhirDestination:
    opts = config.options
    raw_auth = opts.get("auth")
    return FhirDestination(
        config.name,
        base_url=str(opts["base_url"]),
        timeout=float(opts.get("timeout", DEFAULT_TIMEOUT)),
        connections=int(opts.get("connections", DEFAULT_CONNECTIONS)),
        auth=auth_from_options(raw_auth) if isinstance(raw_auth, dict) else None,
        mode="transaction" if opts.get("mode") == "transaction" else "update",
        tls=client_tls(opts, config.name) if "tls" in opts else None,
    )


def auth_from_options(opts: dict[str, Any]) -> ClientSecretAuth | SmartBackendAuth:
    """The token client settings for a validated `auth` mapping. The private key file is read
    here, so a missing or unreadable key shows at start-up, not at the first delivery."""
    if opts["type"] == "smart_backend":
        path = Path(str(opts["private_key_file"]))
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read private_key_file {path}: {exc.strerror}") from None
        return SmartBackendAuth(
            token_url=str(opts["token_url"]),
            client_id=str(opts["client_id"]),
            private_key_pem=pem,
            algorithm=cast(Literal["RS384", "ES384"], opts["algorithm"]),
            key_id=str(opts.get("key_id", "")),
            scope=str(opts.get("scope", "system/Appointment.write")),
        )
    return ClientSecretAuth(
        token_url=str(opts["token_url"]),
        client_id=str(opts["client_id"]),
        client_secret=str(opts["client_secret"]),
        scope=str(opts.get("scope", "")),
    )


class FhirDestination:
    """Delivers Appointments to one FHIR base URL. Safe to call `send` concurrently."""

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        timeout: float = DEFAULT_TIMEOUT,
        connections: int = DEFAULT_CONNECTIONS,
        auth: ClientSecretAuth | SmartBackendAuth | None = None,
        clock: Callable[[], float] = time.time,
        mode: Literal["update", "transaction"] = "update",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if not 1 <= connections <= MAX_CONNECTIONS:
            raise ValueError(f"connections must be 1..{MAX_CONNECTIONS}, got {connections}")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.name = name
        self.concurrency = connections
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.auth = auth
        self.mode = mode
        self.peer = origin(base_url)
        self.tls_peer = endpoint(base_url)
        self._ssl = client_ssl(base_url, tls)
        self._token_ssl = client_ssl(auth.token_url, tls) if auth is not None else True
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._tokens: TokenClient | None = None
        self._closed = False
        if isinstance(auth, SmartBackendAuth):
            # Loads and checks the key now (wrong curve, short RSA key): a configuration
            # error at start-up. It opens nothing, so there is nothing to close.
            TokenClient(auth)

    async def send(self, payload: bytes, meta: DeliveryMeta) -> Outcome:
        if self._closed:
            return Retry(f"destination {self.name} is closed")
        target = conditional_url(self.base_url, payload)
        if isinstance(target, Reject):
            return target
        method, url, body = "PUT", target, payload
        if self.mode == "transaction":
            method, url, body = "POST", URL(self.base_url), transaction_bundle(target, payload)
        session, tokens = self._open()
        token = await self._token(tokens)
        if isinstance(token, Retry):
            return token
        answer = await self._request(session, method, url, body, token)
        if isinstance(answer, Retry):
            return answer
        if answer[0] == 401 and tokens is not None and token is not None:
            # The token may have been revoked or expired early: renew once, at once.
            tokens.invalidate(token)
            token = await self._token(tokens)
            if isinstance(token, Retry):
                return token
            answer = await self._request(session, method, url, body, token)
            if isinstance(answer, Retry):
                return answer
        status, response, after = answer
        if self.mode == "transaction" and 200 <= status < 300:
            status = entry_status(response)
        return self._judge(status, response, after, renewed=tokens is not None)

    async def close(self) -> None:
        self._closed = True
        tokens, self._tokens = self._tokens, None
        if tokens is not None:
            await tokens.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _open(self) -> tuple[aiohttp.ClientSession, TokenClient | None]:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.concurrency, ssl=self._ssl)
            self._session = aiohttp.ClientSession(connector=connector)
            if self.auth is not None:
                # Its own session: slow FHIR requests holding every pooled connection must
                # not keep a token renewal waiting.
                # The token endpoint gets the destination's TLS settings (its `ca`, its client
                # certificate) when it has some, else the engine's defaults for https.
                self._tokens = TokenClient(
                    self.auth,
                    timeout=min(self.timeout, TOKEN_TIMEOUT),
                    ssl=self._token_ssl,
                )
        return self._session, self._tokens

    async def _token(self, tokens: TokenClient | None) -> str | Retry | None:
        if tokens is None:
            return None
        try:
            return await tokens.token()
        except TokenError as exc:
            # Even a refused client is a Retry: bad credentials are not the payload's fault,
            # and once an admin fixes them the same payload goes through. The text of a
            # TokenError names the client and token URL only.
            return Retry(f"no access token for {self.peer}: {exc}", code=exc.error)

    async def _request(
        self,
        session: aiohttp.ClientSession,
        method: str,
        target: URL,
        payload: bytes,
        token: str | None,
    ) -> tuple[int, bytes, str | None] | Retry:
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
        if method == "POST":
            # A transaction-response with the resources in it could pass the 64 KiB kept of
            # an answer, and then its entry status could not be read.
            headers["Prefer"] = "return=minimal"
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with session.request(
                method,
                target,
                data=payload,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
            ) as response:
                body = await read_capped(response)
                return response.status, body, response.headers.get("Retry-After")
        except TimeoutError:
            return Retry(f"no answer from {self.peer} within {self.timeout:g} s")
        except aiohttp.ClientConnectorCertificateError:
            return Retry(refused(self.tls_peer))
        except aiohttp.ClientSSLError:
            return Retry(handshake_failed(self.tls_peer))
        except aiohttp.ClientConnectorError:
            return Retry(f"could not connect to {self.peer}")
        except aiohttp.ClientError as exc:
            # The exception text may hold the request URL, whose query is the identifier.
            return Retry(f"request to {self.peer} failed ({type(exc).__name__})")

    def _judge(
        self, status: int, body: bytes, retry_after_header: str | None, *, renewed: bool
    ) -> Outcome:
        code = str(status)
        if 200 <= status < 300:
            return Sent(code=code, response=body)
        issues = issue_codes(body)
        what = f"HTTP {status} from {self.peer}" + (f" (issues: {issues})" if issues else "")
        if status == 401:
            # Credentials, not the payload: once they are fixed the same payload goes through.
            how = "after renewing the token" if renewed else "and no auth is configured"
            return Retry(f"{what} {how}", code=code, response=body)
        if status in _RETRY_STATUSES or status >= 500:
            after = (
                None
                if retry_after_header is None
                else retry_after(retry_after_header, self._clock())
            )
            return Retry(what, code=code, response=body, after=after)
        return Reject(what, code=code, response=body)


def conditional_url(base_url: str, payload: bytes) -> URL | Reject:
    """`[base]/Appointment?identifier=<system>|<value>` for the payload's placer identifier
    (typed PLAC), else its first identifier with a value; a Reject when there is none."""
    try:
        resource = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return Reject("payload is not JSON")
    if not isinstance(resource, dict) or resource.get("resourceType") != "Appointment":
        return Reject("payload is not a FHIR Appointment")
    identifier = pick_identifier(resource.get("identifier"))
    if identifier is None:
        return Reject("Appointment has no identifier with a value to update it by")
    system, value = identifier
    # `|value` (empty system) rather than `value`: a bare value would match any system and
    # could overwrite another scheduler's appointment.
    token = quote(f"{system}|{value}", safe="")
    return URL(f"{base_url.rstrip('/')}/Appointment?identifier={token}", encoded=True)


def transaction_bundle(target: URL, payload: bytes) -> bytes:
    """A transaction Bundle holding the conditional update of `target` (relative to the
    base, as Bundle entries name their requests)."""
    path = target.path.rstrip("/").rsplit("/", 1)[-1]
    entry = b'{"request":{"method":"PUT","url":' + json.dumps(
        f"{path}?{target.raw_query_string}").encode() + b'},"resource":' + payload + b"}"
    return b'{"resourceType":"Bundle","type":"transaction","entry":[' + entry + b"]}"


def entry_status(body: bytes) -> int:
    """The HTTP status of a transaction-response's single entry (`"201 Created"` → 201); a
    2xx Bundle that does not say is a 502: the server did not confirm the write."""
    try:
        bundle = json.loads(body)
        status = bundle["entry"][0]["response"]["status"]
        return int(str(status).split(" ", 1)[0])
    except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError):
        return 502


def pick_identifier(identifiers: Any) -> tuple[str, str] | None:
    """(system, value) of the appointment's booking identifier, the one its state is kept by
    (placer, else filler, else the first), so a replay updates the same resource."""
    chosen = booking_identifier(identifiers)
    if chosen is None:
        return None
    system = chosen.get("system")
    return (system if isinstance(system, str) else ""), chosen["value"]



def issue_codes(body: bytes) -> str:
    """The OperationOutcome's issue codes, comma-separated and de-duplicated; "" when the body
    is no OperationOutcome. Only well-formed codes: diagnostics may quote PHI."""
    try:
        outcome = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return ""
    issues = outcome.get("issue")
    codes: list[str] = []
    for issue in issues if isinstance(issues, list) else ():
        code = issue.get("code") if isinstance(issue, dict) else None
        if isinstance(code, str) and _ISSUE_CODE.fullmatch(code) and code not in codes:
            codes.append(code)
    return ",".join(codes)


