"""A discrete-event simulation of a query stream served by a pool of models.

Queries arrive at fixed times (by default 100 every 10 s, evenly spaced, as in the MixLLM
paper's experiments).
Each model serves at most ``concurrency`` requests at once, first come first served; a request
takes ``ttft_s + output_tokens / tokens_per_s`` seconds once a slot is free (the output length is
the data's output token count for that model and query). Time is simulated: nothing sleeps.

A query's *waiting time* is from its arrival until its answer is complete (queue wait + time to
first token + generation), the quantity the decision core predicts as L. With a time constraint
τ, a query whose waiting time exceeds τ scores quality 0 (it still costs what the call cost).

The router sees live state: before each decision every request finished by then is reported
(:meth:`Listener.finished`, where a router calls ``Policy.end`` or ``Router.feedback`` with the
latency and learns), and the decision itself counts the request in flight (``Policy.begin`` or
``Router.route``). Routers run on the simulated clock: a query's arrival time when it is
routed, its arrival plus its waiting time when it finishes. The latency profiles are the
catalog's (``docs/model-catalog.md``).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "FixedChoices",
    "Listener",
    "ServerProfile",
    "SimulationResult",
    "Stream",
    "StreamConfig",
    "arrival_times",
    "simulate",
    "simulate_fixed",
]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]


@dataclass(frozen=True)
class StreamConfig:
    """How queries arrive and what counts as too slow.

    ``tau_s`` is the time constraint (``None``: no constraint). ``satisfied_quality`` and
    ``satisfied_wait_s`` define the paper's simulated user for binary feedback: satisfied iff
    quality > 0.7 and waiting time < 15 s.
    """

    queries_per_interval: int = 100
    interval_s: float = 10.0
    tau_s: float | None = None
    satisfied_quality: float = 0.7
    satisfied_wait_s: float = 15.0


@dataclass(frozen=True)
class ServerProfile:
    """How one model serves requests."""

    name: str
    ttft_s: float
    tokens_per_s: float
    concurrency: int


def arrival_times(n: int, config: StreamConfig) -> F64:
    """Arrival time of each of ``n`` queries: ``queries_per_interval`` evenly spread over each
    ``interval_s``."""
    step = config.interval_s / config.queries_per_interval
    times: F64 = np.arange(n, dtype=np.float64) * step
    return times


@dataclass(frozen=True)
class Stream:
    """Everything the simulation needs about the queries, per (query, model):
    quality, cost (USD) and service time (s)."""

    arrivals: F64
    quality: F64
    cost: F64
    service_s: F64
    tau_s: float | None

    @classmethod
    def build(
        cls,
        quality: F64,
        cost: F64,
        output_tokens: F64,
        servers: Sequence[ServerProfile],
        config: StreamConfig,
    ) -> Stream:
        """A stream over ``len(quality)`` queries; missing output counts get the model's mean."""
        tokens = np.array(output_tokens, dtype=np.float64)
        seen = ~np.isnan(tokens)
        means = np.where(seen, tokens, 0.0).sum(axis=0) / np.maximum(seen.sum(axis=0), 1)
        tokens = np.where(np.isnan(tokens), means[None, :], tokens)
        ttft = np.array([s.ttft_s for s in servers])
        speed = np.array([s.tokens_per_s for s in servers])
        return cls(
            arrivals=arrival_times(len(quality), config),
            quality=np.asarray(quality, dtype=np.float64),
            cost=np.asarray(cost, dtype=np.float64),
            service_s=ttft[None, :] + tokens / speed[None, :],
            tau_s=config.tau_s,
        )

    def __len__(self) -> int:
        return len(self.arrivals)


class Listener(Protocol):
    """A router driven by the simulation."""

    def choose(self, query: int, now: float) -> int:
        """The model (column) for ``query`` arriving at ``now``; count it in flight."""

    def finished(
        self, query: int, model: int, waiting_s: float, service_s: float, now: float
    ) -> None:
        """The request of ``query`` to ``model`` completed at ``now``, ``waiting_s`` after
        it arrived (its queue wait and ``service_s`` of service)."""


@dataclass(frozen=True)
class SimulationResult:
    """Per query: the model chosen, its waiting time, the quality scored (0 when the waiting
    time exceeded τ), the cost (paid either way) and whether τ was exceeded."""

    choice: I64
    waiting_s: F64
    quality: F64
    cost: F64
    violated: NDArray[np.bool_]

    @property
    def violations(self) -> int:
        """Queries whose waiting time exceeded τ."""
        return int(self.violated.sum())


def simulate(
    stream: Stream, router: Listener, servers: Sequence[ServerProfile]
) -> SimulationResult:
    """Runs the stream through ``router``; returns what each query got."""
    n = len(stream)
    slots: list[list[float]] = [[0.0] * s.concurrency for s in servers]
    events: list[tuple[float, int, int]] = []
    choice = np.empty(n, dtype=np.int64)
    waiting = np.empty(n, dtype=np.float64)
    for i in range(n):
        now = float(stream.arrivals[i])
        while events and events[0][0] <= now:
            done, j, k = heapq.heappop(events)
            router.finished(j, k, float(waiting[j]), float(stream.service_s[j, k]), done)
        k = router.choose(i, now)
        free = heapq.heappop(slots[k])
        finish = max(now, free) + float(stream.service_s[i, k])
        heapq.heappush(slots[k], finish)
        heapq.heappush(events, (finish, i, k))
        choice[i] = k
        waiting[i] = finish - now
    while events:
        done, j, k = heapq.heappop(events)
        router.finished(j, k, float(waiting[j]), float(stream.service_s[j, k]), done)
    return _score(stream, choice, waiting)


def _score(stream: Stream, choice: I64, waiting: F64) -> SimulationResult:
    rows = np.arange(len(stream))
    quality = stream.quality[rows, choice].copy()
    violated = np.zeros(len(stream), dtype=np.bool_)
    if stream.tau_s is not None:
        violated = waiting > stream.tau_s
        quality[violated] = 0.0
    return SimulationResult(choice, waiting, quality, stream.cost[rows, choice], violated)


class FixedChoices:
    """A listener that sends query i to model choice[i] and learns nothing."""

    def __init__(self, choice: I64) -> None:
        self._choice = choice

    def choose(self, query: int, now: float) -> int:
        return int(self._choice[query])

    def finished(
        self, query: int, model: int, waiting_s: float, service_s: float, now: float
    ) -> None:
        return None


def simulate_fixed(
    stream: Stream, choice: I64, servers: Sequence[ServerProfile]
) -> SimulationResult:
    """The simulation of a router whose choices do not depend on the queues."""
    if stream.tau_s is None:
        # Without a time constraint the queues change nothing that is scored.
        return _score(stream, np.asarray(choice, dtype=np.int64), np.zeros(len(stream)))
    return simulate(stream, FixedChoices(np.asarray(choice, dtype=np.int64)), servers)
