"""Per-decision cost of mixllm against two peers, measured in the same test so the ratio holds
on a noisy machine: the numpy implementation of the same decision (``numpy_reference.py``) and
MABWiser's LinUCB predicting one context at a time. Targets (docs): ≥ 20x the numpy reference,
≥ 100x MABWiser.

pytest-benchmark times the peer; mixllm's median comes from the same queries right after.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import workload
from mabwiser_peer import fitted_linucb, predict_once
from numpy_reference import disagreements_on_random_queries

PEER_ROUNDS = {64: 3_000, 384: 500}
MABWISER_ROUNDS = {64: 300, 384: 100}
MIXLLM_CALLS = {64: 20_000, 384: 2_000}


def _ratio(benchmark, policy, queries, peer_call, rounds: int, summary, label: str) -> None:
    dim = policy.dim
    cycle = itertools.cycle(queries)
    benchmark.pedantic(
        peer_call,
        setup=lambda: ((next(cycle),), {}),
        rounds=rounds,
        iterations=1,
        warmup_rounds=max(10, rounds // 10),
    )
    peer_us = benchmark.stats.stats.median * 1e6
    ours = workload.sample_ns(workload.decide_once(policy), queries, MIXLLM_CALLS[dim])
    ours_us = float(np.median(ours)) / 1e3
    ratio = peer_us / ours_us
    benchmark.extra_info.update(peer_p50_us=peer_us, mixllm_p50_us=ours_us, ratio=ratio)
    summary.append(
        f"{label} d={dim}: {peer_us:.1f} µs vs mixllm {ours_us:.2f} µs per decision → "
        f"mixllm {ratio:.1f}x faster"
    )


@pytest.mark.benchmark(group="peer numpy")
@pytest.mark.parametrize("dim", [64, 384])
def test_numpy_reference(benchmark, request, summary, dim: int) -> None:
    policy = request.getfixturevalue(f"policy_{dim}")
    reference = request.getfixturevalue(f"reference_{dim}")
    queries = request.getfixturevalue(f"queries_{dim}")
    differ, _ = disagreements_on_random_queries(policy, reference, 300, seed=19)
    assert differ == 0, "the numpy reference must decide like Policy.decide"

    def call(x: np.ndarray) -> int:
        return reference.decide(x, workload.PROMPT_TOKENS, workload.WILLINGNESS_TO_PAY)

    _ratio(benchmark, policy, queries, call, PEER_ROUNDS[dim], summary, "numpy reference")


@pytest.mark.benchmark(group="peer mabwiser")
@pytest.mark.parametrize("dim", [64, 384])
def test_mabwiser_linucb(benchmark, request, summary, dim: int) -> None:
    policy = request.getfixturevalue(f"policy_{dim}")
    queries = request.getfixturevalue(f"queries_{dim}")
    call = predict_once(fitted_linucb(dim))
    _ratio(benchmark, policy, queries, call, MABWISER_ROUNDS[dim], summary, "MABWiser LinUCB")
