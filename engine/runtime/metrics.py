"""Prometheus metrics of one running engine: what its listeners receive, what its channels make
of it, what its destinations send, fail and retry, how long ACKs, deliveries and store commits
take, and how much waits in each destination's queue.

Rules kept:
- Every label value is a configuration name (listener, channel, destination) or a fixed word
  (outcome): nothing read from a message ever becomes a label, so no PHI reaches /metrics and
  the number of series is bounded by the configuration.
- The series of every configured name are made up front, so a hot path holds its own
  counter or histogram and pays one `inc()` / `observe()` (no label lookup per message), and
  every series exists at 0 from the start (a rate over a counter that appears late is wrong).
- Gauges (queue depth, open connections) are read when scraped, from numbers the engine keeps
  in memory anyway: a scrape costs no store query.

Why prometheus_client: it is the reference implementation of the exposition format (and of
the parser the tests read it back with). Each `Metrics` has its own `CollectorRegistry`,
never the process-global one, so several engines in one process (the tests) count apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from engine.config.model import EngineConfig
from engine.store.base import NewChannelResult

# The channel status stored with each result, and the word the metric uses for it.
OUTCOMES = {"ok": "accepted", "filtered": "filtered", "error": "error"}

# Seconds. ACKs are a few ms under load and wait for the destinations under the `delivered`
# policy; deliveries include retries (seconds to minutes); a COMMIT is one fsync (~0.25 ms).
ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    300.0, 900.0, 3600.0)  # fmt: skip
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                  0.5, 1.0, 2.5)  # fmt: skip


class ListenerMetrics:
    """What one listener updates per message: `received.inc()` when it arrives and
    `ack_seconds.observe(s)` when its ACK (or HTTP answer) is written."""

    __slots__ = ("ack_seconds", "received")

    def __init__(self, received: Counter, ack_seconds: Histogram) -> None:
        self.received = received
        self.ack_seconds = ack_seconds


class DestinationMetrics:
    """What one destination's lanes update per attempt."""

    __slots__ = ("failed", "latency_seconds", "retried", "sent")

    def __init__(
        self, sent: Counter, failed: Counter, retried: Counter, latency_seconds: Histogram
    ) -> None:
        self.sent = sent
        self.failed = failed
        self.retried = retried
        self.latency_seconds = latency_seconds


Reading = Callable[[], Mapping[str, float]]


class _ScrapeGauge(Collector):
    """A gauge with one label whose values are read when scraped."""

    def __init__(self, name: str, documentation: str, label: str, read: Reading) -> None:
        self._name = name
        self._documentation = documentation
        self._label = label
        self._read = read

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self._name, self._documentation, labels=[self._label])
        for value, number in self._read().items():
            family.add_metric([value], number)
        yield family

    def describe(self) -> Iterable[Metric]:
        # Without it the registry would collect (read) once at registration to learn names.
        yield GaugeMetricFamily(self._name, self._documentation, labels=[self._label])


class Metrics:
    """The metrics of one engine. `render()` is what `/metrics` answers."""

    def __init__(self, config: EngineConfig) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self._received = Counter(
            "engine_messages_received", "Messages received (MLLP frames, FHIR writes), by "
            "listener, whatever became of them", ["listener"], registry=registry)  # fmt: skip
        self._ack = Histogram(
            "engine_ack_latency_seconds", "From a message's arrival to its ACK or HTTP answer "
            "being written, by listener", ["listener"], registry=registry,
            buckets=ACK_BUCKETS)  # fmt: skip
        self._processed = Counter(
            "engine_messages_processed", "Messages a channel ran on and that were stored, by "
            "channel and outcome (accepted, filtered, error)", ["channel", "outcome"],
            registry=registry)  # fmt: skip
        labels = ["channel", "destination"]
        self._sent = Counter(
            "engine_deliveries_sent", "Deliveries the destination took", labels,
            registry=registry)  # fmt: skip
        self._failed = Counter(
            "engine_deliveries_failed", "Deliveries given up on (rejected, or retries used "
            "up)", labels, registry=registry)  # fmt: skip
        self._retried = Counter(
            "engine_delivery_retries", "Failed attempts that will be tried again", labels,
            registry=registry)  # fmt: skip
        self._latency = Histogram(
            "engine_delivery_latency_seconds", "From a delivery being queued (or requeued by an "
            "operator) to the destination taking it, retries included", labels,
            registry=registry, buckets=DELIVERY_BUCKETS)  # fmt: skip
        self.store_commit_seconds = Histogram(
            "engine_store_commit_seconds", "Time of each store COMMIT (the fsync of a group "
            "commit)", registry=registry, buckets=COMMIT_BUCKETS)  # fmt: skip
        self._by_result: dict[tuple[str, str], Counter] = {}
        for name in config.channels:
            for status in OUTCOMES:
                self._outcome(name, status)
        self.listeners = {name: self.listener(name) for name in config.listeners}

    def listener(self, name: str) -> ListenerMetrics:
        return ListenerMetrics(self._received.labels(name), self._ack.labels(name))

    def destination(self, channel: str, name: str) -> DestinationMetrics:
        return DestinationMetrics(
            self._sent.labels(channel, name),
            self._failed.labels(channel, name),
            self._retried.labels(channel, name),
            self._latency.labels(channel, name),
        )

    def processed(self, results: Iterable[NewChannelResult]) -> None:
        """Count the channel results of a message once its commit returned."""
        by_result = self._by_result
        for result in results:
            counter = by_result.get((result.channel, result.status))
            if counter is None:  # a channel added since start
                counter = self._outcome(result.channel, result.status)
            counter.inc()

    def _outcome(self, channel: str, status: str) -> Counter:
        counter = self._processed.labels(channel, OUTCOMES.get(status, "error"))
        self._by_result[(channel, status)] = counter
        return counter

    def gauge(self, name: str, documentation: str, label: str, read: Reading) -> None:
        """A gauge read at scrape time: `read()` maps each label value to the number."""
        self.registry.register(_ScrapeGauge(name, documentation, label, read))

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition (format 0.0.4) and its Content-Type, for the admin
        server's `GET /metrics` to answer as they are."""
        return generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4
