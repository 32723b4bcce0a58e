"""The dashboard's numbers (`POST /api/stats`): the store's activity rows laid out per
channel and destination as one series per measure, a value per time bucket.

Rules kept: every configured channel and destination is in the answer, zeros when idle (a
quiet destination shows as quiet, not as missing); only names from the configuration and
numbers leave (no PHI); the window is at most a week and at most `STATS_BUCKETS_MAX`
buckets, so an answer stays small and the store's read bounded by the window's traffic.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from engine.config.model import EngineConfig
from engine.store.base import ActivityRow

STATS_WINDOW_DEFAULT = 60  # minutes
STATS_WINDOW_MAX = 7 * 24 * 60
STATS_BUCKETS_DEFAULT = 30
STATS_BUCKETS_MAX = 288

# Result status -> measure; "received" counts every result of the channel.
_CHANNEL_MEASURES = {"filtered": "filtered", "error": "errors"}
_DESTINATION_MEASURES = ("queued", "sent", "failed")


def activity_json(
    config: EngineConfig, rows: list[ActivityRow], since: float, bucket: float, count: int
) -> dict[str, Any]:
    def zeros() -> list[float]:
        return [0] * count

    channels: dict[str, dict[str, list[float]]] = {}
    destinations: dict[str, dict[str, list[float]]] = {}
    for channel in config.channels.values():
        channels[channel.name] = {m: zeros() for m in ("received", "filtered", "errors")}
        for d in channel.destinations:
            destinations.setdefault(d.name, {
                **{m: zeros() for m in _DESTINATION_MEASURES}, "latency_ms": zeros()})
    for row in rows:
        if not 0 <= row.bucket < count:
            continue  # a float edge at the window's end
        if row.scope == "channel":
            series = channels.get(row.name)
            if series is None:  # a channel removed from the configuration since
                continue
            series["received"][row.bucket] += row.count
            measure = _CHANNEL_MEASURES.get(row.status)
            if measure:
                series[measure][row.bucket] += row.count
        else:
            series = destinations.get(row.name)
            if series is None:
                continue
            if row.status in _DESTINATION_MEASURES:
                series[row.status][row.bucket] += row.count
            if row.status == "sent":
                series["latency_ms"][row.bucket] = round(row.latency * 1000, 1)
    starts = [datetime.fromtimestamp(since + i * bucket, UTC).isoformat(timespec="seconds")
              for i in range(count)]  # fmt: skip
    return {"bucket_seconds": bucket, "buckets": starts, "channels": channels,
            "destinations": destinations}  # fmt: skip
