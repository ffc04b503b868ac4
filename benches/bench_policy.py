"""pytest-benchmark of the decision core called from Python: decide (d = 64, 384), update and
decide_batch (d = 64), K = 11 models. Targets (docs): decide p50 ≤ 5 µs and p99 ≤ 10 µs at
d = 64, p50 ≤ 150 µs at d = 384; update p50 ≤ 3 µs (with the default ridges, which share one
system; an own length_ridge adds a second); decide_batch ≥ 500,000 decisions/s.

Each round is one call on the next of 1,000 queries, so the round times are the per-call
distribution and p99 comes from them.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import workload

DECIDE_ROUNDS = {64: 20_000, 384: 2_000}
BATCH_ROWS = 10_000


def _per_call(benchmark, call, queries, rounds: int, summary: list[str], label: str) -> None:
    cycle = itertools.cycle(queries)
    benchmark.pedantic(
        call,
        setup=lambda: ((next(cycle),), {}),
        rounds=rounds,
        iterations=1,
        warmup_rounds=rounds // 10,
    )
    p50, p99 = np.percentile(benchmark.stats.stats.data, [50, 99]) * 1e6
    benchmark.extra_info.update(p50_us=round(p50, 3), p99_us=round(p99, 3))
    summary.append(f"{label}: p50 {p50:.2f} µs, p99 {p99:.2f} µs")


@pytest.mark.benchmark(group="decide")
@pytest.mark.parametrize("dim", [64, 384])
def test_decide(benchmark, request, summary, dim: int) -> None:
    policy = request.getfixturevalue(f"policy_{dim}")
    queries = request.getfixturevalue(f"queries_{dim}")
    call = workload.decide_once(policy)
    _per_call(benchmark, call, queries, DECIDE_ROUNDS[dim], summary, f"decide d={dim}")


@pytest.mark.benchmark(group="update")
@pytest.mark.parametrize("length_ridge", [None, 30.0], ids=["shared", "own-length-ridge"])
def test_update_64(benchmark, queries_64, summary, length_ridge: float | None) -> None:
    # A pool of its own, so the updates do not change what the decide benchmarks read. With a
    # length_ridge of its own the length head keeps its own matrices: two rank-1 systems.
    config = {} if length_ridge is None else {"length_ridge": length_ridge}
    call = workload.update_once(workload.trained_policy(64, **config))
    label = "update d=64" if length_ridge is None else "update d=64, own length_ridge"
    _per_call(benchmark, call, queries_64, 20_000, summary, label)


@pytest.mark.benchmark(group="decide_batch")
@pytest.mark.parametrize("threads", [None, 1], ids=["all-cpus", "1-thread"])
def test_decide_batch_64(benchmark, policy_64, summary, threads: int | None) -> None:
    xs = workload.unit_rows(np.random.default_rng(3), BATCH_ROWS, 64)
    benchmark.pedantic(
        policy_64.decide_batch,
        args=(xs,),
        kwargs={
            "prompt_tokens": workload.PROMPT_TOKENS,
            "willingness_to_pay": workload.WILLINGNESS_TO_PAY,
            "threads": threads,
        },
        rounds=30,
        iterations=1,
        warmup_rounds=2,
    )
    rate = BATCH_ROWS / benchmark.stats.stats.median
    benchmark.extra_info["decisions_per_s"] = round(rate)
    label = "all CPUs" if threads is None else f"{threads} thread"
    summary.append(f"decide_batch d=64, {BATCH_ROWS} rows, {label}: {rate:,.0f} decisions/s")
