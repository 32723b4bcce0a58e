"""Alert delivery to the alert webhook (`security.alerts.webhook`): every `engine.alerts`
record, as `Alert.payload()`, POSTed and signed the Standard Webhooks way.

Rules kept here:
- The code raising an alert is never blocked nor failed: `AlertHandler.emit` (any thread)
  only hands the alert to the event loop; a queue of `capacity` alerts waits there, and a
  full queue drops the new alert with a warning that counts the drops.
- One background task sends, one alert at a time, through the webhook destination
  (engine.destinations.webhook: signing, TLS, Retry-After, reasons without the URL's path);
  a `Retry` waits per the retry policy (exponential backoff) and gives up after its
  attempts, a `Reject` gives up at once, each with one warning.
- What this module logs goes to `engine.alert_delivery`, never to `engine.alerts`, so a
  failing alert webhook cannot feed alerts about itself back into its own queue.
- `stop` gives queued alerts `grace` seconds to go out, then drops the rest (counted).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Protocol

from engine.config.model import AlertWebhook, RetryPolicy, SecurityConfig
from engine.destinations.base import DeliveryMeta, Outcome, Reject, Retry, Sent
from engine.runtime.backoff import delay, exhausted
from engine.security.alerts import LOGGER, Alert

log = logging.getLogger("engine.alert_delivery")

CAPACITY = 1000
RETRY = RetryPolicy(attempts=5, first=1.0, max=60.0)
STOP_GRACE = 5.0
NAME = "alert-webhook"


class Sender(Protocol):
    async def send(self, payload: bytes, meta: DeliveryMeta) -> Outcome: ...

    async def close(self) -> None: ...


class AlertSender:
    """The queue and the task that empties it."""

    def __init__(
        self, destination: Sender, *, capacity: int = CAPACITY, retry: RetryPolicy = RETRY
    ) -> None:
        self.destination = destination
        self.capacity = capacity
        self.retry = retry
        self.sent = 0
        self.dropped = 0  # queue full, given up, or left at stop
        self._ids = itertools.count(1)
        self._queue: asyncio.Queue[Alert] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def offer(self, alert: Alert) -> None:
        """Thread-safe and never blocking: the alert joins the queue on the event loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._put, alert)
        except RuntimeError:  # the loop closed meanwhile
            return

    def _put(self, alert: Alert) -> None:
        if self._stopping.is_set() or self._queue.qsize() >= self.capacity:
            self.dropped += 1
            log.warning(
                "alert webhook queue full (%d): alert.%s dropped; %d dropped so far",
                self.capacity, alert.kind, self.dropped,
            )  # fmt: skip
            return
        self._queue.put_nowait(alert)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="alert-webhook")

    async def stop(self, grace: float = STOP_GRACE) -> None:
        if self._task is None:
            return
        await asyncio.sleep(0)  # let alerts handed over just before this join the queue
        with suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), grace)
        self._stopping.set()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        left = self._queue.qsize()
        if left:
            self.dropped += left
            log.warning("alert webhook: %d alert(s) not sent before stopping", left)
        self._loop = None
        await self.destination.close()

    async def _run(self) -> None:
        while True:
            alert = await self._queue.get()
            try:
                await self._deliver(alert)
            finally:
                self._queue.task_done()

    async def _deliver(self, alert: Alert) -> None:
        payload = alert.payload()
        meta = DeliveryMeta(next(self._ids), 0, NAME)
        failures = 0
        while True:
            outcome = await self.destination.send(payload, meta)
            if isinstance(outcome, Sent):
                self.sent += 1
                return
            failures += 1
            if isinstance(outcome, Reject) or exhausted(self.retry, failures):
                self.dropped += 1
                log.warning(
                    "alert webhook: gave up on alert.%s after %d attempt(s): %s",
                    alert.kind, failures, outcome.reason,
                )  # fmt: skip
                return
            assert isinstance(outcome, Retry)
            wait = outcome.after if outcome.after is not None else delay(self.retry, failures)
            try:
                await asyncio.wait_for(self._stopping.wait(), wait)
                return  # stopping: the alert is counted as left over
            except TimeoutError:
                continue


class AlertHandler(logging.Handler):
    """Hands every record of `engine.alerts` to the sender."""

    def __init__(self, sender: AlertSender) -> None:
        super().__init__(logging.WARNING)
        self.sender = sender

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sender.offer(Alert.of(record))
        except Exception:  # pragma: no cover - logging must never raise into the caller
            self.handleError(record)


def build_sender(webhook: AlertWebhook) -> AlertSender:
    from engine.destinations.webhook import WebhookDestination
    from engine.security.tls import client_context
    from engine.webhooks import WebhookSecret

    tls = client_context(webhook.tls, who="the alert webhook") if webhook.tls else None
    destination = WebhookDestination(
        NAME, url=webhook.url, secrets=[WebhookSecret.parse(webhook.secret)], tls=tls,
        connections=1,
    )  # fmt: skip
    return AlertSender(destination)


class AlertDelivery:
    """What `engine run` (and the CLI, around a command) holds: the handler on
    `engine.alerts` and its sender while running; nothing at all without a webhook."""

    def __init__(self, security: SecurityConfig, sender: AlertSender | None = None) -> None:
        webhook = security.alerts.webhook
        self.sender = sender or (build_sender(webhook) if webhook is not None else None)
        self._handlers: list[logging.Handler] = []

    async def start(self) -> None:
        if self.sender is None:
            return
        await self.sender.start()
        logger = logging.getLogger(LOGGER)
        if not logger.hasHandlers() and logging.lastResort is not None:
            # Unconfigured logging (a CLI command) prints alerts on stderr through Python's
            # last-resort handler, which stops as soon as any handler exists: keep it.
            self._handlers.append(logging.lastResort)
        self._handlers.append(AlertHandler(self.sender))
        for handler in self._handlers:
            logger.addHandler(handler)

    async def stop(self, grace: float = STOP_GRACE) -> None:
        for handler in self._handlers:
            logging.getLogger(LOGGER).removeHandler(handler)
        self._handlers.clear()
        if self.sender is not None:
            await self.sender.stop(grace)


@asynccontextmanager
async def delivering(security: SecurityConfig) -> AsyncIterator[AlertDelivery]:
    """Alerts raised inside go to the webhook too (a CLI command's burst alert, say)."""
    delivery = AlertDelivery(security)
    await delivery.start()
    try:
        yield delivery
    finally:
        await delivery.stop()
