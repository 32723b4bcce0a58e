"""From raw bytes to channel outcomes: decode, check the header, route, run the channels.

Shared by live intake (which adds dedupe, the store and the ACK) and by replay (which adds
the link to the original). Pure CPU work: no I/O, no awaiting.

A message is rejected (AR) when it cannot be decoded or parsed, when MSH-9 or MSH-10 is
missing, or when no channel routed from its listener accepts its type. The rejection says
which HL7 error code (table 0357) and location (ERR-2) apply; its text never quotes content.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.pipeline.channel import ChannelOutcome, CompiledChannel
from engine.protocol.charset import decode_message
from engine.protocol.er7 import Er7Error, Header, Message
from engine.store.base import MessageKeys, NewDelivery

REQUIRED_FIELD_MISSING = 101
UNSUPPORTED_MESSAGE_TYPE = 200
UNSUPPORTED_EVENT = 201


@dataclass(frozen=True)
class Rejection:
    code: int
    location: str
    text: str


@dataclass
class Decoded:
    header: Header | None
    text: str
    codec: str
    keys: MessageKeys = field(default_factory=MessageKeys)
    rejection: Rejection | None = None
    # Parsed once here for the keys; each channel works on a copy (cheaper than a parse).
    message: Message | None = None

    @property
    def message_type(self) -> str:
        return self.keys.message_type

    @property
    def source(self) -> str | Message:
        """What channels run on: the parsed message when there is one, else the text."""
        return self.message if self.message is not None else self.text


def decode(data: bytes) -> Decoded:
    """Decode per MSH-18 and read the header and index keys; never raises on bad input."""
    try:
        header, text, codec = decode_message(data)
    except Er7Error as exc:  # CharsetError included: 103, MSH-18 names no known charset
        return Decoded(None, "", "utf-8", rejection=Rejection(exc.code, exc.location, str(exc)))
    keys = MessageKeys(
        sender=header.sending_application,
        facility=header.sending_facility,
        control_id=header.control_id,
        message_type=f"{header.message_type}^{header.trigger}" if header.message_type else "",
        version=header.version,
    )
    if not header.control_id:
        return Decoded(
            header,
            text,
            codec,
            keys,
            Rejection(
                REQUIRED_FIELD_MISSING, "MSH^1^10", "MSH-10 (message control id) is required"
            ),
        )
    if not header.message_type or not header.trigger:
        return Decoded(
            header,
            text,
            codec,
            keys,
            Rejection(
                REQUIRED_FIELD_MISSING, "MSH^1^9", "MSH-9 (message type and trigger) is required"
            ),
        )
    try:
        message = Message.parse(text)
        keys = _with_ids(keys, message)
    except Er7Error as exc:
        return Decoded(header, text, codec, keys, Rejection(exc.code, exc.location, str(exc)))
    return Decoded(header, text, codec, keys, message=message)


def _with_ids(keys: MessageKeys, message: Message) -> MessageKeys:
    patients = tuple(dict.fromkeys(v for v in message.get_all("PID-3.1") if v))
    appointments = tuple(
        dict.fromkeys(v for v in (message.get("SCH-1.1"), message.get("SCH-2.1")) if v)
    )
    return MessageKeys(
        sender=keys.sender,
        facility=keys.facility,
        control_id=keys.control_id,
        message_type=keys.message_type,
        version=keys.version,
        patient_ids=patients,
        appointment_ids=appointments,
    )


def route(
    decoded: Decoded, channel_names: tuple[str, ...], channels: dict[str, CompiledChannel]
) -> list[CompiledChannel] | Rejection:
    """The channels of this listener that accept the message's type, or why none does."""
    candidates = [channels[n] for n in channel_names if n in channels]
    accepted = [c for c in candidates if c.accepts(decoded.message_type)]
    if accepted:
        return accepted
    if not candidates:
        return Rejection(
            UNSUPPORTED_MESSAGE_TYPE, "MSH^1^9", "no channel is routed from this listener"
        )
    family = decoded.message_type.split("^", 1)[0] + "^"
    same_family = any(t.startswith(family) for c in candidates for t in c.config.accept_types)
    code = UNSUPPORTED_EVENT if same_family else UNSUPPORTED_MESSAGE_TYPE
    return Rejection(code, "MSH^1^9", f"no route accepts message type {decoded.message_type}")


def run_channels(
    decoded: Decoded, channels: list[CompiledChannel], only: str | None = None
) -> list[ChannelOutcome]:
    return [c.run(decoded.source, decoded.codec, only) for c in channels]


def new_deliveries(outcomes: list[ChannelOutcome], now: float) -> tuple[NewDelivery, ...]:
    """One queued delivery per payload the channels produced, due now."""
    return tuple(
        NewDelivery(o.channel, p.destination.name, p.lane, p.data, now)
        for o in outcomes
        for p in o.payloads
    )
