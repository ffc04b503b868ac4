"""pytest-benchmark of replicas sharing their learning through Redis (a redis-server started
for the run on a free loopback port, its append-only file synced once a second as Redis does by
default; skipped without one).

- `route` on an embedding-cache hit (the decision path) with and without a store attached,
  in alternating rounds of the same run, back to back and paced at a serving rate: the target
  is within 10%;
- `complete` with an answer's length (the gateway's call when an upstream has answered) with and
  without a store attached, in alternating rounds of the same run: with the store it only
  queues the length, which a background thread learns and appends;
- feedback with the store (learn + append to the stream) and applying another replica's
  observations: observations per second on this machine;
- replication lag, p50/p99: the time from an observation's append to its being applied on
  another replica, at a steady total rate of 1,000 and 10,000 observations/s.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from mixllm.encoders.embedding import Embedder
from mixllm.routing.router import Router
from mixllm.store import Observation, RedisStore
from redis_server import RedisServer, redis_server_path

if TYPE_CHECKING:
    from numpy.typing import NDArray

pytestmark = pytest.mark.skipif(redis_server_path() is None, reason="redis-server not installed")

QUERY = "Write a Python function that returns the n-th Fibonacci number."


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with (
        tempfile.TemporaryDirectory() as folder,
        RedisServer(Path(folder), fsync="everysec") as running,
    ):
        yield running


@pytest.fixture(scope="module")
def shipped() -> Router:
    return Router.default(embedder=Embedder(quantized=True))


def _copy(shipped: Router, max_pending: int = 1000, **store: Any) -> Router:
    config = replace(shipped.config, max_pending=max_pending)
    policy = type(shipped.policy).from_bytes(shipped.policy.to_bytes())
    return Router(
        config, embedder=shipped.embedder, projection=shipped.projection, policy=policy, **store
    )


def _route_latencies(router: Router, calls: int, rate: float | None) -> NDArray[np.float64]:
    """The seconds each of ``calls`` routes takes, back to back or started ``rate`` a second."""
    took = np.empty(calls)
    clock = time.perf_counter
    start = clock()
    for i in range(calls):
        if rate is not None:
            time.sleep(max(0.0, start + i / rate - clock()))
        began = clock()
        router.route(QUERY)
        took[i] = clock() - began
    return took


@pytest.mark.benchmark(group="route, embedding cached")
@pytest.mark.parametrize("rate", [None, 2000.0], ids=["back-to-back", "2000-per-s"])
def test_route_with_and_without_the_store(
    benchmark: Any, shipped: Router, server: RedisServer, rate: float | None, summary: list[str]
) -> None:
    """`route` alone and with a store attached, in alternating rounds (the machine's load moves
    between them, not between the two), back to back (as fast as one thread routes, about
    100,000 decisions a second, each also deleting the record of the decision the pending cap
    drops) or paced at a serving rate; p50 and p99 of each round, and their ratios."""
    rounds, calls = 10, 10_000 if rate is None else 2000
    alone = _copy(shipped)
    alone.route(QUERY)  # fills the embedding cache
    stats: dict[bool, list[tuple[float, float]]] = {False: [], True: []}

    def alternate() -> None:
        for turn in range(rounds):
            for with_store in (False, True):
                router = alone
                if with_store:
                    namespace = f"route-{rate}-{turn}"
                    router = _copy(shipped, store=RedisStore(server.url, namespace=namespace))
                    router.route(QUERY)
                took = _route_latencies(router, calls, rate)
                stats[with_store].append(
                    (float(np.percentile(took, 50)), float(np.percentile(took, 99)))
                )
                if router.store is not None:
                    router.store.close()

    benchmark.pedantic(alternate, rounds=1, iterations=1)
    p50 = [np.median([s[0] for s in stats[w]]) for w in (False, True)]
    p99 = [np.median([s[1] for s in stats[w]]) for w in (False, True)]
    ratios50 = [b[0] / a[0] for a, b in zip(stats[False], stats[True], strict=True)]
    ratios99 = [b[1] / a[1] for a, b in zip(stats[False], stats[True], strict=True)]
    how = "back to back" if rate is None else f"at {rate:,.0f}/s"
    benchmark.extra_info.update(p50_ratio=p50[1] / p50[0], p99_ratio=p99[1] / p99[0])
    summary.append(
        f"route (cached embedding) {how}, median of {rounds} alternating rounds: "
        f"p50 {p50[0] * 1e6:.1f} µs alone, {p50[1] * 1e6:.1f} µs with the store "
        f"({p50[1] / p50[0]:.2f}x; rounds {min(ratios50):.2f}-{max(ratios50):.2f}x), "
        f"p99 {p99[0] * 1e6:.1f} / {p99[1] * 1e6:.1f} µs ({p99[1] / p99[0]:.2f}x; "
        f"rounds {min(ratios99):.2f}-{max(ratios99):.2f}x)"
    )


def _complete_latencies(router: Router, calls: int) -> NDArray[np.float64]:
    """The seconds each of ``calls`` completions takes, back to back, of decisions made first."""
    decisions = [router.route(QUERY) for _ in range(calls)]
    took = np.empty(calls)
    clock = time.perf_counter
    for i, decision in enumerate(decisions):
        began = clock()
        router.complete(decision.id, latency_s=0.5, output_tokens=100.0)
        took[i] = clock() - began
    return took


@pytest.mark.benchmark(group="complete")
def test_complete_with_and_without_the_store(
    benchmark: Any, shipped: Router, server: RedisServer, summary: list[str]
) -> None:
    """`complete` with a length, alone (learning it at once) and with a store attached
    (queueing it), in alternating rounds; p50 and p99 of each round, their ratios, and how long
    the store's thread took after the round to learn and append what was queued."""
    rounds, calls = 10, 2000
    stats: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    drained: list[float] = []

    def alternate() -> None:
        for turn in range(rounds):
            for with_store in (False, True):
                store = RedisStore(server.url, namespace=f"complete-{turn}") if with_store else None
                router = _copy(shipped, max_pending=calls + 1, store=store)
                router.route(QUERY)  # fills the embedding cache
                took = _complete_latencies(router, calls)
                stats[with_store].append(
                    (float(np.percentile(took, 50)), float(np.percentile(took, 99)))
                )
                if store is not None:
                    start = time.perf_counter()
                    while store.stats.buffered:
                        time.sleep(0.001)
                    drained.append(time.perf_counter() - start)
                    store.close()

    benchmark.pedantic(alternate, rounds=1, iterations=1)
    p50 = [np.median([s[0] for s in stats[w]]) for w in (False, True)]
    p99 = [np.median([s[1] for s in stats[w]]) for w in (False, True)]
    benchmark.extra_info.update(p50_ratio=p50[1] / p50[0], p99_ratio=p99[1] / p99[0])
    summary.append(
        f"complete with a length, median of {rounds} alternating rounds of {calls:,}: "
        f"p50 {p50[0] * 1e6:.1f} µs alone, {p50[1] * 1e6:.1f} µs with the store "
        f"({p50[1] / p50[0]:.2f}x), p99 {p99[0] * 1e6:.1f} / {p99[1] * 1e6:.1f} µs "
        f"({p99[1] / p99[0]:.2f}x); the queued lengths learned and appended "
        f"{np.median(drained) * 1e3:.1f} ms after each round (median)"
    )


@pytest.mark.benchmark(group="store throughput")
def test_feedback_and_apply_throughput(
    benchmark: Any, shipped: Router, server: RedisServer, summary: list[str]
) -> None:
    count = 3000
    # Every decision awaits its feedback: none is dropped by the pending cap before it comes.
    a = _copy(shipped, max_pending=count, store=RedisStore(server.url, namespace="throughput"))
    decisions = [a.route(QUERY) for _ in range(count)]

    def learn_all() -> None:
        for decision in decisions:
            a.feedback(decision.id, quality=0.7, output_tokens=100)

    benchmark.pedantic(learn_all, rounds=1, iterations=1)
    published = count / float(benchmark.stats.stats.median)
    # A replica joining now replays all of them from the stream.
    start = time.perf_counter()
    b = _copy(shipped, store=RedisStore(server.url, namespace="throughput"))
    applied = count / (time.perf_counter() - start)
    assert b.store is not None and b.store.stats.applied == count
    summary.append(
        f"one replica: {published:,.0f} feedback/s learned and appended, "
        f"{applied:,.0f} observations/s applied from the stream"
    )
    for router in (a, b):
        router.store.close()  # type: ignore[union-attr]


class _TimedStore(RedisStore):
    """Records, for each entry applied, the seconds since Redis appended it (its id's time)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lags: list[float] = []

    def _apply(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        super()._apply(entries)
        now = time.time()
        self.lags.extend(now - int(raw_id.split(b"-")[0]) / 1000 for raw_id, _ in entries)


@pytest.mark.benchmark(group="replication lag")
@pytest.mark.parametrize("rate", [1000, 10_000])
def test_replication_lag(
    benchmark: Any, shipped: Router, server: RedisServer, rate: int, summary: list[str]
) -> None:
    namespace = f"lag-{rate}"
    follower = _copy(shipped, store=_TimedStore(server.url, namespace=namespace))
    store = follower.store
    assert isinstance(store, _TimedStore)
    rng = np.random.default_rng(0)
    contexts = rng.standard_normal((256, follower.policy.dim))
    contexts[:, -1] = 1.0
    models = follower.models
    seconds, tick_s = 2.0, 0.005
    per_tick = max(1, round(rate * tick_s))
    publisher = RedisStore(server.url, namespace=namespace)._publisher
    sent = 0
    start = time.perf_counter()

    def publish_and_sync() -> None:
        nonlocal sent, start
        start = time.perf_counter()
        # The other replicas' appends at a steady total rate, in small batches every tick.
        while time.perf_counter() - start < seconds:
            pipe = publisher.pipeline(transaction=False)
            for _ in range(per_tick):
                observation = Observation(
                    id=f"bench-{sent}",
                    replica="other",
                    model=models[sent % len(models)],
                    context=contexts[sent % len(contexts)],
                    quality=0.5,
                    output_tokens=100.0,
                    weight=1.0,
                )
                pipe.xadd(store.stream_key, observation.to_fields())  # type: ignore[arg-type]
                sent += 1
            pipe.execute()
            time.sleep(max(0.0, start + (sent / per_tick) * tick_s - time.perf_counter()))
        assert store.sync(30.0)

    benchmark.pedantic(publish_and_sync, rounds=1, iterations=1)
    achieved = sent / seconds
    lags = np.array(store.lags) * 1e3
    summary.append(
        f"replication lag at {achieved:,.0f} observations/s: p50 {np.percentile(lags, 50):.1f} ms,"
        f" p99 {np.percentile(lags, 99):.1f} ms ({len(lags)} observations)"
    )
    store.close()
    publisher.close()
