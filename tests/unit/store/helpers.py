"""Synthetic store inputs (invented names and ids only) and a gate that holds the writer.

The gate makes batching deterministic: while the writer thread sits inside the gate's
transaction, everything submitted queues up and becomes exactly the next batch.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from dataclasses import dataclass

from engine.store.base import (
    Ingest,
    MessageKeys,
    MessageStatus,
    NewChannelResult,
    NewDelivery,
    NewMessage,
)
from engine.store.sqlite_writer import GroupCommitWriter

WAIT = 10.0  # seconds; only reached when something is broken


@dataclass
class FakeClock:
    now: float

    def __call__(self) -> float:
        return self.now


def siu(control_id: str, patient: str = "PAT001", appointment: str = "APT001") -> bytes:
    return (
        f"MSH|^~\\&|TEST_EHR|TEST_FAC|CLINIC|CLINIC_FAC|20250101120000||SIU^S12|{control_id}|P|"
        f"2.5.1\rSCH|{appointment}^TEST||||||ROUTINE|Normal|30|min\r"
        f"PID|1||{patient}^^^TEST^MR||Sample^Pat\r"
    ).encode()


def make_ingest(
    control_id: str = "CTRL001",
    *,
    sender: str = "TEST_EHR",
    received_at: float = 1_750_000_000.0,
    status: MessageStatus = "processed",
    ack_code: str = "AA",
    patients: tuple[str, ...] = ("PAT001",),
    appointments: tuple[str, ...] = ("APT001",),
    message_type: str = "SIU^S12",
    channels: tuple[str, ...] = ("chan-a",),
    destinations: tuple[str, ...] = ("dest-a",),
    claimed: bool = True,
    replay_of: int | None = None,
    duplicate_of: int | None = None,
) -> Ingest:
    """A message with one result per channel and, on the first channel, one delivery per
    destination whose payload is that channel's output."""
    raw = siu(control_id, patients[0] if patients else "", appointments[0] if appointments else "")
    output = raw.replace(b"TEST_EHR", b"MAPPED")
    return Ingest(
        message=NewMessage(
            received_at=received_at,
            listener="test-listener",
            content_type="application/hl7-v2",
            charset="utf-8",
            raw=raw,
            keys=MessageKeys(
                sender=sender,
                facility="TEST_FAC",
                control_id=control_id,
                message_type=message_type,
                version="2.5.1",
                patient_ids=patients,
                appointment_ids=appointments,
            ),
            status=status,
            ack_code=ack_code,
            ack=f"MSH|^~\\&|CLINIC||{sender}||||ACK^S12^ACK|A{control_id}|P|2.5.1\r"
            f"MSA|{ack_code}|{control_id}\r".encode(),
            replay_of=replay_of,
            duplicate_of=duplicate_of,
        ),
        results=tuple(NewChannelResult(channel=c, status="ok", output=output) for c in channels),
        deliveries=tuple(
            NewDelivery(
                channel=channels[0], destination=d, lane="", payload=output,
                next_attempt_at=received_at,
            )
            for d in destinations
        ),
        claimed=claimed,
    )


class WriterGate:
    """`await hold()`: a batch is now held just before its COMMIT, so everything submitted
    meanwhile queues up for the next one. `await release()`: let it commit and wait for it."""

    def __init__(self, writer: GroupCommitWriter) -> None:
        self._writer = writer
        self._entered = threading.Event()
        self._release = threading.Event()
        self._done: asyncio.Future[None] | None = None

    def _hold(self) -> None:
        self._writer.before_commit = None  # hold this one commit only
        self._entered.set()
        if not self._release.wait(WAIT):
            raise TimeoutError("writer gate was never released")

    @staticmethod
    def _op(conn: sqlite3.Connection, _: None) -> None:
        return None

    async def hold(self) -> None:
        self._writer.before_commit = self._hold
        self._done = self._writer.submit(self._op, None)
        entered = await asyncio.to_thread(self._entered.wait, WAIT)
        assert entered, "the writer never picked up the gate"

    async def release(self) -> None:
        """Call as the LAST awaitable of a gather: the ones before it have queued by then."""
        assert self._done is not None
        self._release.set()
        await self._done
