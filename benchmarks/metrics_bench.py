"""Micro-benchmark of what metrics cost: per message (the updates a message makes on its way
through an MLLP listener, one channel and one destination) and per scrape (`render()`).

Run: .venv/bin/python benchmarks/metrics_bench.py [--config routes.yaml]
Each figure is the best of several timing rounds, so it shows the code, not the noise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from timing import per_op_us  # benchmarks/timing.py (run as a script)

from engine.config import load
from engine.runtime.metrics import Metrics
from engine.store.base import NewChannelResult

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "routes.yaml")
    parser.add_argument("--number", type=int, default=50_000)
    args = parser.parse_args()
    config = load(args.config)
    metrics = Metrics(config)
    listener = metrics.listeners[next(iter(config.listeners))]
    channel = next(iter(config.channels.values()))
    destination = metrics.destination(channel.name, channel.destinations[0].name)
    results = (NewChannelResult(channel.name, "ok"),)

    def one_message() -> None:
        listener.received.inc()
        metrics.processed(results)
        listener.ack_seconds.observe(0.006)
        destination.sent.inc()
        destination.latency_seconds.observe(0.02)

    message_us = per_op_us(one_message, args.number)
    inc_us = per_op_us(listener.received.inc, args.number)
    observe_us = per_op_us(lambda: listener.ack_seconds.observe(0.006), args.number)
    render_ms = per_op_us(metrics.render, 200) / 1000
    size = len(metrics.render()[0])
    print(f"metrics per message (received, processed, ACK latency, sent, delivery latency): "
          f"{message_us:.2f} µs")  # fmt: skip
    print(f"  counter inc {inc_us:.2f} µs, histogram observe {observe_us:.2f} µs")
    print(f"render (one scrape of {args.config.name}: {len(config.listeners)} listeners, "
          f"{len(config.channels)} channels): {render_ms:.2f} ms, {size} bytes")


if __name__ == "__main__":
    main()
