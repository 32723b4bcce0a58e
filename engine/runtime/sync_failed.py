"""`appointment.sync_failed`: when a delivery of an appointment gives up (its retries are used
up, or the destination rejected it), every webhook subscriber of appointment events hears it,
with the booking reference, so a notification system can ask the patient to call.

Rules kept:
- subscribers are the webhook destinations of channels that build appointment events
  (`- convert: appointment_event`); the event is queued for each of them as one more delivery
  of the same message, so `engine show` tells it with the rest of that message's story;
- a failed delivery to a webhook destination raises no event (an event about an event could
  loop, and the subscriber that failed is the one that would be told);
- the reason is a code (`rejected`, `retries_exhausted`), never a peer's error text;
- a message that carries no appointment raises nothing. Raising the event is best effort: the
  failure itself is stored and alerted already, so a store error here is logged, not raised.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence

from engine.appointments.events import sync_failed_event
from engine.config.model import ChannelConfig, EngineConfig
from engine.runtime.clock import Clock
from engine.store.base import NewDelivery, Store

log = logging.getLogger("engine.dispatcher")

EVENT_CONVERTER = "appointment_event"
WEBHOOK = "webhook"

# (message id, delivery ids, deliveries): how queued events reach the running lanes.
Enqueue = Callable[[int, Sequence[int], Sequence[NewDelivery]], None]


def builds_events(channel: ChannelConfig) -> bool:
    """Whether the channel turns appointments into events (`convert: appointment_event`)."""
    for step in channel.steps:
        if step.kind != "convert":
            continue
        name = step.args.get("name") if isinstance(step.args, dict) else step.args
        if name == EVENT_CONVERTER:
            return True
    return False


class SyncFailedEvents:
    def __init__(self, config: EngineConfig, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self.subscribers = [
            (channel.name, d.name)
            for channel in config.channels.values()
            if builds_events(channel)
            for d in channel.destinations
            if d.kind == WEBHOOK
        ]
        self._webhooks = {
            d.name for c in config.channels.values() for d in c.destinations if d.kind == WEBHOOK
        }

    def wanted(self, destination: str) -> bool:
        return bool(self.subscribers) and destination not in self._webhooks

    async def announce(
        self, message_id: int, destination: str, reason_code: str, enqueue: Enqueue
    ) -> int:
        """Queue the event for every subscriber; returns how many were queued."""
        if not self.wanted(destination):
            return 0
        try:
            detail = await self._store.get(message_id)
            if detail is None or detail.appointment is None:
                return 0
            resource = json.loads(detail.appointment.resource)
            event = sync_failed_event(
                resource, destination=destination, reason_code=reason_code,
                now=self._clock.now()
            )
            payload = json.dumps(event, separators=(",", ":")).encode()
            now = self._clock.now()
            deliveries = tuple(
                NewDelivery(channel, webhook, "", payload, now)
                for channel, webhook in self.subscribers
            )
            ids = await self._store.add_deliveries(message_id, deliveries, claimed=True)
        except Exception as exc:
            log.error("appointment.sync_failed for message %d not queued: %s", message_id,
                      type(exc).__name__)
            return 0
        enqueue(message_id, ids, deliveries)
        return len(ids)
