"""The dashboard's read of the SQLite store: per channel and destination counts over time
buckets of a recent window (what `POST /api/stats` charts).

Rules kept: the window is found through `messages_received_at` and each message's results
and deliveries through their `message_id` indexes, so the cost follows the window's traffic,
never the store's size; SQLite aggregates, so what crosses into Python is one row per name,
bucket and status, whatever the traffic. A message counts in the bucket it was received in;
so do its deliveries, whose latency is from receipt to the moment they were sent.
"""

from __future__ import annotations

import sqlite3
from typing import Final

from engine.store.base import ActivityRow

_CHANNELS: Final = """SELECT c.channel, CAST((m.received_at - :since) / :bucket AS INTEGER) AS b,
        c.status, COUNT(*), 0.0
    FROM messages m JOIN channel_results c ON c.message_id = m.id
    WHERE m.received_at >= :since AND m.received_at < :until
    GROUP BY c.channel, b, c.status"""
_DESTINATIONS: Final = """SELECT d.destination,
        CAST((m.received_at - :since) / :bucket AS INTEGER) AS b, d.status, COUNT(*),
        AVG(CASE WHEN d.status = 'sent' THEN d.updated_at - m.received_at END)
    FROM messages m JOIN deliveries d ON d.message_id = m.id
    WHERE m.received_at >= :since AND m.received_at < :until
    GROUP BY d.destination, b, d.status"""


def activity(
    conn: sqlite3.Connection, since: float, until: float, bucket: float
) -> list[ActivityRow]:
    """Counts in [since, until) by bucket of `bucket` seconds (bucket 0 starts at since)."""
    if until <= since or bucket <= 0:
        return []
    params = {"since": since, "until": until, "bucket": bucket}
    conn.execute("BEGIN")  # both reads in one snapshot: a delivery's message is counted too
    try:
        channels = conn.execute(_CHANNELS, params).fetchall()
        destinations = conn.execute(_DESTINATIONS, params).fetchall()
    finally:
        conn.execute("COMMIT")
    return [ActivityRow("channel", *r[:4]) for r in channels] + [
        ActivityRow("destination", r[0], r[1], r[2], r[3], r[4] or 0.0) for r in destinations
    ]
