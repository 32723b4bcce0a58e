"""Intake: one received message → channels → one durable commit → the ACK to send back.

The order is the product's promise: the message, its channel results and its queued
deliveries are committed in ONE transaction (the store's group commit) and the ACK is built
before but returned only after that commit; deliveries start only after it. Nothing is
acknowledged that is not stored, and whatever is stored is delivered.

ACK policy per listener: `commit` answers AA once stored (channel errors stay visible in the
store); `processed` (default) answers AE with one ERR per failed channel step; `delivered`
waits for the destinations and relays their verdict. Every rejected message (AR) is stored
too, with the reason, so it can be seen and replayed. A duplicate (same MSH-3 + MSH-10
within the channel's dedupe window) gets the ACK stored the first time and is not processed
again; the duplicate arrival is recorded, linked to the original.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import zoneinfo
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime

from engine.config.model import EngineConfig, ListenerConfig
from engine.destinations.base import Outcome, Reject, Sent
from engine.pipeline.channel import ChannelOutcome, CompiledChannel
from engine.protocol.ack import AckError, build_ack
from engine.protocol.er7 import Header, parse_path
from engine.runtime.appointments import JUDGE_ATTEMPTS, AppointmentGate, Judged, key_of
from engine.runtime.clock import Clock
from engine.runtime.dispatcher import Dispatcher
from engine.runtime.metrics import Metrics
from engine.runtime.processing import (
    Decoded,
    Rejection,
    decode,
    new_deliveries,
    route,
)
from engine.store.base import (
    DuplicateHit,
    Ingest,
    MessageKeys,
    MessageStatus,
    NewChannelResult,
    NewMessage,
    StaleJudgement,
    Store,
)

log = logging.getLogger("engine.intake")

APPLICATION_ERROR = 207


def new_message(
    listener: str,
    data: bytes,
    decoded: Decoded,
    now: float,
    status: MessageStatus,
    ack_code: str,
    ack: bytes,
    error: str = "",
    duplicate_of: int | None = None,
) -> NewMessage:
    """The stored row of a received message (keys only when it could be read)."""
    readable = decoded.header is not None or decoded.resource is not None
    return NewMessage(
        received_at=now,
        listener=listener,
        content_type=decoded.content_type,
        charset=decoded.codec,
        raw=data,
        keys=decoded.keys if readable else MessageKeys(),
        status=status,
        ack_code=ack_code,
        ack=ack,
        error=error,
        duplicate_of=duplicate_of,
    )


def id_sequence(prefix: str, clock: Clock) -> Iterator[str]:
    start = int(clock.now())
    return (f"{prefix}{start:x}{n:06d}" for n in itertools.count(1))


def error_location(field: str) -> str:
    if not field:
        return ""
    try:
        return parse_path(field).location()
    except ValueError:
        return ""


def stored_result(outcome: ChannelOutcome) -> NewChannelResult:
    error = outcome.error
    if outcome.error_detail:
        error = f"{error} [{outcome.error_detail}]"
    return NewChannelResult(
        outcome.channel,
        outcome.status,
        outcome.output,
        error,
        outcome.error_step,
        outcome.error_field,
    )


class Intake:
    def __init__(
        self,
        config: EngineConfig,
        channels: dict[str, CompiledChannel],
        store: Store,
        dispatcher: Dispatcher,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.channels = channels
        self._store = store
        self._dispatcher = dispatcher
        self._clock = clock
        self._metrics = metrics
        self._tz = zoneinfo.ZoneInfo(config.timezone)
        self.gate = AppointmentGate(store)
        # Control ids of ACKs and of converted messages: unique across restarts (start time)
        # and within a run (counter).
        self._ack_ids = id_sequence("A", clock)
        self.control_ids = id_sequence("E", clock)

    def use(self, config: EngineConfig, channels: dict[str, CompiledChannel]) -> None:
        """A reloaded configuration, for the next message: a message in progress holds the
        channels it was routed to and finishes on them."""
        self.config, self.channels = config, channels
        self._tz = zoneinfo.ZoneInfo(config.timezone)

    def _ack(
        self,
        header: Header | None,
        code: str,
        text: str,
        codec: str,
        errors: list[AckError] | tuple[AckError, ...] = (),
    ) -> bytes:
        now = datetime.fromtimestamp(self._clock.now(), UTC)
        ack = build_ack(header, code, text, control_id=next(self._ack_ids), now=now, errors=errors)
        return ack.encode(codec, errors="replace")

    async def receive(self, listener: ListenerConfig, data: bytes) -> bytes:
        """Process one framed message; returns the encoded ACK, sent only after the commit."""
        now = self._clock.now()
        decoded = decode(data, self._tz)
        if decoded.rejection is not None:
            return await self._reject(listener, data, decoded, decoded.rejection, now)
        accepted = route(decoded, self.config.routes.get(listener.name, ()), self.channels)
        if isinstance(accepted, Rejection):
            return await self._reject(listener, data, decoded, accepted, now)
        window = max(c.config.dedupe_window for c in accepted)
        if window > 0:
            try:
                hit = await self._store.find_duplicate(
                    decoded.keys.sender, decoded.keys.control_id, now - window
                )
            except Exception as exc:
                return self._not_stored(listener, decoded, exc)
            if hit is not None:
                age = now - hit.received_at
                # Channels whose window still covers the original skip it; others run again.
                accepted = [c for c in accepted if c.config.dedupe_window < age]
                if not accepted:
                    await self._record_duplicate(listener, data, decoded, now, hit)
                    return hit.ack
        # One version of an appointment at a time, from the state read to its commit.
        async with self.gate.hold(key_of(decoded)):
            for attempt in range(1, JUDGE_ATTEMPTS + 1):
                try:
                    judged, outcomes = await self.gate.process(
                        decoded, accepted, now=now, control_id=next(self.control_ids)
                    )
                except Exception as exc:  # the state could not be read: nothing is stored
                    return self._not_stored(listener, decoded, exc)
                try:
                    committed = await self._commit(listener, data, decoded, outcomes, now, judged)
                    break
                except StaleJudgement as exc:  # another process moved the appointment on
                    if attempt == JUDGE_ATTEMPTS:
                        return self._not_stored(listener, decoded, exc)
        if isinstance(committed, bytes):
            return committed
        return await committed

    async def _commit(
        self,
        listener: ListenerConfig,
        data: bytes,
        decoded: Decoded,
        outcomes: list[ChannelOutcome],
        now: float,
        judged: Judged | None,
    ) -> bytes | Coroutine[None, None, bytes]:
        """Store and queue; the ACK, or (`delivered` policy) the wait for the destinations'
        verdict, which the caller awaits after letting go of the appointment."""
        failed = [o for o in outcomes if o.status == "error"]
        errors = [
            AckError(o.error_code, f"channel {o.channel}: {o.error}", error_location(o.error_field))
            for o in failed
        ]
        if listener.ack == "commit" or not failed:
            code, text, ack_errors = "AA", "", []
        else:
            code, text, ack_errors = "AE", "processing failed", errors
        ack = self._ack(decoded.header, code, text, decoded.codec, ack_errors)
        deliveries = new_deliveries(outcomes, now)
        ingest = Ingest(
            new_message(
                listener.name, data, decoded, now, "error" if failed else "processed", code, ack
            ),
            tuple(stored_result(o) for o in outcomes),
            deliveries,
            # Refused (AE) and nothing sent on: history only. Once another channel's output
            # is queued, downstream hears of this version: it is the state.
            appointment=judged.version(rejected=code != "AA" and not deliveries)
            if judged
            else None,
        )
        try:
            ingested = await self._store.ingest(ingest)
        except StaleJudgement:
            raise  # judged again by the caller
        except Exception as exc:
            return self._not_stored(listener, decoded, exc)
        self._metrics.processed(ingest.results)
        if judged is not None:
            judged.alert(ingested.message_id)
        waits: list[asyncio.Future[Outcome]] = []
        if listener.ack == "delivered" and deliveries:
            waits = [self._dispatcher.watch(i) for i in ingested.delivery_ids]
        self._dispatcher.enqueue(ingested.message_id, ingested.delivery_ids, deliveries)
        if waits and code == "AA":
            return self._relay(
                listener, decoded, ingested.message_id, ingested.delivery_ids, waits
            )
        return ack

    async def _record_duplicate(
        self,
        listener: ListenerConfig,
        data: bytes,
        decoded: Decoded,
        now: float,
        hit: DuplicateHit,
    ) -> None:
        """The arrival is kept, linked to its original; originals are only messages answered
        AA, so AA is what the sender gets again. Failing to keep it changes nothing for the
        sender: the original is stored and was acknowledged."""
        try:
            await self._store.ingest(
                Ingest(
                    new_message(
                        listener.name,
                        data,
                        decoded,
                        now,
                        "duplicate",
                        "AA",
                        hit.ack,
                        duplicate_of=hit.message_id,
                    )
                )
            )
        except Exception as exc:
            log.error(
                "listener %s: recording a duplicate failed: %s", listener.name, type(exc).__name__
            )

    def _not_stored(self, listener: ListenerConfig, decoded: Decoded, exc: Exception) -> bytes:
        """Not stored, so not acknowledged: AE, and the sender keeps the message and resends."""
        log.error("listener %s: store failed: %s", listener.name, type(exc).__name__)
        return self._ack(
            decoded.header,
            "AE",
            "message not stored; resend later",
            decoded.codec,
            [AckError(APPLICATION_ERROR, "storage unavailable")],
        )

    async def _relay(
        self,
        listener: ListenerConfig,
        decoded: Decoded,
        message_id: int,
        delivery_ids: tuple[int, ...],
        waits: list[asyncio.Future[Outcome]],
    ) -> bytes:
        """`delivered` policy: AA when every destination took it; otherwise their verdict
        (by code only: an EHR's free text may quote the patient). The ACK sent is stored,
        so a resend is answered the same way."""
        done, pending = await asyncio.wait(waits, timeout=listener.ack_timeout)
        for delivery_id in delivery_ids:
            self._dispatcher.forget(delivery_id)
        outcomes = [f.result() for f in done]
        if pending:
            code, text = "AE", "stored; not yet delivered, delivery continues"
            errors = [AckError(APPLICATION_ERROR, "destination did not confirm in time")]
        elif all(isinstance(o, Sent) for o in outcomes):
            code, text, errors = "AA", "", []
        else:
            code = "AR" if any(isinstance(o, Reject) for o in outcomes) else "AE"
            text = "delivery failed"
            errors = [
                AckError(APPLICATION_ERROR, f"a destination answered {o.code or 'nothing'}")
                for o in outcomes
                if not isinstance(o, Sent)
            ]
        ack = self._ack(decoded.header, code, text, decoded.codec, errors)
        try:
            await self._store.set_ack(message_id, code, ack)
        except Exception as exc:  # the message and its deliveries are stored already
            log.error("listener %s: storing the ACK failed: %s", listener.name, type(exc).__name__)
        return ack

    async def _reject(
        self,
        listener: ListenerConfig,
        data: bytes,
        decoded: Decoded,
        rejection: Rejection,
        now: float,
    ) -> bytes:
        ack = self._ack(
            decoded.header,
            "AR",
            rejection.text,
            decoded.codec,
            [AckError(rejection.code, rejection.text, rejection.location)],
        )
        try:
            await self._store.ingest(
                Ingest(
                    new_message(
                        listener.name,
                        data,
                        decoded,
                        now,
                        "rejected",
                        "AR",
                        ack,
                        error=rejection.text,
                    )
                )
            )
        except Exception as exc:
            # An AR tells the sender not to resend: only say so once the message is stored.
            return self._not_stored(listener, decoded, exc)
        return ack

    async def reject_oversized(self, listener: ListenerConfig, head: bytes, size: int) -> bytes:
        """An over-limit frame: AR (echoing MSH-10 when the head has it); the head is stored."""
        decoded = decode(head)
        limit = listener.mllp.max_message_bytes if listener.mllp else size
        rejection = Rejection(
            APPLICATION_ERROR, "", f"message of {size} bytes exceeds the {limit}-byte limit"
        )
        return await self._reject(listener, head, decoded, rejection, self._clock.now())
