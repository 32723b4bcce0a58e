"""Matching a request's method and path against the permission table's HTTP routes.

A template's `{base}` is the listener's FHIR base path and `{id}` any one path segment (an
id the engine does not hold is the handler's 404). A path that matches no template is a 404;
one that matches with another method is a 405 naming the methods it has."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

from engine.security.identities import Identity
from engine.security.permissions import Route

# What serves a route: the request, who made it (None on a public route), the path's {id}.
Handler = Callable[[web.Request, Identity | None, str], Awaitable[web.Response]]

_ID = "[^/]+"


class RouteTable:
    def __init__(self, routes: Iterable[Route], base: str) -> None:
        self._routes = [(r, _pattern(r.path.replace("{base}", base))) for r in routes]

    def match(self, method: str, path: str) -> tuple[Route, str] | str | None:
        """(route, its `{id}` or ""), or the allowed methods joined (405), or None (404)."""
        path = path.rstrip("/") or "/"
        methods: list[str] = []
        for route, pattern in self._routes:
            found = pattern.fullmatch(path)
            if found is None:
                continue
            if route.method == method:
                return route, found.groupdict().get("id") or ""
            methods.append(route.method)
        return ", ".join(sorted(set(methods))) if methods else None


def _pattern(template: str) -> re.Pattern[str]:
    template = template.rstrip("/") or "/"
    return re.compile(re.escape(template).replace(re.escape("{id}"), f"(?P<id>{_ID})"))
