"""`security:` of routes.yaml (profile, lockout, alerts, at-rest keys) and `timezone:`,
checked and typed.

The block is checked on its own against `schema.SECURITY` (routes.yaml's schema only says it
is a mapping), as listeners are, so `engine run` (through `load`) and the commands that need
only these settings (`engine users`, the audit hook of `messages` / `show`, via
`routes_security`) read it the same way and report the same problems at file:line:column.
Rules beyond the schema: an alert webhook's secret is a usable `whsec_` secret and its `tls:`
files load; `hours.from` and `hours.to` differ; `hours` are read in routes.yaml's `timezone`.
"""

from __future__ import annotations

import os
import sys
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.config import env, semantic, validation, yaml_nodes
from engine.config.encryption import key_ring
from engine.config.errors import ConfigError, ConfigProblem
from engine.config.model import (
    AccessHours,
    AlertsConfig,
    AlertWebhook,
    BurstWatch,
    LockoutConfig,
    Pos,
    SecurityConfig,
)
from engine.config.schema import SECURITY, WEEKDAYS
from engine.config.yaml_nodes import Doc


def timezone(doc: Doc | None, problems: list[ConfigProblem]) -> str:
    """`timezone:` of routes.yaml, checked against the zone database (UTC when absent)."""
    data = doc.data if doc is not None else None
    name = data.get("timezone", "UTC") if isinstance(data, dict) else "UTC"
    if not isinstance(name, str):
        return "UTC"  # the routes schema reported it
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        assert doc is not None
        problems.append(
            ConfigProblem(
                doc.at(("timezone",)),
                f"unknown time zone {name!r}: expected an IANA name like Europe/Berlin",
            )
        )
        return "UTC"
    return name


def security_config(
    doc: Doc | None, root: Path, zone: str, problems: list[ConfigProblem]
) -> SecurityConfig:
    """The `security:` block of routes.yaml (defaults when absent); problems are appended."""
    data = doc.data if doc is not None else None
    spec = data.get("security") if isinstance(data, dict) else None
    if doc is None or spec is None:
        return SecurityConfig()
    path = ("security",)
    spec, found = validation.check(doc, path, spec, SECURITY, root)
    problems.extend(found)
    if found or not isinstance(spec, dict):
        return SecurityConfig()
    lockout = LockoutConfig(**spec.get("lockout", {}))
    alerts = _alerts(doc, spec.get("alerts", {}), zone, problems)
    encryption = key_ring(doc, spec.get("encryption"), root, problems)
    return SecurityConfig(profile=spec.get("profile", "production"), lockout=lockout,
                          alerts=alerts, encryption=encryption)  # fmt: skip


def _alerts(
    doc: Doc, spec: Mapping[str, Any], zone: str, problems: list[ConfigProblem]
) -> AlertsConfig:
    path = ("security", "alerts")
    webhook = None
    if "webhook" in spec:
        webhook = _webhook(doc, (*path, "webhook"), spec["webhook"], problems)
    burst = BurstWatch(**spec.get("burst", {}))
    hours = None
    if "hours" in spec:
        written = spec["hours"]
        start, end = _minutes(written["from"]), _minutes(written["to"])
        if start == end:
            problems.append(
                ConfigProblem(
                    doc.at((*path, "hours", "to")),
                    'expected a time other than from: (write from: "00:00" and to: "23:59" '
                    "for the whole day, or leave hours out)",
                )
            )
        days = tuple(sorted(WEEKDAYS.index(d) for d in written.get("days", WEEKDAYS)))
        hours = AccessHours(start, end, days, zone)
    return AlertsConfig(webhook=webhook, burst=burst, hours=hours)


def _webhook(
    doc: Doc, path: tuple[str, ...], spec: Mapping[str, Any], problems: list[ConfigProblem]
) -> AlertWebhook:
    from engine.webhooks import WebhookSecret

    secret = str(spec["secret"])
    # An unresolved `${NAME}` was reported by the reader; judging it again would be noise.
    if not env.is_secret_reference(secret):
        try:
            WebhookSecret.parse(secret)
        except ValueError as exc:
            problems.append(ConfigProblem(doc.at((*path, "secret")), str(exc)))
    tls = None
    if "tls" in spec:
        tls = semantic.client_tls(spec["tls"], lambda where: doc.at((*path, *where)), problems)
    return AlertWebhook(url=str(spec["url"]), secret=secret, tls=tls)


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def routes_security(routes_file: Path, environ: Mapping[str, str] | None = None) -> SecurityConfig:
    """The `security:` settings of a configuration, read from routes.yaml alone (as
    `store_url` reads the store), so that commands needing only them keep working while a
    channel file is broken. Raises ConfigError listing the problems of routes.yaml's
    `security:` and `timezone:`."""
    read: list[ConfigProblem] = []
    doc = yaml_nodes.read(routes_file, os.environ if environ is None else environ, read)
    if doc is None:
        raise ConfigError(read or [ConfigProblem(Pos(routes_file, 1, 1), "expected YAML")])
    # Of what the reader found (an unset variable, a key written twice), only what lies in
    # these settings stops the command: a listener's unset port is `engine run`'s business.
    spans = _spans(doc, ("security", "timezone"))
    problems = [p for p in read if any(p.pos.line in span for span in spans)]
    root = routes_file.resolve().parent
    config = security_config(doc, root, timezone(doc, problems), problems)
    if problems:
        raise ConfigError(problems)
    return config


def _spans(doc: Doc, keys: tuple[str, ...]) -> list[range]:
    """The lines of the top-level entries `keys`: from each key to the next top-level key."""
    starts = sorted(pos.line for path, pos in doc.keys.items() if len(path) == 1)
    spans: list[range] = []
    for key in keys:
        pos = doc.keys.get((key,))
        if pos is not None:
            after = [line for line in starts if line > pos.line]
            spans.append(range(pos.line, after[0] if after else sys.maxsize))
    return spans
