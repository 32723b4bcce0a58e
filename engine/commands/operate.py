"""`engine replay` and `engine retry`: the operator's ways to send things again."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import TextIO

from tqdm import tqdm

from engine.commands.inspect import filter_query, message_filter
from engine.commands.output import table
from engine.config.model import EngineConfig
from engine.runtime.clock import SystemClock
from engine.runtime.engine import compile_config
from engine.runtime.replay import Replayer, ReplayPlan
from engine.security.audit import AuditEvent, AuditHook
from engine.store.base import MessageFilter, Store

PAGE = 1000


async def _select(store: Store, args: argparse.Namespace, patients: list[str]) -> list[int]:
    """The ids to replay; `patients` collects the patient ids they name, for the audit."""
    if args.ids:
        return list(args.ids)
    ids: list[int] = []
    before: int | None = None
    flt = message_filter(args, limit=PAGE)
    while True:
        page = await store.search(dataclasses.replace(flt, before_id=before))
        # A replay or a duplicate is a copy of an original the filter also finds; selecting
        # it too would send the same message twice.
        chosen = [r for r in page if r.status != "duplicate" and r.replay_of is None]
        ids.extend(r.id for r in chosen)
        patients.extend(p for r in chosen for p in r.keys.patient_ids)
        if len(page) < PAGE or (args.limit and len(ids) >= args.limit):
            break
        before = page[-1].id
    ids = ids[: args.limit] if args.limit else ids
    return sorted(ids)  # oldest first: replays keep the original order


async def replay(
    store: Store,
    config: EngineConfig,
    args: argparse.Namespace,
    out: TextIO = sys.stdout,
    audit: AuditHook | None = None,
) -> int:
    # No ids and an empty filter would replay the whole store.
    if not args.ids and message_filter(args, limit=PAGE) == MessageFilter(limit=PAGE):
        sys.stderr.write("engine: say which messages to replay: IDs or at least one filter\n")
        return 2
    ids: list[int] = []
    patients: list[str] = []
    plans: list[ReplayPlan] = []
    code = -1  # stays so when the replay raised
    try:
        code = await _replay(store, config, args, out, ids, patients, plans)
    finally:
        if audit is not None:  # once the store was touched, also when the replay failed
            query = {**filter_query(args), "to": args.to, "dry_run": args.dry_run}
            audit(
                AuditEvent(
                    "E",
                    "engine replay",
                    outcome=0 if code == 0 else 4 if code > 0 else 8,
                    message_ids=tuple(ids or dict.fromkeys(args.ids)),
                    patient_ids=tuple(dict.fromkeys(patients)),
                    query={k: v for k, v in query.items() if v is not None},
                    count=len(plans),
                )
            )
    return code


async def _replay(
    store: Store,
    config: EngineConfig,
    args: argparse.Namespace,
    out: TextIO,
    ids: list[int],
    patients: list[str],
    plans: list[ReplayPlan],
) -> int:
    """The replay itself; fills `ids`, `patients` and `plans` as it learns them."""
    missing = []
    for i in dict.fromkeys(args.ids):
        detail = await store.get(i)
        if detail is None:
            missing.append(i)
        else:
            patients.extend(detail.message.keys.patient_ids)
    if missing:
        # A mistyped id stops the whole command: half a replay is harder to reason about.
        sys.stderr.write(
            f"engine: no message {', '.join(map(str, missing))}; nothing was replayed\n"
        )
        return 1
    ids.extend(await _select(store, args, patients))
    replayer = Replayer(config, compile_config(config), store, SystemClock())
    bar = tqdm(total=len(ids), unit="msg", disable=None if len(ids) > 20 else True, file=sys.stderr)

    def advance(plan: ReplayPlan) -> None:
        bar.update(1)

    try:
        plans.extend(await replayer.replay(ids, to=args.to, dry_run=args.dry_run, progress=advance))
    except ValueError as exc:
        sys.stderr.write(f"engine: {exc}\n")
        return 2
    finally:
        bar.close()
    rows = []
    for plan in plans:
        if plan.rejection:
            rows.append((plan.original, plan.replay_id or "-", "-", "-", "-", plan.rejection))
        for o in plan.outcomes:
            if o.status != "ok":
                rows.append(
                    (
                        plan.original,
                        plan.replay_id or "-",
                        o.channel,
                        "-",
                        "-",
                        o.status + (f": {o.error}" if o.error else ""),
                    )
                )
        for channel, destination, lane, size in plan.sends:
            rows.append(
                (
                    plan.original,
                    plan.replay_id or "-",
                    channel,
                    destination,
                    lane or "-",
                    f"{size} bytes",
                )
            )
    table(["MESSAGE", "REPLAY", "CHANNEL", "DESTINATION", "LANE", "WHAT"], rows, out)
    sends = sum(len(p.sends) for p in plans)
    if args.dry_run:
        out.write(
            f"dry run: {len(plans)} message(s) would queue {sends} delivery(ies); "
            "nothing was written\n"
        )
    else:
        out.write(
            f"replayed {len(plans)} message(s), queued {sends} delivery(ies); the running "
            "engine sends them\n"
        )
    return 0


async def retry(
    store: Store, args: argparse.Namespace, out: TextIO = sys.stdout, audit: AuditHook | None = None
) -> int:
    if args.delivery_ids and args.destination:
        sys.stderr.write("engine: give delivery ids or --destination, not both\n")
        return 2
    if args.delivery_ids:
        wanted = list(dict.fromkeys(args.delivery_ids))
        count = await store.requeue(wanted)
        where = f"among {', '.join(map(str, wanted))}"
    elif args.destination:
        wanted = []
        count = await store.requeue_failed(args.destination)
        where = f"to {args.destination}"
    else:
        sys.stderr.write("engine: say what to retry: DELIVERY_ID... or --destination NAME\n")
        return 2
    if audit is not None:
        selection = {"delivery_ids": wanted} if wanted else {"destination": args.destination}
        audit(
            AuditEvent("E", "engine retry", outcome=0 if count else 4, query=selection, count=count)
        )
    if not count:
        sys.stderr.write(f"engine: nothing requeued: no failed delivery {where}\n")
        return 1
    skipped = len(wanted) - count if wanted else 0
    out.write(
        f"requeued {count} failed delivery(ies)"
        + (f" ({skipped} of those named are not failed)" if skipped > 0 else "")
        + "; the running engine sends them in their original order\n"
    )
    return 0
