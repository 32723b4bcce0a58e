"""Request bodies of the admin API: JSON objects read and checked field by field, and the
message filter a search or a replay takes.

Rule kept: a body that is not what the endpoint takes raises BadRequest with a text naming
the field and what was expected, never quoting the value (it may be a patient id). The
filter's fields are MessageFilter's own, read from its type hints, so a filter the store
learns is a filter the API (and its OpenAPI document) takes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from datetime import datetime
from typing import Any

from aiohttp import web

from engine.store.base import MessageFilter

PAGE_DEFAULT = 50
PAGE_MAX = 500
MAX_IDS = 10_000  # delivery or message ids named in one request
MAX_ROW_ID = 2**63 - 1  # SQLite's largest rowid: a larger id names nothing


def row_id(text: str) -> int | None:
    """A path's id as a row id; None when it cannot name one."""
    if not text.isdigit() or len(text) > 19:
        return None
    value = int(text)
    return value if 1 <= value <= MAX_ROW_ID else None


class BadRequest(Exception):
    """The request body is not what the endpoint takes; the text says what is wrong."""


async def json_object(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise BadRequest("send application/json")
    try:
        body = json.loads(await request.read())
    except ValueError:
        raise BadRequest("the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object")
    return body


def only(body: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r} (expected {', '.join(sorted(known))})")


def text_of(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise BadRequest(f"{name}: expected a non-empty string")
    return value


def ids_of(body: dict[str, Any], name: str) -> list[int]:
    value = body.get(name, [])
    if (not isinstance(value, list) or len(value) > MAX_IDS
            or not all(type(v) is int and 0 < v <= MAX_ROW_ID for v in value)):
        raise BadRequest(f"{name}: expected a list of at most {MAX_IDS} positive integers")
    return list(dict.fromkeys(value))


def time_of(body: dict[str, Any], name: str) -> float | None:
    """Epoch seconds, or an ISO 8601 time with its offset (or Z)."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if moment.tzinfo is not None:
                return moment.timestamp()
    raise BadRequest(f"{name}: expected epoch seconds or an ISO 8601 time with an offset")


def int_of(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if type(value) is not int or not low <= value <= high:
        raise BadRequest(f"{name}: expected an integer from {low} to {high}")
    return value


def limit_of(body: dict[str, Any]) -> int:
    return int_of(body, "limit", PAGE_DEFAULT, 1, PAGE_MAX)


@functools.cache  # MessageFilter is fixed: its hints are read once, not on every search
def filter_fields() -> dict[str, Any]:
    """MessageFilter's fields a request may set, with the JSON type each takes."""
    hints = typing.get_type_hints(MessageFilter)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(MessageFilter):
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        fields[f.name] = args[0] if union and len(args) == 1 else hint
    return fields


def message_filter(body: dict[str, Any]) -> MessageFilter:
    """A MessageFilter from a search body: its fields by name; times as epoch seconds or
    ISO 8601; `limit` 1..PAGE_MAX (default PAGE_DEFAULT); `before_id` pages."""
    fields = filter_fields()
    only(body, set(fields))
    values: dict[str, Any] = {"limit": limit_of(body)}
    for name, kind in fields.items():
        if name == "limit" or body.get(name) is None:
            continue
        value = body[name]
        if name in ("since", "until"):
            values[name] = time_of(body, name)
        elif typing.get_origin(kind) is typing.Literal:
            if value not in typing.get_args(kind):
                raise BadRequest(f"{name}: expected one of {', '.join(typing.get_args(kind))}")
            values[name] = value
        elif kind is bool:
            if not isinstance(value, bool):
                raise BadRequest(f"{name}: expected true or false")
            values[name] = value
        elif kind is int:
            if type(value) is not int or not 1 <= value <= MAX_ROW_ID:
                raise BadRequest(f"{name}: expected a positive integer")
            values[name] = value
        else:
            values[name] = text_of(body, name)
    return MessageFilter(**values)
