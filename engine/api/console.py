"""The web console's files: the page shell and its static assets (engine/api/console/),
served on the listeners that serve the admin API, under /console/.

Rules kept: the files hold no data (every datum is fetched from /api with the caller's own
session), so they are public; what is served is exactly the files shipped in the package,
read once and looked up by name (a path cannot reach anything else); every answer carries a
Content-Security-Policy of `default-src 'self'` (no inline script, no other origin: the
console works without the internet and a stored value cannot run as script), refuses to be
framed, and sends no Referer.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from aiohttp import web

from engine.listeners.http_routes import Handler
from engine.security.identities import Identity

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none';"
                               " form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
    "Server": "engine",
}  # fmt: skip


@cache
def files() -> dict[str, tuple[bytes, str]]:
    """Name -> (content, content type) of every shipped console file."""
    found: dict[str, tuple[bytes, str]] = {}
    for entry in resources.files("engine.api").joinpath("console").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            found[entry.name] = (entry.read_bytes(), _TYPES[suffix])
    return found


def _file(name: str) -> web.Response:
    found = files().get(name)
    if found is None:
        return web.Response(status=404, text="no such file", headers=HEADERS)
    body, kind = found
    return web.Response(status=200, body=body, headers={**HEADERS, "Content-Type": kind})


async def _page(_: web.Request, __: Identity | None, ___: str) -> web.Response:
    return _file("index.html")


async def _asset(_: web.Request, __: Identity | None, name: str) -> web.Response:
    return _file(name)


def console_handlers() -> dict[str, Handler]:
    return {"console.page": _page, "console.asset": _asset}
