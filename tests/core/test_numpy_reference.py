"""The numpy reference of the decision (testkit/numpy_reference.py) decides like `Policy.decide`.

The benchmarks compare mixllm's speed with that reference, so it must compute the same thing:
the same per-model predictions and scores, and the same chosen model, including when latency
excludes some models or all of them.
"""

from __future__ import annotations

import numpy as np
import pytest

import numpy_reference
import workload

QUERIES = 300


def _queries(dim: int, seed: int):
    rng = np.random.default_rng(seed)
    return (
        workload.unit_rows(rng, QUERIES, dim),
        rng.uniform(10.0, 4000.0, QUERIES),
        10.0 ** rng.uniform(-3.0, 5.0, QUERIES),
    )


@pytest.mark.parametrize(
    ("dim", "tau_s"),
    [
        (16, 30.0),
        (64, 30.0),
        # ttft + length / speed spans ≈ 2..10 s in this pool: some models are excluded.
        (64, 5.0),
        # Every model is excluded: the fastest is chosen.
        (16, 0.1),
    ],
)
def test_same_model_as_policy(dim: int, tau_s: float) -> None:
    policy = workload.trained_policy(dim, seed=dim, tau_s=tau_s)
    reference = numpy_reference.NumpyPolicy(policy)
    xs, tokens, wtp = _queries(dim, seed=int(tau_s * 10) + dim)
    differ, _ = numpy_reference.disagreements(policy, reference, xs, tokens, wtp)
    assert differ == 0
    chosen = {reference.decide(x, t, w) for x, t, w in zip(xs, tokens, wtp, strict=True)}
    if tau_s >= 5.0:
        assert len(chosen) > 1, "the queries should not all go to one model"


def test_same_predictions_as_decision() -> None:
    policy = workload.trained_policy(64, seed=3)
    reference = numpy_reference.NumpyPolicy(policy)
    xs, tokens, wtp = _queries(64, seed=4)
    for x, t, w in list(zip(xs, tokens, wtp, strict=True))[:50]:
        decision = policy.decide(x, prompt_tokens=float(t), willingness_to_pay=float(w))
        ours = reference.assess(x, float(t), float(w))
        for field in ("quality", "output_tokens", "cost", "uncertainty", "latency", "penalty"):
            np.testing.assert_allclose(getattr(decision, field), ours[field], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(decision.score, ours["score"], rtol=1e-9, atol=1e-12)
