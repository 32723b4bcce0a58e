"""The Store protocol: what the engine needs from durable storage, and its row types.

SQLite (`engine.store.sqlite`) is the embedded default; a PostgreSQL store will implement the
same protocol and pass the same tests. Rules every implementation keeps:

- `ingest` is durable when it returns (the message, its channel results and its queued
  deliveries are committed in one transaction); callers acknowledge only after it returns.
- Writes from many connections share commits (group commit); a caller never waits for more
  than the commit that carries its own rows.
- Times are unix seconds (float, UTC). Ids are integers assigned by the store, except an
  appointment's id: a FHIR id string, kept for the appointment's life.
- An appointment's versions are numbered by the store inside the transaction that records
  them, from what it holds then: two writers never hand out one number twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

MessageStatus = Literal["processed", "error", "rejected", "duplicate"]
ResultStatus = Literal["ok", "filtered", "error", "duplicate"]
DeliveryStatus = Literal["queued", "sent", "failed", "discarded"]
# How a person resolved a flagged appointment conflict: the flagged version stands
# (`accepted`), it was put right at the source (`corrected`), or it needs nothing (`dismissed`).
Resolution = Literal["accepted", "corrected", "dismissed"]
ResolveOutcome = Literal["resolved", "not_flagged", "already_resolved"]
AttemptOutcome = Literal["sent", "retry", "failed"]


@dataclass(frozen=True)
class MessageKeys:
    """What people search by, extracted at intake."""

    sender: str = ""  # MSH-3.1
    facility: str = ""  # MSH-4.1
    control_id: str = ""  # MSH-10
    message_type: str = ""  # "SIU^S12"
    version: str = ""  # MSH-12
    patient_ids: tuple[str, ...] = ()  # PID-3.1 of every repetition
    appointment_ids: tuple[str, ...] = ()  # SCH-1.1, SCH-2.1 (non-empty ones)


@dataclass(frozen=True)
class NewMessage:
    received_at: float
    listener: str  # listener name, or "cli" / "replay"
    content_type: str  # "application/hl7-v2" or "application/fhir+json"
    charset: str  # python codec name used to decode raw
    raw: bytes  # exactly as received
    keys: MessageKeys
    status: MessageStatus
    ack_code: str  # AA / AE / AR, or "" when no ACK applies
    ack: bytes  # the ACK sent (encoded), stored so a duplicate gets it again
    error: str = ""  # why it was rejected, when status is "rejected"
    replay_of: int | None = None
    duplicate_of: int | None = None


@dataclass(frozen=True)
class NewChannelResult:
    channel: str
    status: ResultStatus
    output: bytes = b""  # transformed content (what the destinations get)
    error: str = ""
    error_step: str = ""  # e.g. "steps[2] map"
    error_location: str = ""  # e.g. "SCH-7.1"


@dataclass(frozen=True)
class NewDelivery:
    channel: str
    destination: str
    lane: str  # order_by key value; "" = the destination's single lane
    payload: bytes
    next_attempt_at: float


AppointmentDisposition = Literal["current", "unchanged", "stale", "rejected"]


@dataclass(frozen=True)
class AppointmentWarning:
    """Something that looked wrong about a version (see `engine.appointments.state`)."""

    kind: str  # unknown-appointment | update-after-cancel | out-of-order | double-booking
    text: str  # appointment keys and actor ids only, never names
    related: tuple[str, ...] = ()  # keys of the other appointments involved


@dataclass(frozen=True)
class NewAppointmentVersion:
    """The appointment version a message carries, recorded with the message.

    `disposition` says what it does to the appointment: `current` makes it the new current
    version (the store numbers it: current version + 1, or 1 and a new id when the key is
    new); `unchanged` (same content as the current one), `stale` (older than the current
    one) and `rejected` (refused under `conflicts: reject`) are history only.

    A current version replaces the actors the appointment holds; it holds them over
    [start, end) only when both are set and end > start. `ingest` raises ValueError, and
    stores nothing, for a version the store cannot keep (a field of the wrong type, a
    non-finite time, an unknown disposition).
    """

    key: str  # "system|value" of the booking identifier (engine.appointments.appointment_key)
    resource: bytes  # the canonical FHIR R4B Appointment JSON (UTF-8), without id and meta
    status: str  # the resource's status code
    # created | updated | rescheduled | cancelled | no_show | entered-in-error | unchanged
    change: str
    disposition: AppointmentDisposition
    source_time: float | None  # when the sender says it happened (MSH-7, meta.lastUpdated)
    start: float | None = None  # [start, end) in unix seconds, for double-booking lookups
    end: float | None = None
    actors: tuple[str, ...] = ()  # schedulable actors held (engine.appointments.actors)
    warnings: tuple[AppointmentWarning, ...] = ()
    # The current version this one was judged against (0: judged as unknown); when set, a
    # version (other than `rejected`) whose appointment moved on since is refused with
    # `StaleJudgement` (another process committed in between), so state never goes back and
    # an answer never pairs one version's content with another's number. None: not checked.
    base_version: int | None = None


class StaleJudgement(Exception):
    """A version was judged against a version of its appointment that is no longer the
    current one: nothing was written; judge it again."""


@dataclass(frozen=True)
class Ingest:
    message: NewMessage
    results: tuple[NewChannelResult, ...] = ()
    deliveries: tuple[NewDelivery, ...] = ()
    appointment: NewAppointmentVersion | None = None
    # True: this process sends the deliveries itself (born claimed). False: another process
    # (`engine replay` from the CLI) leaves them for the running engine to claim.
    claimed: bool = True


@dataclass(frozen=True)
class Ingested:
    message_id: int
    delivery_ids: tuple[int, ...]  # same order as Ingest.deliveries
    # The appointment's id and current version after this ingest: for a non-current version
    # of a known appointment its existing id and version; None for both when the message
    # carries no appointment, or a non-current version of one the store does not know.
    appointment_id: str | None = None
    appointment_version: int | None = None


@dataclass(frozen=True)
class AppointmentRow:
    """The current version of one appointment."""

    key: str
    id: str  # the engine's FHIR id for it (GET /fhir/Appointment/{id})
    version: int  # 1, 2, ... counting current versions only
    resource: bytes  # canonical JSON of the current version
    status: str
    source_time: float | None
    start: float | None
    end: float | None
    updated_at: float  # when the current version was recorded
    message_id: int  # the message that made it current


@dataclass(frozen=True)
class AppointmentVersionRow:
    """One recorded version of an appointment (its history, every disposition)."""

    key: str
    message_id: int
    recorded_at: float
    version: int | None  # the version number when disposition is current, else None
    disposition: AppointmentDisposition
    change: str
    status: str
    source_time: float | None
    resource: bytes
    warnings: tuple[AppointmentWarning, ...]


@dataclass(frozen=True)
class DuplicateHit:
    message_id: int
    received_at: float
    ack: bytes


@dataclass(frozen=True)
class Delivery:
    id: int
    message_id: int
    channel: str
    destination: str
    lane: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float
    payload: bytes
    created_at: float
    updated_at: float
    last_code: str = ""
    last_error: str = ""
    round_attempts: int = 0  # attempts since it was queued or last requeued (retry budget)


@dataclass(frozen=True)
class Attempt:
    """One try of one delivery, and what the destination said."""

    delivery_id: int
    number: int  # 1-based
    started_at: float
    latency: float  # seconds
    outcome: AttemptOutcome
    code: str = ""  # ACK code (AA/AE/AR) or HTTP status
    response: bytes = b""
    error: str = ""
    # the delivery's state after this attempt
    next_attempt_at: float | None = None  # set when outcome == "retry"


@dataclass(frozen=True)
class MessageRow:
    id: int
    received_at: float
    listener: str
    content_type: str
    charset: str
    keys: MessageKeys
    status: MessageStatus
    ack_code: str
    error: str
    replay_of: int | None
    duplicate_of: int | None
    size: int


@dataclass(frozen=True)
class ChannelResultRow:
    id: int
    message_id: int
    channel: str
    status: ResultStatus
    output: bytes
    error: str
    error_step: str
    error_location: str


@dataclass(frozen=True)
class MessageDetail:
    message: MessageRow
    raw: bytes
    ack: bytes
    results: tuple[ChannelResultRow, ...]
    deliveries: tuple[Delivery, ...]
    attempts: tuple[Attempt, ...]
    replays: tuple[int, ...]  # ids of messages that replay this one
    appointment: AppointmentVersionRow | None = None  # the version this message carried


@dataclass(frozen=True)
class MessageFilter:
    status: MessageStatus | None = None
    channel: str | None = None  # has a result for this channel
    destination: str | None = None  # has a delivery to this destination
    # With destination (or alone): deliveries in this status.
    delivery_status: DeliveryStatus | None = None
    since: float | None = None
    until: float | None = None
    control_id: str | None = None
    patient_id: str | None = None
    appointment_id: str | None = None
    message_type: str | None = None
    ack_code: str | None = None  # what the engine answered (MSA-1: AA / AE / AR); "" = none
    # True: only messages whose recorded appointment version has warnings (a conflict was
    # flagged or rejected); False: only the others, messages without an appointment included.
    flagged: bool | None = None
    # With flagged: True only conflicts a person resolved, False only those still open.
    resolved: bool | None = None
    limit: int = 100
    before_id: int | None = None  # paging: only ids below this (newest first)


@dataclass(frozen=True)
class ActivityRow:
    """How many of one channel's results (`scope` channel: ok, filtered, error, duplicate) or
    one destination's deliveries (`scope` destination: queued, sent, failed, discarded) are
    in `status` among the messages received in time bucket `bucket` (0-based from the
    window's start)."""

    scope: Literal["channel", "destination"]
    name: str
    bucket: int
    status: str
    count: int
    latency: float = 0.0  # sent deliveries: mean seconds from the message's receipt to sent


@dataclass(frozen=True)
class StoreStats:
    commits: int = 0
    rows: int = 0
    commit_seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


class Store(Protocol):
    async def open(self) -> None:
        """Create or migrate the schema and start the writer."""

    async def close(self) -> None:
        """Flush pending writes and close."""

    async def ingest(self, item: Ingest) -> Ingested:
        """Commit a message with its channel results and queued deliveries, all or nothing."""

    async def ingest_all(self, items: list[Ingest]) -> list[Ingested]:
        """Commit several messages in one transaction, all or nothing (a FHIR transaction
        Bundle). Appointment versions of one key are applied in list order. Results are in
        list order; when one item fails, the call raises its error and none is stored (other
        callers' writes sharing the commit are unaffected). An empty list writes nothing."""

    async def add_deliveries(
        self, message_id: int, deliveries: tuple[NewDelivery, ...], claimed: bool = True
    ) -> tuple[int, ...]:
        """Queue more deliveries for a stored message (an appointment.sync_failed event), as
        `ingest` queues them: `claimed` True = held by this process, False = left for a runner
        to claim. Returns their ids in order; LookupError when the message does not exist."""

    async def appointment(self, key: str) -> AppointmentRow | None:
        """The current version of the appointment with this key."""

    async def appointment_by_id(self, appointment_id: str) -> AppointmentRow | None:
        """The current version of the appointment with this engine id."""

    async def overlapping(
        self,
        actors: tuple[str, ...],
        start: float,
        end: float,
        *,
        exclude_key: str = "",
        exclude_statuses: frozenset[str] = frozenset(),
        limit: int = 1000,
    ) -> list[AppointmentRow]:
        """Current versions of appointments holding one of `actors` over a time that
        overlaps [start, end) (half-open: touching intervals do not overlap), each once, by
        start then key, at most `limit`; not `exclude_key` and none whose status is in
        `exclude_statuses`. An empty interval (end <= start) overlaps nothing."""

    async def appointment_history(self, key: str) -> list[AppointmentVersionRow]:
        """Every recorded version of the appointment, whatever its disposition, in the order
        the store recorded them (oldest first)."""

    async def find_duplicate(
        self, sender: str, control_id: str, since: float
    ) -> DuplicateHit | None:
        """The newest original message with this MSH-3 and MSH-10 received at or after
        `since`, including ones whose `ingest` has not returned yet. Originals are messages
        answered AA (status processed or error, not replays): a message answered AE or AR
        is processed again when resent, since the sender was told it may fix and resend."""

    async def set_ack(self, message_id: int, ack_code: str, ack: bytes) -> None:
        """Replace the stored ACK of a message (the `delivered` policy answers after the
        destinations did, so what was sent differs from what was stored with the message)."""

    async def record_attempt(self, attempt: Attempt) -> None:
        """Store an attempt and move its delivery: sent / failed / queued for `next_attempt_at`."""

    async def claim_queued(self, destinations: list[str], limit: int) -> list[Delivery]:
        """Queued deliveries of these destinations that no runner holds yet, oldest first,
        now marked as held by this runner. New deliveries from `ingest` are held already."""

    async def release_claims(self, destinations: list[str] | None = None) -> int:
        """At start-up: every queued delivery becomes claimable again (the previous process
        is gone, so whatever it held resumes here). With `destinations`, only theirs (a
        reload rebuilding those destinations' lanes). Returns how many."""

    async def requeue(self, delivery_ids: list[int]) -> int:
        """Failed deliveries back to queued and claimable (an operator's retry); returns count."""

    async def requeue_failed(self, destination: str) -> int:
        """Every failed delivery of a destination back to queued, keeping their order."""

    async def discard(self, delivery_ids: list[int]) -> int:
        """Failed deliveries to `discarded` (an operator gives up on them); returns count.
        Queued ones are left alone: a running engine's lane holds them."""

    async def resolve_conflict(
        self, message_id: int, by: str, outcome: Resolution
    ) -> ResolveOutcome:
        """Record that `by` resolved the flagged conflict of the message (once)."""

    async def search(self, flt: MessageFilter) -> list[MessageRow]:
        """Messages matching the filter, newest first."""

    async def get(self, message_id: int) -> MessageDetail | None: ...

    async def activity(self, since: float, until: float, bucket: float) -> list[ActivityRow]:
        """Counts per channel and destination of the messages received in [since, until),
        by bucket of `bucket` seconds (the dashboard's charts)."""

    async def deliveries(
        self, destination: str | None = None, status: str | None = None, limit: int = 1000
    ) -> list[Delivery]:
        """Deliveries in id (= arrival) order."""

    def stats(self) -> StoreStats: ...

    async def probe(self) -> None:
        """A write through the store's writer that changes nothing (readiness): returns once
        a transaction carrying it committed; raises what the store's writes would raise
        (closed, locked by another process past the busy timeout, I/O error)."""

    def observe_commits(self, observer: Callable[[float], None]) -> None:
        """Call `observer(seconds)` after every committed transaction, with the time its
        COMMIT took (metrics); on the event loop, so it must be quick."""
