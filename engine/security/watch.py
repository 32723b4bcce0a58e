"""The access watch: alerts on bursts of PHI reads and on PHI access outside working hours.

It runs after each audit record is committed (`AuditStore(watch=AccessWatch(...))`, for the
CLI hook and the runtime alike: the audit trail is the one place every PHI access passes) and
judges only reads and searches (`engine.security.audit.is_access`), by the record's own time.

Rules kept here:
- Burst: more than `reads` reads by one `who` within `within` seconds. Counted in the audit
  store, so reads from several CLI processes add up. One alert per burst: the alert goes with
  the read whose window first holds more than `reads` while the window of that identity's
  previous read did not; reads while the burst goes on raise nothing, and a new burst (after
  the count fell back to `reads` or fewer) raises a new alert.
- Hours: a read outside `hours` (in routes.yaml's timezone; `to` is exclusive, and a range
  whose `to` is not after `from` spans midnight, belonging to the day it starts) raises
  `ALERT access outside hours: <who>` unless that identity already read outside hours in the
  hour before (seen in the store, across processes; this process also remembers its own
  alerts), so at most one such alert per identity per hour.
- Never PHI in an alert: the identity (a staff user or client name), counts and times only.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from engine.config.model import AccessHours, AlertsConfig, BurstWatch
from engine.security.alerts import LOGGER, alert_extra
from engine.security.audit import AuditRecord, is_access
from engine.security.audit_store import AuditStore

alerts = logging.getLogger(LOGGER)

QUIET = 3600.0  # one out-of-hours alert per identity per this many seconds


def inside(hours: AccessHours, when: float) -> bool:
    """Whether unix time `when` falls within `hours`."""
    local = datetime.fromtimestamp(when, ZoneInfo(hours.timezone))
    minute = local.hour * 60 + local.minute
    day = local.weekday()
    if hours.start < hours.end:
        return day in hours.days and hours.start <= minute < hours.end
    if minute >= hours.start:  # the evening part of a shift that spans midnight
        return day in hours.days
    return minute < hours.end and (day - 1) % 7 in hours.days


@dataclass(frozen=True)
class WatchPolicy:
    """What is watched: None turns a check off."""

    burst: BurstWatch | None = field(default_factory=BurstWatch)
    hours: AccessHours | None = None

    @classmethod
    def of(cls, config: AlertsConfig) -> WatchPolicy:
        return cls(burst=config.burst, hours=config.hours)


class AccessWatch:
    """Called with each committed audit record; raises alerts, never exceptions of its own
    making (the store logs any that escape and the audited action stands)."""

    def __init__(self, policy: WatchPolicy) -> None:
        self.policy = policy
        self._lock = threading.Lock()
        self._outside_alerted: dict[str, float] = {}  # who -> time of this process's last alert

    def __call__(self, store: AuditStore, record: AuditRecord) -> None:
        if not is_access(record.event.action, record.event.what):
            return
        if self.policy.burst is not None:
            self._burst(store, record, self.policy.burst)
        if self.policy.hours is not None and not inside(self.policy.hours, record.recorded):
            self._outside(store, record)

    def _burst(self, store: AuditStore, record: AuditRecord, burst: BurstWatch) -> None:
        who, within = record.actor.who, burst.within
        count = store.count_accesses(who, record.recorded - within, record.seq)
        if count <= burst.reads:
            return
        previous = store.previous_access(who, record.seq)
        if previous is not None:
            seq, when = previous
            if store.count_accesses(who, when - within, seq) > burst.reads:
                return  # the burst was alerted already
        alerts.warning(
            "ALERT access burst: %s made %d reads in %gs", who, count, within,
            extra=alert_extra("access_burst", who=who, reads=count, within=within,
                              threshold=burst.reads),
        )  # fmt: skip

    def _outside(self, store: AuditStore, record: AuditRecord) -> None:
        who, when = record.actor.who, record.recorded
        hours = self.policy.hours
        assert hours is not None
        with self._lock:
            last = self._outside_alerted.get(who)
            if last is not None and when - last < QUIET:
                return
            earlier = store.access_times(who, when - QUIET, record.seq)
            if any(not inside(hours, t) for t in earlier):
                return
            self._outside_alerted[who] = when
        alerts.warning(
            "ALERT access outside hours: %s", who,
            extra=alert_extra("access_outside_hours", who=who, at=when),
        )  # fmt: skip
