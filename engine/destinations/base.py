"""What a destination is: `send(payload) -> Sent | Retry | Reject`, nothing more.

A destination never transforms (the channel already did) and never touches the store (the
delivery lane records every attempt). It owns its connection(s) and reports, for each send,
what the other side said. `concurrency` is how many sends may be in flight at once; lanes of
the destination share that many slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Sent:
    code: str = ""  # ACK code (AA) or HTTP status
    response: bytes = b""


@dataclass(frozen=True)
class Retry:
    """Transient failure: try again later (per the retry policy)."""

    reason: str
    code: str = ""
    response: bytes = b""
    after: float | None = None  # seconds the other side asked us to wait (Retry-After)


@dataclass(frozen=True)
class Reject:
    """Permanent failure: retrying the same payload cannot succeed."""

    reason: str
    code: str = ""
    response: bytes = b""


Outcome = Sent | Retry | Reject


@dataclass(frozen=True)
class DeliveryMeta:
    delivery_id: int
    message_id: int
    channel: str


class Destination(Protocol):
    name: str
    concurrency: int

    async def send(self, payload: bytes, meta: DeliveryMeta) -> Outcome: ...

    async def close(self) -> None: ...
