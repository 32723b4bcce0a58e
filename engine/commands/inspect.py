"""`engine messages` (search the store) and `engine show ID` (the whole story of one message)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

from engine.commands.output import dump_json, segments, table, when
from engine.security.audit import AuditEvent, AuditHook
from engine.store import views
from engine.store.base import (
    AppointmentVersionRow,
    MessageFilter,
    Store,
)
from engine.store.views import detail_json, message_json, search_entities


def parse_time(text: str) -> float:
    """ISO date/time (local time unless it says otherwise) or a relative `-2h`, `-30m`, `-1d`."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text.startswith("-") and text[-1:] in units and text[1:-1].isdigit():
        return datetime.now().timestamp() - int(text[1:-1]) * units[text[-1]]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected an ISO date/time like 2026-11-21T09:30 or a relative time like -2h, "
            f"got '{text}'"
        ) from exc


def add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", choices=["processed", "error", "rejected", "duplicate"])
    parser.add_argument("--channel")
    parser.add_argument("--destination")
    parser.add_argument("--delivery-status", choices=["queued", "sent", "failed", "discarded"])
    parser.add_argument("--since", type=parse_time, help="ISO time or -2h / -30m / -1d")
    parser.add_argument("--until", type=parse_time)
    parser.add_argument("--control-id")
    parser.add_argument("--patient-id")
    parser.add_argument("--appointment-id")
    parser.add_argument("--type", dest="message_type", help="e.g. SIU^S12 or Appointment")
    parser.add_argument(
        "--ack-code", help="what the engine answered (MSA-1): AA, AE or AR; '' for no ACK"
    )
    parser.add_argument(
        "--flagged",
        action="store_true",
        default=None,
        help="only messages whose appointment was flagged (double booking, out of order, ...)",
    )
    conflicts = parser.add_mutually_exclusive_group()
    conflicts.add_argument("--resolved", action="store_true", default=None,
                           help="only flagged conflicts a person resolved")
    conflicts.add_argument("--unresolved", dest="resolved", action="store_false",
                           help="only flagged conflicts still open (implies --flagged)")
    parser.add_argument("--limit", type=int, default=100)


def message_filter(args: argparse.Namespace, limit: int | None = None) -> MessageFilter:
    return MessageFilter(
        status=args.status,
        channel=args.channel,
        destination=args.destination,
        delivery_status=args.delivery_status,
        since=args.since,
        until=args.until,
        control_id=args.control_id,
        patient_id=args.patient_id,
        appointment_id=args.appointment_id,
        message_type=args.message_type,
        ack_code=args.ack_code,
        flagged=True if args.resolved is not None else args.flagged,
        resolved=args.resolved,
        limit=limit if limit is not None else args.limit,
    )


def filter_query(args: argparse.Namespace) -> dict[str, Any]:
    """The filter as given, for the audit record of a search."""
    return views.filter_query(message_filter(args))


async def messages(
    store: Store, args: argparse.Namespace, out: TextIO = sys.stdout, audit: AuditHook | None = None
) -> int:
    rows = await store.search(message_filter(args))
    if audit is not None:  # before anything is shown: what cannot be audited is not printed
        audit(
            # A search is an execute in IHE BALP ("Query").
            AuditEvent("E", "engine messages", query=filter_query(args), **search_entities(rows))
        )
    details = [await store.get(r.id) for r in rows]
    deliveries = {
        d.message.id: " ".join(f"{x.destination}:{x.status}" for x in d.deliveries)
        for d in details
        if d is not None
    }
    if args.json:
        rows_json = [{**message_json(r, when), "deliveries": deliveries.get(r.id, "")}
                     for r in rows]  # fmt: skip
        dump_json(rows_json, out)
        return 0
    table(
        ["ID", "RECEIVED", "LISTENER", "TYPE", "CONTROL ID", "STATUS", "ACK", "DELIVERIES"],
        [
            (
                r.id,
                when(r.received_at),
                r.listener,
                r.keys.message_type,
                r.keys.control_id,
                r.status
                + (f" of {r.duplicate_of}" if r.duplicate_of else "")
                + (f" (replay of {r.replay_of})" if r.replay_of else ""),
                r.ack_code,
                deliveries.get(r.id, ""),
            )
            for r in rows
        ],
        out,
    )
    if not rows:
        out.write("(no messages match)\n")
    return 0


async def show(
    store: Store,
    message_id: int,
    as_json: bool,
    out: TextIO = sys.stdout,
    audit: AuditHook | None = None,
) -> int:
    detail = await store.get(message_id)
    if audit is not None:  # before anything is shown, and an attempt on a missing id too
        keys = detail.message.keys if detail is not None else None
        audit(
            AuditEvent(
                "R",
                "engine show",
                outcome=0 if detail is not None else 4,
                message_ids=(message_id,),
                patient_ids=keys.patient_ids if keys else (),
                appointment_ids=keys.appointment_ids if keys else (),
            )
        )
    if detail is None:
        sys.stderr.write(f"engine: no message {message_id}\n")
        return 1
    if as_json:
        dump_json(detail_json(detail, when), out)
        return 0
    m, codec = detail.message, detail.message.charset or "utf-8"
    w = out.write
    w(
        f"message {m.id}  {m.keys.message_type}  control id {m.keys.control_id}  "
        f"from {m.keys.sender}/{m.keys.facility}\n"
    )
    w(
        f"  received {when(m.received_at)} on {m.listener}  status {m.status}  "
        f"ACK {m.ack_code or '-'}  {m.size} bytes  charset {codec}\n"
    )
    if m.error:
        w(f"  error: {m.error}\n")
    if m.replay_of:
        w(f"  replay of message {m.replay_of}\n")
    if m.duplicate_of:
        w(f"  duplicate of message {m.duplicate_of} (answered with its ACK, not processed)\n")
    if detail.replays:
        w(f"  replayed as: {', '.join(str(r) for r in detail.replays)}\n")
    if detail.appointment is not None:
        _appointment(detail.appointment, w)
    w("\nraw:\n")
    for seg in segments(detail.raw, codec):
        w(f"  {seg}\n")
    if detail.ack:
        w("\nACK sent:\n")
        for seg in segments(detail.ack, codec):
            w(f"  {seg}\n")
    for result in detail.results:
        w(f"\nchannel {result.channel}: {result.status}\n")
        if result.error:
            w(
                f"  error in {result.error_step or '?'}"
                f"{' at ' + result.error_location if result.error_location else ''}: "
                f"{result.error}\n"
            )
        if result.output:
            w("  output:\n")
            for seg in segments(result.output, codec):
                w(f"    {seg}\n")
    for delivery in detail.deliveries:
        w(
            f"\ndelivery {delivery.id} to {delivery.destination} ({delivery.channel}): "
            f"{delivery.status}, {delivery.attempts} attempt(s)"
            f"{', lane ' + delivery.lane if delivery.lane else ''}\n"
        )
        if delivery.status == "queued" and delivery.attempts:
            w(f"  next attempt {when(delivery.next_attempt_at)}\n")
        for attempt in (a for a in detail.attempts if a.delivery_id == delivery.id):
            w(
                f"  attempt {attempt.number} at {when(attempt.started_at)}: {attempt.outcome}"
                f"{' ' + attempt.code if attempt.code else ''} "
                f"in {attempt.latency * 1000:.1f} ms"
                f"{' - ' + attempt.error if attempt.error else ''}\n"
            )
            for seg in segments(attempt.response, codec) if attempt.response else []:
                w(f"    {seg}\n")
    return 0


def _appointment(version: AppointmentVersionRow, w: Callable[[str], object]) -> None:
    """What the message did to its appointment, and what looked wrong about it."""
    number = f"version {version.version}" if version.version is not None else "not current"
    w(
        f"  appointment {version.key}: {version.change}, status {version.status}, "
        f"{number} ({version.disposition})\n"
    )
    for warning in version.warnings:
        w(f"  FLAGGED {warning.kind}: {warning.text}\n")
