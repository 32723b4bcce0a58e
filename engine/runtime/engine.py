"""The running engine: store, compiled channels, delivery lanes and listeners, started and
stopped in the order that loses nothing.

Start: open the store (creating or migrating it), compile channels, resume queued
deliveries, then open listeners. Stop: close listeners (in-progress messages still get their
ACK), stop the lanes (unsent deliveries stay queued), then flush and close the store.
`reload` swaps in a new configuration while running (engine.runtime.reload); SIGHUP, `engine
reload` (engine.runtime.reload_control) and the file watch (engine.runtime.reload_watch)
trigger it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from engine import __version__
from engine.api.admin import AdminApi
from engine.config.model import DestinationConfig, EngineConfig, ListenerConfig
from engine.destinations import build as build_destination
from engine.destinations.base import Destination
from engine.listeners.http import HttpListener
from engine.listeners.http_auth import HttpAuth
from engine.listeners.mllp import MllpListener
from engine.pipeline.channel import CompiledChannel, compile_channels
from engine.pipeline.steps.base import CompileContext
from engine.runtime.clock import Clock, SystemClock
from engine.runtime.dispatcher import Dispatcher
from engine.runtime.fhir_intake import FhirIntake
from engine.runtime.instance_lock import InstanceLock
from engine.runtime.intake import Intake
from engine.runtime.metrics import Metrics
from engine.runtime.reload import (
    FAILED,
    SIGNAL_ACTOR,
    WATCH_ACTOR,
    Reloader,
    ReloadResult,
    refused,
)
from engine.runtime.reload_control import ReloadRequests
from engine.runtime.reload_watch import ConfigWatch, Snapshot
from engine.runtime.security import SecurityServices
from engine.runtime.sync_failed import SyncFailedEvents
from engine.security.alert_webhook import AlertDelivery
from engine.security.audit import Actor
from engine.store import open_store
from engine.store.base import Store

log = logging.getLogger("engine")


def compile_config(config: EngineConfig) -> dict[str, CompiledChannel]:
    return compile_channels(config.channels, CompileContext.of(config))


class Engine:
    def __init__(
        self,
        config: EngineConfig,
        *,
        store: Store | None = None,
        clock: Clock | None = None,
        destination_factory: Callable[[DestinationConfig], Destination] = build_destination,
        poll_interval: float = 1.0,
        security: SecurityServices | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.store = store or open_store(config.store, config.security.encryption)
        self.channels = compile_config(config)
        self.metrics = Metrics(config)
        self.store.observe_commits(self.metrics.store_commit_seconds.observe)
        destinations = [d for c in config.channels.values() for d in c.destinations]
        self.dispatcher = Dispatcher(
            destinations,
            self.store,
            self.clock,
            destination_factory,
            self.metrics,
            poll_interval,
            SyncFailedEvents(config, self.store, self.clock),
        )
        self.intake = Intake(
            config, self.channels, self.store, self.dispatcher, self.clock, self.metrics
        )
        # One gate for both intakes: an SIU and a FHIR version of one appointment serialise.
        self.fhir_intake = FhirIntake(
            config,
            self.channels,
            self.store,
            self.dispatcher,
            self.clock,
            self.intake.gate,
            self.intake.control_ids,
            self.metrics,
        )
        self.security = security or SecurityServices(config)
        admin = AdminApi(self)
        self.listeners: dict[str, MllpListener | HttpListener] = {
            name: MllpListener(cfg, self.intake, self.metrics.listeners[name])
            if cfg.mllp is not None
            else HttpListener(cfg, self.fhir_intake, self.metrics.listeners[name], __version__,
                              self._auth(cfg), admin)
            for name, cfg in config.listeners.items()
        }
        self.metrics.gauge(
            "engine_queue_depth", "Deliveries queued and not final yet (waiting, retrying or "
            "in flight), by destination", "destination", self.dispatcher.depths)  # fmt: skip
        self.metrics.gauge(
            "engine_listener_connections", "Connections open now, by listener", "listener",
            lambda: {n: listener.stats.connections for n, listener in self.listeners.items()})
        self._stopped = asyncio.Event()
        self._lock = InstanceLock.for_store(config.store)
        self.alerts = AlertDelivery(config.security)  # to the alert webhook, when configured
        self.reloader = Reloader(self)
        self.requests = ReloadRequests.for_store(config.store)  # how `engine reload` asks
        self.watch: ConfigWatch | None = None
        self._signalled: set[asyncio.Task[None]] = set()
        self._started = asyncio.Event()

    def _auth(self, cfg: ListenerConfig) -> HttpAuth:
        assert cfg.http is not None
        access = self.security.access if cfg.http.auth == "required" else None
        audit = self.security.audit if self.security.audit_log is not None else None
        return HttpAuth(cfg.name, access, audit)

    async def start(self) -> None:
        if self._lock is not None:
            self._lock.acquire()  # before touching the store: claims are released at start
        try:
            await self.store.open()
        except BaseException:
            self._release_lock()
            raise
        try:
            await self.alerts.start()
            await self.dispatcher.start()
            for listener in self.listeners.values():
                await listener.start()
            await self._follow_watch()
        except BaseException:
            await self.stop()
            raise
        self._started.set()
        log.info(
            "engine started: %d listeners, %d channels", len(self.listeners), len(self.channels)
        )
        for warning in self.security.warnings:
            log.warning("%s", warning)

    async def stop(self) -> None:
        if self.watch is not None:
            await self.watch.stop()
        for task in self._signalled:
            task.cancel()
        await asyncio.gather(*self._signalled, return_exceptions=True)
        for listener in self.listeners.values():
            await listener.stop()
        await self.dispatcher.stop()
        await self.store.close()
        await self.alerts.stop()
        self.security.close()
        self._release_lock()
        self._stopped.set()

    async def reload(
        self, actor: Actor, *, trigger: str = "api", audited: bool = True
    ) -> ReloadResult:
        """Reload the configuration from the files the engine started with; `actor` is who
        asked (audited, unless `audited` is False: the caller records it itself)."""
        result = await self.reloader.reload(actor, trigger, audited)
        if result.accepted:
            await self._follow_watch()
        return result

    def files_read(self, snapshot: Snapshot) -> None:
        """A reload read the files as they were at `snapshot`: the watch's baseline."""
        if self.watch is not None:
            self.watch.seen(snapshot)

    async def _follow_watch(self) -> None:
        """Watch the files as `reload:` says (it may have changed with a reload)."""
        wanted = self.config.reload
        if self.watch is not None and (not wanted.watch or self.watch.interval != wanted.interval):
            await self.watch.stop()
            self.watch = None
        if wanted.watch and self.watch is None:
            self.watch = ConfigWatch(self.config.routes_file, wanted.interval, self._file_changed)
            self.watch.start()

    async def _file_changed(self) -> None:
        await self.reload(WATCH_ACTOR, trigger="watch")

    def _sighup(self) -> None:
        task = asyncio.get_running_loop().create_task(self._answer_sighup(), name="reload")
        self._signalled.add(task)
        task.add_done_callback(self._signalled.discard)

    async def _answer_sighup(self) -> None:
        """Reload; answer the `engine reload` requests waiting (each CLI audits its own), or
        audit it here when nobody asked through the CLI."""
        await self._started.wait()  # a SIGHUP during start reloads once it is up
        requests = self.requests
        nonces = requests.take() if requests is not None else []
        trigger = "cli" if nonces else "signal"
        try:
            result = await self.reload(SIGNAL_ACTOR, trigger=trigger, audited=not nonces)
        except Exception as exc:  # e.g. the audit trail failed: said here, not lost in a task
            log.exception("reload on SIGHUP failed")
            result = refused(f"the reload failed ({type(exc).__name__}; see the engine's log)",
                             outcome=FAILED)  # fmt: skip
        if requests is not None and nonces:
            try:
                requests.answer(nonces, result.to_json())
            except OSError as exc:
                log.error("reload: answering engine reload failed: %s", exc.strerror)

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()

    async def run_until_signalled(self) -> None:
        """Run until SIGINT or SIGTERM, then stop cleanly; SIGHUP reloads the configuration."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._sighup)
        await self.start()
        try:
            await stop.wait()
        finally:
            log.info("engine stopping")
            await self.stop()
