"""pytest-benchmark of query understanding: embedding, the cache, tagging and projection.

Targets (docs/query-understanding.md), one ONNX Runtime thread: one short query ≤ 5 ms with the
shipped model and ≤ 1.5 ms with the int8 variant; a batch of 64 short queries ≥ 200 queries/s
shipped and ≥ 400 int8; a cache hit ≤ 5 µs; tagging + projection ≤ 20 µs per query on top of
the embedding. A peer measured in the same run gives the ratios: the same model fed inputs
padded to 128 tokens, which is what the shipped tokenizer file does by default.

The "static" variant is ``minilm-static``, the token table distilled from the shipped model
(built into mixllm's cache on first use); its rows give its time as a fraction of the int8
model's in the same run, on short queries and on RouterBench-length prompts (the subset's test
prompts, read through a 256-token window; skipped where the subset is not beside the repo).

The "int8-unrewritten" variant is the int8 model built without
:mod:`mixllm.encoders.graph_rewrites` (the same vectors); its rows give the rewritten int8
model's time as a fraction of it, on short queries and on RouterBench-length prompts.

The "mpnet" variant is all-mpnet-base-v2 (float32), the stronger encoder ``mixllm encoder fetch
all-mpnet-base-v2`` installs; its rows are skipped where it has not been fetched, and the
summary gives its time as a multiple of the shipped model's in the same run.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

import workload
from mixllm.encoders.embedding import Embedder
from mixllm.understanding.projection import TagProjection
from mixllm.understanding.tagging import Tagger

SHORT_QUERIES = workload.SHORT_QUERIES
BATCH = 64
ROUTERBENCH = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "routerbench_subset_routerdc"
)
_MEDIANS: dict[str, float] = {}


@pytest.fixture(scope="module")
def shipped() -> Embedder:
    return Embedder(cache_size=0, intra_op_threads=1)


@pytest.fixture(scope="module")
def int8() -> Embedder:
    return Embedder(quantized=True, cache_size=0, intra_op_threads=1)


@pytest.fixture(scope="module")
def int8_unrewritten(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    from mixllm.encoders import graph_rewrites

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(graph_rewrites, "simplify_checked", lambda model: (model, []))
        return Embedder(
            quantized=True,
            cache_size=0,
            intra_op_threads=1,
            int8_cache_dir=tmp_path_factory.mktemp("int8-unrewritten"),
        )


@pytest.fixture(scope="module")
def static() -> Embedder:
    return Embedder(encoder="minilm-static", cache_size=0)


@pytest.fixture(scope="module")
def routerbench_prompts() -> list[str]:
    if not ROUTERBENCH.is_dir():
        pytest.skip(f"RouterBench subset not found at {ROUTERBENCH}")
    from mixllm.data import load_routerbench_csv

    return list(load_routerbench_csv(ROUTERBENCH).test().prompts)


@pytest.fixture(scope="module")
def mpnet() -> Embedder:
    from mixllm.errors import ModelFileError

    try:
        return Embedder(encoder="all-mpnet-base-v2", cache_size=0, intra_op_threads=1)
    except ModelFileError as err:
        pytest.skip(str(err))


def _versus_shipped(label: str, variant: str, median: float) -> str:
    if variant == "int8-unrewritten":
        int8 = _MEDIANS.get(f"{label} int8", float("nan"))
        return f" (the rewritten int8 takes {int8 / median:.3f}x its time)"
    if variant == "static":
        return f" ({median / _MEDIANS.get(f'{label} int8', float('nan')):.4f}x int8)"
    if variant != "mpnet":
        return ""
    return f" ({median / _MEDIANS.get(f'{label} shipped', float('nan')):.1f}x shipped)"


def _record(benchmark: Any, label: str, per: int = 1) -> float:
    median = float(benchmark.stats.stats.median) / per
    _MEDIANS[label] = median
    return median


def _one_at_a_time(embedder: Embedder) -> Any:
    cycle = itertools.cycle(SHORT_QUERIES)
    return lambda: embedder.embed([next(cycle)])


@pytest.mark.benchmark(group="embed one short query")
@pytest.mark.parametrize("variant", ["shipped", "int8", "int8-unrewritten", "static", "mpnet"])
def test_embed_one_short_query(benchmark: Any, request: Any, summary: list[str], variant: str):
    embedder = request.getfixturevalue(variant.replace("-", "_"))
    benchmark.pedantic(_one_at_a_time(embedder), rounds=300, iterations=1, warmup_rounds=20)
    median = _record(benchmark, f"one {variant}")
    summary.append(
        f"embed one short query, {variant}: median {median * 1e3:.3f} ms"
        + _versus_shipped("one", variant, median)
    )


@pytest.mark.benchmark(group="embed one short query")
def test_embed_one_short_query_padded_to_128(benchmark: Any, shipped: Embedder, summary):
    """The peer: the shipped model as its tokenizer file configures it (pad to 128 tokens)."""
    tokenizer = shipped._tokenizer
    cycle = itertools.cycle(SHORT_QUERIES)

    def padded() -> Any:
        ids = tokenizer.encode_batch([next(cycle)])[0]
        return shipped._run([ids + [0] * (128 - len(ids))])

    benchmark.pedantic(padded, rounds=100, iterations=1, warmup_rounds=10)
    median = _record(benchmark, "one padded-128")
    ratio = median / _MEDIANS.get("one shipped", float("nan"))
    summary.append(
        f"embed one short query padded to 128 tokens (the file's default; padding tokens "
        f"attended as if real, so only the time is comparable): {median * 1e3:.3f} ms, "
        f"{ratio:.1f}x the padded-to-longest time"
    )


@pytest.mark.benchmark(group="embed a batch of 64 short queries")
@pytest.mark.parametrize("variant", ["shipped", "int8", "static", "mpnet"])
def test_embed_batch_64(benchmark: Any, request: Any, summary: list[str], variant: str) -> None:
    embedder = request.getfixturevalue(variant)
    batch = SHORT_QUERIES[:BATCH]
    benchmark.pedantic(embedder.embed, args=(batch,), rounds=15, iterations=1, warmup_rounds=2)
    per_query = _record(benchmark, f"batch {variant}", BATCH)
    summary.append(
        f"embed a batch of 64 short queries, {variant}: {1 / per_query:.0f} queries/s"
        + _versus_shipped("batch", variant, per_query)
    )


@pytest.mark.benchmark(group="embed one RouterBench-length prompt")
@pytest.mark.parametrize("variant", ["int8", "int8-unrewritten", "static"])
def test_embed_one_routerbench_prompt(
    benchmark: Any,
    request: Any,
    summary: list[str],
    routerbench_prompts: list[str],
    variant: str,
) -> None:
    embedder = request.getfixturevalue(variant.replace("-", "_"))
    cycle = itertools.cycle(routerbench_prompts)
    rounds = 2000 if variant == "static" else 100
    benchmark.pedantic(
        lambda: embedder.embed([next(cycle)]), rounds=rounds, iterations=1, warmup_rounds=5
    )
    median = _record(benchmark, f"routerbench {variant}")
    summary.append(
        f"embed one RouterBench-length prompt (256-token window), {variant}: "
        f"median {median * 1e3:.3f} ms" + _versus_shipped("routerbench", variant, median)
    )


@pytest.mark.benchmark(group="cache hit")
def test_cache_hit(benchmark: Any, summary: list[str]) -> None:
    cached = Embedder(cache_size=1024)
    cached.embed(SHORT_QUERIES)
    cycle = itertools.cycle(SHORT_QUERIES)
    benchmark.pedantic(
        lambda: cached.embed([next(cycle)]), rounds=20_000, iterations=1, warmup_rounds=1000
    )
    median = _record(benchmark, "cache hit")
    ratio = _MEDIANS.get("one int8", float("nan")) / median
    summary.append(
        f"cache hit: median {median * 1e6:.2f} µs ({ratio:.0f}x faster than an int8 embedding)"
    )


@pytest.mark.benchmark(group="tag and project one query")
def test_tag_and_project(benchmark: Any, shipped: Embedder, summary: list[str]) -> None:
    tagger = Tagger(shipped)
    vectors = shipped.embed(SHORT_QUERIES)
    projection = TagProjection.fit(vectors, tagger.tag_vectors(vectors).top, d=64)
    cycle = itertools.cycle(vectors)

    def tag_and_project() -> Any:
        vector = next(cycle)
        return tagger.tag_vectors(vector), projection.context(vector)

    benchmark.pedantic(tag_and_project, rounds=20_000, iterations=1, warmup_rounds=1000)
    median = _record(benchmark, "tag+project")
    share = median / _MEDIANS.get("one int8", float("nan"))
    summary.append(
        f"tag (20 domains) + 64-d context for one embedded query: median {median * 1e6:.2f} µs "
        f"({100 * share:.1f}% of an int8 embedding)"
    )
