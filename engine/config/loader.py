"""`load(routes.yaml)`: every configuration file read, checked and turned into `EngineConfig`.

The configuration root is the folder of routes.yaml; channels are `channels/*.yaml` (file stem
= channel name) and mapping tables `transforms/tables/*.yaml` (file stem = table name). The
rule: all files are read and every problem in every file is collected (YAML syntax, schema,
plugin arguments, cross references) before one `ConfigError` is raised, so an analyst sees
the whole list at once; a configuration is returned only when there is none.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from engine.config import plugins, semantic, validation, yaml_nodes
from engine.config.errors import ConfigError, ConfigProblem
from engine.config.model import (
    ChannelConfig,
    EngineConfig,
    HttpListenerConfig,
    ListenerConfig,
    MllpListenerConfig,
    Pos,
    ReloadConfig,
    SecurityConfig,
    Table,
)
from engine.config.registry import Plugin
from engine.config.schema import CHANNEL, LISTENER, NAME_PATTERN, ROUTES, TABLE
from engine.config.security import security_config
from engine.config.security import timezone as read_timezone
from engine.config.yaml_nodes import Doc

DEFAULT_STORE = "sqlite:data/engine.db"
_STEPS_MODULE = "engine.pipeline.steps"
_DESTINATIONS_MODULE = "engine.destinations"


def load(
    routes_path: Path,
    *,
    steps: Mapping[str, Plugin] | None = None,
    destinations: Mapping[str, Plugin] | None = None,
) -> EngineConfig:
    """The checked configuration rooted at `routes_path`; raises ConfigError listing every
    problem. Without explicit registries, the engine's own steps and destinations are used."""
    loading = _Loading(
        Path(os.path.abspath(routes_path)),
        dict(os.environ),
        steps if steps is not None else _registry(_STEPS_MODULE),
        destinations if destinations is not None else _registry(_DESTINATIONS_MODULE),
    )
    return loading.run()


def _registry(module: str) -> Mapping[str, Plugin]:
    # Imported on demand: the registries import the pipeline, which imports this package.
    return cast(Mapping[str, Plugin], importlib.import_module(module).REGISTRY)


class _Loading:
    def __init__(
        self,
        routes_file: Path,
        environ: dict[str, str],
        steps: Mapping[str, Plugin],
        destinations: Mapping[str, Plugin],
    ) -> None:
        self.routes_file = routes_file
        self.root = routes_file.parent
        self.environ = environ
        self.steps = steps
        self.destinations = destinations
        self.problems: list[ConfigProblem] = []

    def run(self) -> EngineConfig:
        routes_doc = yaml_nodes.read(self.routes_file, self.environ, self.problems)
        tables = self._tables()
        scope = plugins.Scope(self.root, tables)
        channel_files = self._files(self.root / "channels", "channel")
        channels: dict[str, ChannelConfig] = {}
        named: list[tuple[str, str, Pos]] = []
        for name, file in channel_files.items():
            channel = self._channel(name, file, scope, named)
            if channel is not None:
                channels[name] = channel
        semantic.unique_destinations(named, self.problems)
        timezone = self._timezone(routes_doc)
        security = self._security(routes_doc, timezone)
        store, listeners, routes, reload = self._routes(
            routes_doc, set(channel_files), security
        )
        if self.problems:
            raise ConfigError(list(dict.fromkeys(self.problems)))
        return EngineConfig(
            root=self.root,
            routes_file=self.routes_file,
            store=store,
            listeners=listeners,
            routes=routes,
            channels=channels,
            tables=tables,
            timezone=timezone,
            security=security,
            reload=reload,
        )

    def _security(self, doc: Doc | None, zone: str) -> SecurityConfig:
        return security_config(doc, self.root, zone, self.problems)

    def _timezone(self, doc: Doc | None) -> str:
        return read_timezone(doc, self.problems)

    def _files(self, folder: Path, kind: str) -> dict[str, Path]:
        """`<stem> -> file` for the folder's .yaml files, sorted by name."""
        found: dict[str, Path] = {}
        if not folder.is_dir():
            return found
        for file in sorted(folder.iterdir()):
            if file.name.startswith("."):
                continue  # editor lock and swap files, hidden on purpose
            if file.suffix == ".yml":
                self._problem(Pos(file, 1, 1), f"{kind} files end in .yaml: rename it to "
                                               f"{file.stem}.yaml")
            if file.suffix != ".yaml" or not file.is_file():
                continue
            if kind == "channel" and not _is_name(file.stem):
                self._problem(Pos(file, 1, 1), "expected a channel file name made of letters, "
                                               f"digits, '_' and '-', got '{file.name}'")
                continue
            found[file.stem] = file
        return found

    def _tables(self) -> dict[str, Table]:
        tables: dict[str, Table] = {}
        for name, file in self._files(self.root / "transforms" / "tables", "table").items():
            doc = yaml_nodes.read(file, self.environ, self.problems)
            if doc is None:
                continue
            # An empty file is an empty table, as `{}` would be.
            data = doc.data if doc.data is not None else {}
            data, found = validation.check(doc, (), data, TABLE, self.root)
            self.problems.extend(found)
            if found or not isinstance(data, dict):
                continue
            rows = {str(key): dict(row) for key, row in data.items()}
            columns = frozenset(column for row in rows.values() for column in row)
            tables[name] = Table(name=name, file=file, rows=rows, columns=columns)
        return tables

    def _channel(
        self, name: str, file: Path, scope: plugins.Scope, named: list[tuple[str, str, Pos]]
    ) -> ChannelConfig | None:
        doc = yaml_nodes.read(file, self.environ, self.problems)
        if doc is None:
            return None
        data, found = validation.check(doc, (), doc.data, CHANNEL, self.root)
        self.problems.extend(found)
        if not isinstance(data, dict):
            return None
        entries = data.get("destinations")
        entries = entries if isinstance(entries, dict) else {}
        named.extend((name, dest, doc.key_at(("destinations", dest))) for dest in entries)
        condition = (
            semantic.filter_condition(doc, data["filter"], self.problems)
            if "filter" in data
            else None
        )
        steps = plugins.steps(doc, data.get("steps"), self.steps, scope, self.problems)
        destinations = plugins.destinations(
            doc, name, entries, self.destinations, scope, self.problems
        )
        tests = semantic.channel_tests(doc, data.get("tests"), set(entries), self.problems)
        accept = _mapping(data.get("accept")).get("type", ())
        accept_types = (accept,) if isinstance(accept, str) else tuple(accept)
        raw_steps = data.get("steps")
        if not found and len(steps) == len(raw_steps if isinstance(raw_steps, list) else []):
            # Only over a channel whose every step was understood: a walk with gaps guesses.
            from engine.config import flow

            self.problems.extend(flow.check(
                accept_types, condition, steps, self.steps,
                [(d.order_by, doc.at(("destinations", d.name, "order_by")))
                 for d in destinations if d.order_by is not None],
            ))
        window = _mapping(data.get("dedupe")).get("window", 86400.0)
        conflicts = data.get("conflicts", "flag")
        description = data.get("description", "")
        return ChannelConfig(
            name=name,
            file=file,
            pos=doc.at(()),
            description=description if isinstance(description, str) else "",
            accept_types=accept_types,
            filter=condition,
            steps=tuple(steps),
            destinations=tuple(destinations),
            dedupe_window=window if isinstance(window, float) else 86400.0,
            tests=tuple(tests),
            conflicts="reject" if conflicts == "reject" else "flag",
        )

    def _routes(
        self, doc: Doc | None, channels: set[str], security: SecurityConfig
    ) -> tuple[str, dict[str, ListenerConfig], dict[str, tuple[str, ...]], ReloadConfig]:
        if doc is None:
            return DEFAULT_STORE, {}, {}, ReloadConfig()
        data, found = validation.check(doc, (), doc.data, ROUTES, self.root)
        self.problems.extend(found)
        data = _mapping(data)
        store = self._store(doc, data.get("store", DEFAULT_STORE))
        raw_listeners = _mapping(data.get("listeners"))
        listeners: dict[str, ListenerConfig] = {}
        for name, spec in raw_listeners.items():
            listener = self._listener(doc, name, spec, security)
            if listener is not None:
                listeners[name] = listener
        semantic.listener_ports(listeners.values(), self.problems)
        routing = _mapping(data.get("routes"))
        semantic.routes(doc, raw_listeners, routing, channels, self.problems)
        routes = {
            listener: tuple(n for n in names if isinstance(n, str))
            for listener, names in routing.items()
            if isinstance(names, list)
        }
        # Checked by the routes schema above: a bad block is reported there, read as default.
        reload = _mapping(data.get("reload")) if not found else {}
        return store, listeners, routes, ReloadConfig(**reload)

    def _listener(
        self, doc: Doc, name: str, spec: Any, security: SecurityConfig
    ) -> ListenerConfig | None:
        if not isinstance(spec, dict):
            return None  # the routes schema reported it
        path = ("listeners", name)
        spec, found = validation.check(doc, path, spec, LISTENER, self.root)
        self.problems.extend(found)
        if found:
            return None
        kinds = [k for k in ("mllp", "http") if k in spec]
        if len(kinds) != 1:
            self._problem(doc.at(path), "expected exactly one of mllp: or http:")
            return None
        if "http" in spec and spec.get("ack") == "delivered":
            self._problem(
                doc.at((*path, "ack")), "expected commit or processed: delivered is for mllp"
            )
            return None
        options = {k: v for k, v in spec.items() if k not in ("mllp", "http")}
        [kind] = kinds
        block = dict(spec[kind])
        if kind == "http":
            block["rate_limit"] = semantic.rate_limit(doc, (*path, kind), block, self.problems)
            if block.get("auth") == "none" and security.production:
                self._problem(doc.at((*path, kind, "auth")), "auth: none is for the "
                              "development profile only (security: {profile: development})")
            if "serve" in block:
                block["serve"] = tuple(block["serve"])
        block["tls"] = semantic.listener_tls(doc, (*path, kind), block, self.problems)
        return ListenerConfig(
            name=name,
            pos=doc.key_at(path),
            mllp=MllpListenerConfig(**block) if kind == "mllp" else None,
            http=HttpListenerConfig(**block) if kind == "http" else None,
            **options,
        )

    def _store(self, doc: Doc, text: Any) -> str:
        """`sqlite:<path>` made absolute against the root; `postgresql://...` as written."""
        if not isinstance(text, str):
            return DEFAULT_STORE  # the routes schema reported it
        if text == "sqlite:":
            self._problem(doc.at(("store",)), "expected a database file after sqlite:")
            return text
        if text.startswith(("sqlite:", "postgresql://", "postgres://")):
            return resolve_store(text, self.root)
        # Credentials may sit in a URL: name only its scheme.
        written = text.split(":", 1)[0] + ":..." if "@" in text else text
        shown = "" if doc.is_secret(("store",)) else f", got '{written}'"
        self._problem(doc.at(("store",)),
                      f"expected sqlite:<path> or postgresql://...{shown}")
        return text

    def _problem(self, pos: Pos, message: str) -> None:
        self.problems.append(ConfigProblem(pos, message))


def resolve_store(text: str, root: Path) -> str:
    """`sqlite:<path>` made absolute against the configuration root (`~` expanded); other
    URLs as written. The engine and the CLI both resolve the store through here."""
    if not text.startswith("sqlite:"):
        return text
    path = text.removeprefix("sqlite:")
    if path in ("", ":memory:"):
        return text
    file = Path(path).expanduser()
    return f"sqlite:{file if file.is_absolute() else root / file}"


def store_url(routes_file: Path, environ: Mapping[str, str] | None = None) -> str:
    """The store of a configuration, read from routes.yaml alone: inspection commands keep
    working while a channel file is broken. Raises ConfigError when routes.yaml itself
    cannot be read or its `store` is not text."""
    store = _routes_setting(routes_file, environ, ("store",), DEFAULT_STORE)
    return resolve_store(store, routes_file.resolve().parent)


def security_profile(routes_file: Path, environ: Mapping[str, str] | None = None) -> str:
    """`security.profile` of routes.yaml alone (production when absent), as `store_url`."""
    profile = _routes_setting(routes_file, environ, ("security", "profile"), "production")
    if profile not in ("production", "development"):
        raise ConfigError([ConfigProblem(Pos(routes_file, 1, 1),
                                         "security.profile: expected production or development")])
    return profile


def _routes_setting(
    routes_file: Path, environ: Mapping[str, str] | None, path: tuple[str, ...], default: str
) -> str:
    problems: list[ConfigProblem] = []
    doc = yaml_nodes.read(routes_file, os.environ if environ is None else environ, problems)
    value: Any = doc.data if doc is not None else None
    for key in path:
        value = value.get(key, default) if isinstance(value, dict) else default
    if doc is None or not isinstance(value, str):
        raise ConfigError(problems or [ConfigProblem(Pos(routes_file, 1, 1), "expected text")])
    return value


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _is_name(text: str) -> bool:
    return re.match(NAME_PATTERN, text) is not None

