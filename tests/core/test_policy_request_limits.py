"""`Policy.decide` within one request's limits, and `Policy.update_length`, against numpy
oracles: the choice and the fallback ranking are the decision rule applied to the eligible
models, nothing eligible is one error naming the limit, and lengths learned alone are the
ridge solution of the length head, leaving quality untouched."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mixllm

DIM = 4
NAMES = ["a", "b", "c", "d", "e"]


def pool(seed: int, busy: list[int], tau_s: float) -> mixllm.Policy:
    """Five models of different prices, speeds and learned qualities, some with requests in
    flight, so costs, latencies and τ exclusions differ."""
    rng = np.random.default_rng(seed)
    policy = mixllm.Policy(DIM, tau_s=tau_s)
    for i, name in enumerate(NAMES):
        policy.add_model(
            name,
            price_in=0.5 + i,
            price_out=3.0 * i,
            ttft_s=0.1 * (5 - i),
            tokens_per_s=20.0 + 15.0 * i,
            concurrency=1,
            prior_quality=0.2 + 0.1 * i,
            prior_output_tokens=50.0 + 40.0 * i,
        )
        for _ in range(int(rng.integers(0, 6))):
            policy.update(
                name,
                rng.normal(size=DIM),
                quality=float(rng.uniform()),
                output_tokens=float(rng.integers(1, 800)),
            )
    for i in busy:
        policy.begin(NAMES[i], 5.0, now_s=0.0)
    return policy


def oracle(
    whole: mixllm.Decision,
    models: list[str] | None,
    max_cost_usd: float,
    max_latency_s: float,
) -> list[str]:
    """The eligible models ranked as the rule ranks them (numpy): the admissible by score,
    best first, then the excluded by latency, fastest first; ties in pool order."""
    names = np.array(whole.models)
    allowed = np.isin(names, models) if models is not None else np.ones(len(names), bool)
    eligible = allowed & (whole.cost <= max_cost_usd) & (whole.latency <= max_latency_s)
    admissible = np.flatnonzero(eligible & ~whole.excluded)
    excluded = np.flatnonzero(eligible & whole.excluded)
    by_score = admissible[np.argsort(-whole.score[admissible], kind="stable")]
    by_latency = excluded[np.argsort(whole.latency[excluded], kind="stable")]
    return [str(names[i]) for i in [*by_score, *by_latency]]


def between(values: np.ndarray, q: float | None) -> float | None:
    """A limit placed among the models' own predictions, so every outcome occurs."""
    if q is None:
        return None
    return max(float(values.min() + q * (values.max() - values.min())), 1e-12)


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    busy=st.lists(st.integers(0, 4), max_size=5),
    tau_s=st.sampled_from([1e9, 1.0, 5.0, 15.0]),
    models=st.none() | st.lists(st.sampled_from([*NAMES, "gone", "other"]), min_size=1, max_size=4),
    cost_q=st.none() | st.floats(0.0, 1.2),
    latency_q=st.none() | st.floats(0.0, 1.2),
    x=st.lists(st.floats(-1.0, 1.0), min_size=DIM, max_size=DIM),
)
def test_a_decision_within_limits_matches_the_numpy_oracle(
    seed: int,
    busy: list[int],
    tau_s: float,
    models: list[str] | None,
    cost_q: float | None,
    latency_q: float | None,
    x: list[float],
) -> None:
    policy = pool(seed, busy, tau_s)
    context = np.array(x)
    whole = policy.decide(context, prompt_tokens=200.0, willingness_to_pay=0.05, now_s=1.0)
    max_cost = between(whole.cost, cost_q)
    max_latency = between(whole.latency, latency_q)
    expected = oracle(
        whole,
        models,
        math.inf if max_cost is None else max_cost,
        math.inf if max_latency is None else max_latency,
    )
    state = policy.to_bytes()
    limits = {"models": models, "max_cost_usd": max_cost, "max_latency_s": max_latency}
    if not expected:
        allowed_here = models is None or any(m in NAMES for m in models)
        if not allowed_here:
            with pytest.raises(mixllm.UnknownModelError, match="none of the models"):
                policy.decide(
                    context, prompt_tokens=200.0, willingness_to_pay=0.05, now_s=1.0, **limits
                )
        else:
            cheapest_allowed = min(
                c
                for n, c in zip(whole.models, whole.cost, strict=True)
                if models is None or n in models
            )
            limit = (
                "max_cost_usd"
                if max_cost is not None and cheapest_allowed > max_cost
                else "max_latency_s"
            )
            with pytest.raises(mixllm.NoModelWithinLimitsError, match=limit):
                policy.decide(
                    context, prompt_tokens=200.0, willingness_to_pay=0.05, now_s=1.0, **limits
                )
        assert policy.to_bytes() == state
        return
    decision = policy.decide(
        context, prompt_tokens=200.0, willingness_to_pay=0.05, now_s=1.0, **limits
    )
    assert decision.ranking == expected
    assert decision.model == expected[0]
    assert list(np.array(decision.models)[decision.eligible]) == sorted(
        expected, key=decision.models.index
    )
    # The same predictions and scores as without limits: only eligibility differs.
    np.testing.assert_array_equal(decision.score, whole.score)
    np.testing.assert_array_equal(decision.cost, whole.cost)
    assert policy.to_bytes() == state


@pytest.mark.parametrize(
    ("limits", "says"),
    [
        ({"models": []}, "at least one"),
        ({"models": "a"}, "sequence of model names"),
        ({"max_cost_usd": -1.0}, "max_cost_usd must be >= 0"),
        ({"max_cost_usd": math.nan}, "max_cost_usd"),
        ({"max_latency_s": 0.0}, "max_latency_s must be > 0"),
    ],
)
def test_bad_limits_are_refused(limits: dict[str, object], says: str) -> None:
    policy = pool(0, [], 1e9)
    with pytest.raises(mixllm.InvalidInputError, match=says):
        policy.decide(np.zeros(DIM), prompt_tokens=1.0, willingness_to_pay=1.0, **limits)  # type: ignore[arg-type]


def length_oracle(
    rows: list[tuple[np.ndarray, float, float]], length_ridge: float, prior_tokens: float
) -> np.ndarray:
    """The length head's ridge solution: (ridge·I + Σ w·x·xᵀ)⁻¹ Σ w·(log(1 + t) - log(1 +
    prior))·x over the rows whose length was seen."""
    a = length_ridge * np.eye(DIM)
    b = np.zeros(DIM)
    for x, tokens, w in rows:
        a += w * np.outer(x, x)
        b += w * (math.log1p(tokens) - math.log1p(prior_tokens)) * x
    return np.linalg.solve(a, b)


@pytest.mark.parametrize("refactor_every", [1, 5, 1_000_000])
@pytest.mark.parametrize("length_ridge", [1.0, 3.0])
def test_lengths_learned_alone_match_the_numpy_ridge_solution(
    refactor_every: int, length_ridge: float
) -> None:
    rng = np.random.default_rng(refactor_every)
    prior_tokens = 100.0
    policy = mixllm.Policy(DIM, length_ridge=length_ridge, refactor_every=refactor_every)
    policy.add_model(
        "m", price_in=1.0, price_out=1.0, ttft_s=0.1, tokens_per_s=50.0, concurrency=4,
        prior_output_tokens=prior_tokens,
    )  # fmt: skip
    rows = []
    for _ in range(10):
        x, tokens = rng.normal(size=DIM), float(rng.integers(1, 2000))
        policy.update("m", x, quality=float(rng.uniform()), output_tokens=tokens)
        rows.append((x, tokens, 1.0))
    probe = rng.normal(size=DIM)
    before = policy.decide(probe, prompt_tokens=10.0, willingness_to_pay=1.0)
    for _ in range(40):
        x, tokens, w = (
            rng.normal(size=DIM),
            float(rng.integers(0, 3000)),
            float(rng.uniform(0.2, 3)),
        )
        policy.update_length("m", x, output_tokens=tokens, weight=w)
        rows.append((x, tokens, w))
    after = policy.decide(probe, prompt_tokens=10.0, willingness_to_pay=1.0)
    theta = length_oracle(rows, length_ridge, prior_tokens)
    log_length = np.clip(math.log1p(prior_tokens) + theta @ probe, 0.0, 13.8)
    assert after.output_tokens[0] == pytest.approx(math.expm1(log_length), rel=1e-8)
    assert after.output_tokens[0] != pytest.approx(before.output_tokens[0], rel=1e-3)
    # Quality and its confidence width are as the feedback left them.
    assert after.quality[0] == pytest.approx(before.quality[0], rel=1e-12, abs=1e-12)
    assert after.uncertainty[0] == pytest.approx(before.uncertainty[0], rel=1e-9)
    # Saved and loaded, the length head is the same.
    restored = mixllm.Policy.from_bytes(policy.to_bytes())
    again = restored.decide(probe, prompt_tokens=10.0, willingness_to_pay=1.0)
    assert again.output_tokens[0] == after.output_tokens[0]


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"output_tokens": -1.0}, "output_tokens must be >= 0"),
        ({"output_tokens": math.nan}, "output_tokens must be finite"),
        ({"output_tokens": 1e101}, "output_tokens value"),
        ({"output_tokens": 5.0, "weight": 0.0}, "weight must be > 0"),
    ],
)
def test_a_bad_length_is_refused_and_changes_nothing(kwargs: dict[str, float], says: str) -> None:
    policy = pool(1, [], 1e9)
    state = policy.to_bytes()
    with pytest.raises(mixllm.InvalidInputError, match=says):
        policy.update_length("a", np.ones(DIM), **kwargs)
    with pytest.raises(mixllm.DimensionError):
        policy.update_length("a", np.ones(DIM + 1), output_tokens=3.0)
    with pytest.raises(mixllm.UnknownModelError):
        policy.update_length("nope", np.ones(DIM), output_tokens=3.0)
    assert policy.to_bytes() == state
