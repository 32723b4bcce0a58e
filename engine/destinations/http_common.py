"""What the HTTP destinations (fhir, webhook) share: the peer's origin for reasons, response
bodies read up to a cap, `Retry-After` read safely, and the TLS context of their connector.

Rules: a reason names a peer only by `scheme://host[:port]` (a URL's path, query or userinfo
may hold credentials or identifiers); a response body is kept up to 64 KiB (it is stored
with the attempt, and a peer must not be able to fill memory); a `Retry-After` wait is never
negative, never longer than a day, and an unreadable header is ignored rather than fatal.
"""

from __future__ import annotations

import ssl
from datetime import UTC
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import aiohttp

from engine.security.tls import client_context

MAX_RETRY_AFTER = 86400.0
MAX_RESPONSE_BYTES = 64 * 1024


def origin(url: str) -> str:
    """`scheme://host[:port]` of an http(s) URL. The text is never quoted back in an error:
    it may hold credentials or a token."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("url is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("url must be an http:// or https:// URL with a host")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


async def read_capped(response: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < MAX_RESPONSE_BYTES:
        chunk = await response.content.read(MAX_RESPONSE_BYTES - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a `Retry-After` header: delta-seconds or an HTTP date; None if absent or
    unreadable (the retry policy then decides alone)."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return min(float(text), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" zones: RFC 5322 says UTC with no local meaning
        when = when.replace(tzinfo=UTC)
    return min(max(when.timestamp() - now, 0.0), MAX_RETRY_AFTER)


def endpoint(url: str) -> str:
    """`scheme://host:port` with the port always given (443 / 80 when the URL has none): how
    a TLS failure names the peer."""
    named = origin(url)
    scheme, rest = named.split("://", 1)
    if urlsplit(url).port is not None:
        return named
    return f"{named}:{443 if scheme == 'https' else 80}" if rest else named


def client_ssl(url: str, tls: ssl.SSLContext | None) -> ssl.SSLContext | bool:
    """What `aiohttp.TCPConnector(ssl=...)` gets: the destination's own context, else for an
    https:// URL the engine's default client context (system CAs, TLS 1.2 minimum)."""
    if tls is not None:
        return tls
    return client_context(None) if url.lower().startswith("https://") else True
