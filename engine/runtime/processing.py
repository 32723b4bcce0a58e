"""From raw bytes to channel outcomes: decode, check the header, route, run the channels.

Shared by live intake (which adds dedupe, the store and the ACK) and by replay (which adds
the link to the original). Pure CPU work: no I/O, no awaiting.

A message is rejected (AR) when it cannot be decoded or parsed, when MSH-9 or MSH-10 is
missing, or when no channel routed from its listener accepts its type. The rejection says
which HL7 error code (table 0357) and location (ERR-2) apply; its text never quotes content.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, tzinfo
from typing import Any

from engine.appointments import canonical
from engine.appointments.state import actor_id, actor_type, booking_identifier
from engine.pipeline.channel import ChannelOutcome, CompiledChannel
from engine.pipeline.context import RunContext
from engine.pipeline.documents import FHIR_JSON, HL7_V2, copy_json
from engine.protocol.charset import decode_message
from engine.protocol.er7 import Er7Error, Header, Message
from engine.store.base import MessageKeys, NewDelivery

REQUIRED_FIELD_MISSING = 101
UNSUPPORTED_MESSAGE_TYPE = 200
UNSUPPORTED_EVENT = 201
# SIU triggers that change or end an appointment: sent for one the engine should know.
_UPDATES = frozenset({"S13", "S14", "S15", "S16", "S17", "S26"})


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
    # A FHIR request's validated resource (then `message` is None and `header` too).
    resource: dict[str, Any] | None = None
    # The appointment the message carries, in canonical form (engine.appointments.canonical).
    appointment: dict[str, Any] | None = None
    source_time: float | None = None  # MSH-7 / meta.lastUpdated, when given
    expects_existing: bool = False  # an update or cancel: the appointment should be known
    content_type: str = HL7_V2

    @property
    def message_type(self) -> str:
        return self.keys.message_type

    @property
    def source(self) -> str | Message | dict[str, Any]:
        """What channels run on: the resource or parsed message, else the text."""
        if self.resource is not None:
            return self.resource
        return self.message if self.message is not None else self.text


def decode_fhir(
    resource: dict[str, Any], raw: bytes, *, sender: str = "", update: bool = False
) -> Decoded:
    """A validated FHIR Appointment as intake's input; `update`: it came by PUT."""
    keys = MessageKeys(
        sender=sender,
        message_type=str(resource.get("resourceType", "")),
        patient_ids=_patient_ids(resource),
        appointment_ids=_appointment_ids(resource),
    )
    return Decoded(
        None,
        raw.decode("utf-8", errors="replace"),
        "utf-8",
        keys,
        resource=resource,
        appointment=canonical.from_fhir(resource),
        # No source time: meta.lastUpdated belongs to the server; intake and replay say when.
        expects_existing=update,
        content_type=FHIR_JSON,
    )


def _appointment_ids(resource: dict[str, Any]) -> tuple[str, ...]:
    """Search keys: every identifier value, the booking identifier's first."""
    identifiers = resource.get("identifier")
    listed = identifiers if isinstance(identifiers, list) else []
    booking = booking_identifier(listed)
    values = [booking["value"]] if booking else []
    values += [i.get("value") for i in listed if isinstance(i, dict)]
    return tuple(dict.fromkeys(v for v in values if isinstance(v, str) and v))


def _patient_ids(resource: dict[str, Any]) -> tuple[str, ...]:
    """Search keys: the patients' identifier values (or reference ids), like PID-3.1."""
    found = []
    for participant in resource.get("participant") or ():
        actor = participant.get("actor") if isinstance(participant, dict) else None
        ident = actor_id(actor) if actor_type(actor) == "Patient" else None
        if ident is not None:
            found.append(ident.rsplit("|", 1)[-1].rsplit("/", 1)[-1])
    return tuple(dict.fromkeys(found))


def decode(data: bytes, tz: tzinfo = UTC) -> Decoded:
    """Decode per MSH-18 and read the header and index keys; never raises on bad input.
    `tz` is the zone of HL7 times without an offset (the appointment's canonical form)."""
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
    return Decoded(
        header,
        text,
        codec,
        keys,
        message=message,
        appointment=canonical.from_siu(message, tz),
        source_time=canonical.siu_source_time(message, tz),
        expects_existing=header.message_type == "SIU" and header.trigger in _UPDATES,
    )


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
    decoded: Decoded,
    channels: list[CompiledChannel],
    only: frozenset[str] | None = None,
    context: RunContext | None = None,
) -> list[ChannelOutcome]:
    """Each channel's outcome, in order; `context` is what the runs know beyond the message
    (time, control id for converted messages, appointment state). A channel that runs project
    code gets its own copy of the appointment, like its own copy of the message: a custom
    step that changes it can reach neither the next channel nor the version intake records
    (the engine's own steps only read it)."""
    return [
        c.run(decoded.source, decoded.codec, only, _own(context) if c.user_code else context)
        for c in channels
    ]


def _own(context: RunContext | None) -> RunContext | None:
    if context is None or context.appointment is None:
        return context
    appointment = context.appointment
    previous = appointment.previous
    mine = replace(
        appointment,
        resource=copy_json(appointment.resource),
        previous=copy_json(previous) if previous is not None else None,
    )
    return replace(context, appointment=mine)


def new_deliveries(outcomes: list[ChannelOutcome], now: float) -> tuple[NewDelivery, ...]:
    """One queued delivery per payload the channels produced, due now."""
    return tuple(
        NewDelivery(o.channel, p.destination.name, p.lane, p.data, now)
        for o in outcomes
        for p in o.payloads
    )
