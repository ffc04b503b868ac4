"""A store's replication counters as Prometheus metrics, read when scraped (for `mixllm serve`;
needs prometheus-client, which the serve extra installs)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mixllm.store.redis_store import RedisStore

__all__ = ["StoreCollector"]


class StoreCollector(Collector):
    def __init__(self, store: RedisStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        stats = self._store.stats
        counters = (
            ("published", stats.published, "Observations this replica appended to the stream"),
            ("applied", stats.applied, "Other replicas' observations learned"),
            ("skipped", stats.skipped, "Stream entries not learned (duplicate, unknown model)"),
            ("dropped", stats.dropped, "Observations and lengths lost to a full buffer"),
            ("checkpoints", stats.checkpoints, "Checkpoints this replica wrote"),
            ("decisions_written", stats.decisions_written, "Decision records shared"),
            ("decisions_dropped", stats.decisions_dropped, "Decision records dropped unwritten"),
            ("recoveries", stats.recoveries, "Restarts from the checkpoint after a trimmed gap"),
        )
        for name, value, help_text in counters:
            yield CounterMetricFamily(f"mixllm_store_{name}", help_text, value=value)
        yield GaugeMetricFamily(
            "mixllm_store_buffered",
            "Observations waiting for Redis to come back, and lengths not yet learned",
            value=stats.buffered,
        )
        yield GaugeMetricFamily(
            "mixllm_store_connected",
            "1 while the last call to Redis succeeded",
            value=float(stats.connected),
        )
