"""Reloading a running engine's configuration (`Engine.reload`), from any trigger.

Rules kept:
- The whole new configuration is read from the files the engine started with (its
  routes.yaml, and the channels/ and transforms/ beside it), checked as `engine check` checks
  it and its channels compiled before anything changes. On any problem the reload is refused,
  the running configuration stays, and the result carries the problems as `engine check`
  prints them (`file:line:column: message`).
- What is bound or opened at start cannot change live: the store, the listeners (ports,
  TLS, limits, ACK policy) and `security:` (profile, lockout, alerts, at-rest keys). A reload
  that changes one of them is refused, naming each, as needing a restart.
- A good one is swapped in in one synchronous step on the event loop, so between two
  messages: a message in progress finishes on the channels it was routed to, the next one
  uses the new ones; listeners and their connections are untouched. Destinations are
  rebuilt when changed and drained when removed (engine.runtime.dispatcher): queued
  deliveries live in the store by destination name, and none is lost.
- Reloads run one at a time. Every one is audited (action E, "config reload", the summary as
  its query; outcome 0 accepted, 4 refused, 8 failed), unless the caller records it itself
  (`engine reload` records it as the CLI's caller).
- The summary names channels, tables, transforms, destinations, listeners and settings,
  never a value: no PHI, no secret.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config.model import EngineConfig, SecurityConfig
from engine.pipeline.channel import CompiledChannel
from engine.runtime import config_files
from engine.runtime.sync_failed import SyncFailedEvents
from engine.security.audit import Actor, AuditEvent

if TYPE_CHECKING:
    from engine.runtime.engine import Engine

log = logging.getLogger("engine.reload")

WHAT = "config reload"
ACCEPTED, REFUSED, FAILED = 0, 4, 8
# Who a reload the engine starts itself is recorded as.
SIGNAL_ACTOR = Actor(who="engine:sighup", address="local", user_agent="SIGHUP")
WATCH_ACTOR = Actor(who="engine:watch", address="local", user_agent="file watch")


@dataclass(frozen=True)
class Changes:
    """What an accepted reload changed, by name."""

    items: tuple[tuple[str, tuple[str, ...]], ...] = ()  # ("channels changed", (names...))

    def summary(self) -> str:
        parts = [f"{what}: {', '.join(names)}" if names else what for what, names in self.items]
        return "; ".join(parts) or "no changes"


@dataclass(frozen=True)
class ReloadResult:
    """A reload's answer: accepted or not, a one-line PHI-free summary, and the problems
    (as `engine check` prints them, or the settings that need a restart)."""

    accepted: bool
    outcome: int
    summary: str
    problems: tuple[str, ...] = ()

    def text(self) -> str:
        head = f"reloaded: {self.summary}" if self.accepted else f"refused: {self.summary}"
        return "\n".join((head, *self.problems))

    def to_json(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "outcome": self.outcome, "summary": self.summary,
                "problems": list(self.problems)}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReloadResult:
        return cls(bool(data["accepted"]), int(data["outcome"]), str(data["summary"]),
                   tuple(str(p) for p in data.get("problems", ())))  # fmt: skip

    def audit_event(self, trigger: str) -> AuditEvent:
        return AuditEvent("E", WHAT, self.outcome,
                          query={"trigger": trigger, "summary": self.summary})  # fmt: skip


def refused(summary: str, problems: list[str] | tuple[str, ...] = (), outcome: int = REFUSED
            ) -> ReloadResult:  # fmt: skip
    return ReloadResult(False, outcome, summary, tuple(problems))


def problem_count(n: int) -> str:
    return f"{n} configuration problem{'s' if n != 1 else ''}"


@dataclass
class Prepared:
    """A new configuration, checked and compiled, and the files it was read from."""

    config: EngineConfig
    channels: dict[str, CompiledChannel]
    digests: dict[str, bytes]


def load_and_compile(routes_file: Path) -> tuple[EngineConfig, dict[str, CompiledChannel]]:
    """The configuration checked as `engine check` does, and its channels compiled (blocking).
    Raises ConfigError with every problem, or what compiling raised."""
    from engine.config.loader import load
    from engine.runtime.engine import compile_config

    config = load(routes_file)
    return config, compile_config(config)


def prepare(routes_file: Path) -> Prepared:
    """`load_and_compile` with the files' digests (run it off the event loop)."""
    digests = config_files.digests(routes_file)
    return Prepared(*load_and_compile(routes_file), digests)


def _security(cfg: SecurityConfig) -> tuple[object, ...]:
    ring = cfg.encryption
    # Keys by what they do, never their bytes: a key replaced under the same id differs too.
    keys = None if ring is None else (
        ring.current, tuple((k, ring.index("reload", "fingerprint", k)) for k in ring.ids))
    return (cfg.profile, cfg.lockout, cfg.alerts, keys)


def needs_restart(old: EngineConfig, new: EngineConfig) -> list[str]:
    """Each setting that differs and cannot change while the engine runs."""
    found: list[str] = []
    if old.store != new.store:
        found.append("store: the store is opened at start")
    for name in sorted(old.listeners.keys() | new.listeners.keys()):
        before, after = old.listeners.get(name), new.listeners.get(name)
        if before is None:
            found.append(f"listener {name} added: listeners are bound at start")
        elif after is None:
            found.append(f"listener {name} removed: listeners are bound at start")
        elif dataclasses.replace(after, pos=before.pos) != before:  # all but where written
            found.append(f"listener {name} changed: listeners are bound at start")
    if _security(old.security) != _security(new.security):
        found.append("security: profile, lockout, alerts and at-rest keys are read at start")
    return found


def _compare(
    kind: str, old: set[str], new: set[str], changed: set[str]
) -> list[tuple[str, tuple[str, ...]]]:
    found = [(f"{kind} added", new - old), (f"{kind} removed", old - new),
             (f"{kind} changed", changed & old & new)]  # fmt: skip
    return [(what, tuple(sorted(names))) for what, names in found if names]


def changes(
    old: EngineConfig, new: EngineConfig, before: dict[str, bytes], after: dict[str, bytes],
    destinations: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]],
) -> Changes:  # fmt: skip
    """What differs, by name: channels and tables by their file's content (a channel moved
    down a line is not changed), transforms by module, routes by listener."""
    edited = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}

    def stems(folder: str, suffix: str) -> set[str]:
        return {n.removeprefix(folder).removesuffix(suffix) for n in edited
                if n.startswith(folder) and n.endswith(suffix) and "/" not in n[len(folder):]}

    items = _compare("channels", set(old.channels), set(new.channels),
                     stems("channels/", ".yaml"))  # fmt: skip
    items += _compare("tables", set(old.tables), set(new.tables),
                      stems("transforms/tables/", ".yaml"))  # fmt: skip
    transforms = stems("transforms/", ".py")
    if transforms:
        items.append(("transforms changed", tuple(sorted(transforms))))
    routes = {n for n in old.routes.keys() | new.routes.keys()
              if old.routes.get(n) != new.routes.get(n)}  # fmt: skip
    if routes:
        items.append(("routes changed", tuple(sorted(routes))))
    for what, names in zip(("destinations added", "destinations rebuilt", "destinations removed"),
                           destinations, strict=True):  # fmt: skip
        if names:
            items.append((what, tuple(sorted(names))))
    if old.timezone != new.timezone:
        items.append(("timezone changed", ()))
    if old.reload != new.reload:
        items.append(("reload settings changed", ()))
    return Changes(tuple(items))


class Reloader:
    """Runs an engine's reloads one at a time; keeps the digests of the files the running
    configuration was read from."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = asyncio.Lock()
        self.digests = config_files.digests(engine.config.routes_file)

    async def reload(self, actor: Actor | None, trigger: str, audited: bool = True
                     ) -> ReloadResult:  # fmt: skip
        async with self._lock:
            # Stat before reading: an edit made while the files are read shows to the watch
            # as a change; what was read, accepted or refused, is not reloaded again.
            read = config_files.stats(self._engine.config.routes_file)
            result = await self._reload()
            self._engine.files_read(read)
        log.log(logging.INFO if result.accepted else logging.WARNING, "config reload (%s) %s",
                trigger, result.text())  # fmt: skip
        if audited and actor is not None:
            await self._engine.security.audit(actor, result.audit_event(trigger))
        return result

    async def _reload(self) -> ReloadResult:
        from engine.config.check import problem_lines
        from engine.config.errors import ConfigError

        engine = self._engine
        old = engine.config
        try:
            new = await asyncio.to_thread(prepare, old.routes_file)
        except ConfigError as exc:
            return refused(problem_count(len(exc.problems)), problem_lines(exc))
        except Exception as exc:  # compiling a checked configuration should not fail
            log.exception("reload: compiling the new configuration failed")
            return refused("compiling the channels failed", [type(exc).__name__], FAILED)
        restart = needs_restart(old, new.config)
        if restart:
            return refused("needs a restart: " + ", ".join(r.split(":")[0] for r in restart),
                           restart)  # fmt: skip
        destinations = [d for c in new.config.channels.values() for d in c.destinations]
        try:
            rebuild = engine.dispatcher.rebuild(destinations)
        except Exception as exc:
            log.exception("reload: building a destination failed")
            return refused("building the destinations failed", [type(exc).__name__], FAILED)
        found = changes(old, new.config, self.digests, new.digests,
                        (rebuild.added, rebuild.changed, rebuild.removed))  # fmt: skip
        # The swap: no await from here to `settle`, so no message sees half of it.
        engine.config, engine.channels = new.config, new.channels
        engine.intake.use(new.config, new.channels)
        engine.fhir_intake.use(new.config, new.channels)
        replaced = engine.dispatcher.install(
            rebuild, SyncFailedEvents(new.config, engine.store, engine.clock)
        )
        self.digests = new.digests
        await engine.dispatcher.settle(replaced)
        return ReloadResult(True, ACCEPTED, found.summary())
