"""The running engine: store, compiled channels, delivery lanes and listeners, started and
stopped in the order that loses nothing.

Start: open the store (creating or migrating it), compile channels, resume queued
deliveries, then open listeners. Stop: close listeners (in-progress messages still get their
ACK), stop the lanes (unsent deliveries stay queued), then flush and close the store.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from engine import __version__
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
from engine.runtime.security import SecurityServices
from engine.runtime.sync_failed import SyncFailedEvents
from engine.security.alert_webhook import AlertDelivery
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
        self.listeners: dict[str, MllpListener | HttpListener] = {
            name: MllpListener(cfg, self.intake, self.metrics.listeners[name])
            if cfg.mllp is not None
            else HttpListener(
                cfg, self.fhir_intake, self.metrics.listeners[name], __version__, self._auth(cfg)
            )
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
        except BaseException:
            await self.stop()
            raise
        log.info(
            "engine started: %d listeners, %d channels", len(self.listeners), len(self.channels)
        )
        for warning in self.security.warnings:
            log.warning("%s", warning)

    async def stop(self) -> None:
        for listener in self.listeners.values():
            await listener.stop()
        await self.dispatcher.stop()
        await self.store.close()
        await self.alerts.stop()
        self.security.close()
        self._release_lock()
        self._stopped.set()

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()

    async def run_until_signalled(self) -> None:
        """Run until SIGINT or SIGTERM, then stop cleanly."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            log.info("engine stopping")
            await self.stop()
