"""The gateway's Prometheus metrics (one registry per app, so apps in one process do not mix)
and each model's observed speed."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["GatewayMetrics", "ObservedSpeed"]

# Seconds, from a cached short answer to a long generation.
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mixllm_requests", "Chat completions answered, by model and outcome",
            ["model", "outcome"], registry=r,
        )  # fmt: skip
        self.rejected = Counter(
            "mixllm_rejected_requests", "Requests refused before routing, by HTTP status",
            ["status"], registry=r,
        )  # fmt: skip
        self.upstream_errors = Counter(
            "mixllm_upstream_errors", "Upstream failures, by model and kind",
            ["model", "kind"], registry=r,
        )  # fmt: skip
        self.fallbacks = Counter(
            "mixllm_fallbacks", "Requests sent on to the next model after a failure, by the "
            "model that failed", ["model"], registry=r,
        )  # fmt: skip
        self.cooldowns = Counter(
            "mixllm_cooldowns", "Times a model was cooled down", ["model"], registry=r
        )
        self.decisions = Counter(
            "mixllm_decisions", "Routing decisions, by chosen model", ["model"], registry=r
        )
        self.feedback = Counter(
            "mixllm_feedback", "Feedback received, by kind and whether it was learned",
            ["kind", "learned"], registry=r,
        )  # fmt: skip
        # trigger: "scheduled" (the gateway's refit_every_feedbacks / refit_every_s) or
        # "automatic" (the router's own, refit_growth).
        self.refits = Counter(
            "mixllm_refits", "Background refits of the router, by outcome (ok, failed, "
            "discarded) and trigger (scheduled, automatic)", ["outcome", "trigger"], registry=r,
        )  # fmt: skip
        self.disconnects = Counter(
            "mixllm_client_disconnects", "Requests the client left (or shutdown cut) before "
            "their answer ended",
            ["model"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "mixllm_request_latency_seconds", "Upstream latency of answered requests",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "mixllm_time_to_first_token_seconds", "Time to the first streamed token",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "mixllm_requests_in_flight", "Requests being answered, by model", ["model"],
            registry=r,
        )  # fmt: skip
        self.observed_ttft = Gauge(
            "mixllm_observed_ttft_seconds", "Moving average of the time to first token",
            ["model"], registry=r,
        )  # fmt: skip
        self.observed_tokens_per_s = Gauge(
            "mixllm_observed_tokens_per_second", "Moving average of generation speed",
            ["model"], registry=r,
        )  # fmt: skip


class ObservedSpeed:
    """Exponential moving averages of each model's time to first token and tokens/s."""

    def __init__(self, metrics: GatewayMetrics, smoothing: float = 0.2) -> None:
        self._metrics = metrics
        self._smoothing = smoothing
        self._lock = threading.Lock()
        self._ttft: dict[str, float] = {}
        self._tokens_per_s: dict[str, float] = {}

    def _blend(self, table: dict[str, float], model: str, value: float) -> float:
        old = table.get(model)
        new = value if old is None else old + self._smoothing * (value - old)
        table[model] = new
        return new

    def record(
        self, model: str, *, ttft_s: float | None, generation_s: float, output_tokens: float
    ) -> None:
        """One answer's speed. Only a stream tells its first token apart from the rest, so an
        answer without ``ttft_s`` (not streamed) is not counted: its time mixes both."""
        if ttft_s is None:
            return
        with self._lock:
            self._metrics.observed_ttft.labels(model).set(self._blend(self._ttft, model, ttft_s))
            if output_tokens > 1 and generation_s > 0:
                speed = self._blend(self._tokens_per_s, model, output_tokens / generation_s)
                self._metrics.observed_tokens_per_s.labels(model).set(speed)

    def of(self, model: str) -> dict[str, float | None]:
        with self._lock:
            return {
                "observed_ttft_s": self._ttft.get(model),
                "observed_tokens_per_s": self._tokens_per_s.get(model),
            }
