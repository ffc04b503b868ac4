"""pytest-benchmark of `Router.route` end to end, one thread: text in, decision out.

Targets (one ONNX Runtime thread, the shipped router's 11 models): p50 ≤ 5 ms with the shipped
embedding model, ≤ 2 ms with the int8 variant, ≤ 20 µs on an embedding-cache hit. The peer in
the same run is the embedding alone: the routing overhead on top of it is the ratio.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import pytest

import workload
from mixllm.encoders.embedding import Embedder
from mixllm.routing.router import Router

SHORT_QUERIES = workload.SHORT_QUERIES
_MEDIANS: dict[str, float] = {}


def _router(embedder: Embedder, *, cache: bool) -> Router:
    shipped = Router.default(embedder=embedder)
    settings = replace(shipped.config.embedder, cache_size=4096 if cache else 0)
    # A bounded number of open decisions: each route past the cap drops the oldest, as a
    # service that never sends feedback would.
    config = replace(shipped.config, embedder=settings, max_pending=1000)
    return Router(config, embedder=embedder, projection=shipped.projection, policy=shipped.policy)


@pytest.fixture(scope="module", params=["shipped", "int8"])
def variant(request: Any) -> tuple[str, Embedder]:
    return request.param, Embedder(quantized=request.param == "int8", cache_size=0)


@pytest.mark.benchmark(group="route one short query (cache miss)")
def test_route_cache_miss(benchmark: Any, variant: tuple[str, Embedder], summary: list[str]):
    name, embedder = variant
    router = _router(embedder, cache=False)
    texts = itertools.cycle(SHORT_QUERIES)
    benchmark(lambda: router.route(next(texts)))
    route_median = float(benchmark.stats.stats.median)
    _MEDIANS[f"route {name}"] = route_median
    summary.append(f"route, {name} model, cache miss: p50 {route_median * 1e3:.2f} ms")


@pytest.mark.benchmark(group="embed one short query (the peer)")
def test_embed_alone(benchmark: Any, variant: tuple[str, Embedder], summary: list[str]):
    name, embedder = variant
    texts = itertools.cycle(SHORT_QUERIES)
    benchmark(lambda: embedder.embed([next(texts)]))
    embed_median = float(benchmark.stats.stats.median)
    routed = _MEDIANS.get(f"route {name}")
    if routed is not None:
        summary.append(
            f"route / embed alone, {name}: {routed / embed_median:.2f}x "
            f"(routing adds {(routed - embed_median) * 1e6:.0f} µs)"
        )


@pytest.mark.benchmark(group="route a repeated query (cache hit)")
def test_route_cache_hit(benchmark: Any, summary: list[str]):
    router = _router(Embedder(cache_size=0), cache=True)
    text = SHORT_QUERIES[0]
    router.route(text)
    benchmark(lambda: router.route(text))
    median = float(benchmark.stats.stats.median)
    summary.append(f"route, cache hit: p50 {median * 1e6:.1f} µs")


@pytest.mark.benchmark(group="route a 1 MB query (cache miss)")
def test_route_a_megabyte_query(benchmark: Any, summary: list[str]):
    """A huge prompt costs what the encoder's window and the counted prefix cost, not its
    length: the ratio to a short query's route in the same run shows it."""
    router = _router(Embedder(quantized=True, cache_size=0), cache=False)
    sentence = SHORT_QUERIES[0] + " "
    texts = itertools.cycle([f"{i} " + sentence * (1_000_000 // len(sentence)) for i in range(4)])
    benchmark(lambda: router.route(next(texts)))
    median = float(benchmark.stats.stats.median)
    summary.append(f"route, 1 MB query, int8 model: p50 {median * 1e3:.1f} ms")
    short = _MEDIANS.get("route int8")
    if short is not None:
        summary.append(f"route 1 MB / route short, int8: {median / short:.1f}x")
