"""`mixllm.Policy` against numpy oracles: online updates, batch fits and decisions.

Every number the policy reports is recomputed here from first principles (numpy inverses and
solves, and a short reference implementation of the decision rule of docs/design/how-it-decides.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import mixllm

MAX_LOG_LENGTH = 13.8
FLOAT_MAX = float(np.finfo(np.float64).max)


def random_observation(rng: np.random.Generator, dim: int) -> dict[str, Any]:
    tokens = None if rng.uniform() < 0.25 else float(rng.integers(0, 4000))
    return {
        "x": rng.normal(size=dim),
        "quality": float(rng.uniform(-0.2, 1.2)),
        "output_tokens": tokens,
        "weight": float(10 ** rng.uniform(-3, 3)),
    }


@pytest.mark.parametrize("dim", [8, 65])
@pytest.mark.parametrize("refactor_every", [1, 7, 1_000_000])
def test_online_updates_match_the_numpy_ridge_solution(
    dim: int, refactor_every: int, arm_oracle: Any, profile: dict[str, Any]
) -> None:
    rng = np.random.default_rng(dim * 1000 + refactor_every)
    ridge, length_ridge = 0.7, 4.0
    policy = mixllm.Policy(
        dim, ridge=ridge, length_ridge=length_ridge, refactor_every=refactor_every
    )
    priors = {
        "a": (0.5, 256.0),
        "b": (0.2, 40.0),
        "c": (0.9, 0.0),
    }
    oracles = {}
    for name, (prior_quality, prior_tokens) in priors.items():
        policy.add_model(
            name, **profile, prior_quality=prior_quality, prior_output_tokens=prior_tokens
        )
        oracles[name] = arm_oracle(
            dim, ridge, prior_quality, prior_tokens, length_ridge=length_ridge
        )

    names = list(priors)
    updates = 3000 if dim == 8 else 1500
    for _ in range(updates):
        name = names[rng.integers(len(names))]
        obs = random_observation(rng, dim)
        policy.update(name, **obs)
        oracles[name].update(**obs)

    for name, oracle in oracles.items():
        state = policy.inspect(name)
        oracle.assert_matches(state, rtol=1e-8)
        assert state["updates_since_refactor"] == oracle.observations % refactor_every
        assert state["prior_quality"] == priors[name][0]
        assert state["prior_output_tokens"] == priors[name][1]


@pytest.mark.parametrize("refactor_every", [1, 1000])
def test_an_update_without_output_tokens_leaves_the_length_head_alone(
    refactor_every: int, profile: dict[str, Any]
) -> None:
    rng = np.random.default_rng(refactor_every)
    dim = 12
    policy = mixllm.Policy(dim, refactor_every=refactor_every)
    policy.add_model("m", **profile, prior_output_tokens=100.0)
    for _ in range(50):
        policy.update(
            "m", rng.normal(size=dim), quality=rng.uniform(), output_tokens=rng.uniform(0, 900)
        )
    probes = rng.normal(size=(20, dim))
    x = rng.normal(size=dim)
    before = policy.inspect("m")
    tokens_before = [policy.decide(p, prompt_tokens=10, willingness_to_pay=1.0) for p in probes]

    policy.update("m", x, quality=0.9, weight=5.0)

    after = policy.inspect("m")
    for key in ("theta_log_length", "b_log_length", "length_a", "length_a_inv"):
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    for probe, decision in zip(probes, tokens_before, strict=True):
        again = policy.decide(probe, prompt_tokens=10, willingness_to_pay=1.0)
        np.testing.assert_array_equal(again.output_tokens, decision.output_tokens)
    # The observation still counted for everything else.
    # Fused multiply-adds round once where numpy rounds twice: allow a few ulps of the largest.
    np.testing.assert_allclose(
        after["a"], before["a"] + 5.0 * np.outer(x, x), rtol=1e-14, atol=1e-12
    )
    assert not np.allclose(after["theta_quality"], before["theta_quality"])
    assert after["observations"] == before["observations"] + 1
    assert after["weight_sum"] == pytest.approx(before["weight_sum"] + 5.0)


def weighted_ridge(
    X: np.ndarray, targets: np.ndarray, weights: np.ndarray, ridge: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = ridge * np.eye(X.shape[1]) + X.T @ (weights[:, None] * X)
    b = X.T @ (weights * targets)
    return a, b, np.linalg.solve(a, b)


@pytest.mark.parametrize("dim", [8, 65])
def test_fit_is_the_weighted_ridge_solution_and_replaces_the_arm(
    dim: int, arm_oracle: Any, profile: dict[str, Any]
) -> None:
    rng = np.random.default_rng(dim)
    ridge, length_ridge = 2.5, 0.3
    policy = mixllm.Policy(dim, ridge=ridge, length_ridge=length_ridge, refactor_every=10)
    policy.add_model("m", **profile, prior_quality=0.4, prior_output_tokens=128.0)
    policy.add_model("other", **profile)
    for _ in range(25):
        policy.update("m", **random_observation(rng, dim))
        policy.update("other", **random_observation(rng, dim))
    other_before = policy.inspect("other")

    n = 400
    X = rng.normal(size=(n, dim))
    quality = rng.uniform(size=n)
    tokens = rng.integers(0, 3000, size=n).astype(np.float64)
    weights = 10 ** rng.uniform(-2, 2, size=n)
    policy.fit("m", X, quality, tokens, weights=weights)

    state = policy.inspect("m")
    a, b_q, theta_q = weighted_ridge(X, quality - 0.4, weights, ridge)
    a_len, b_len, theta_len = weighted_ridge(
        X, np.log1p(tokens) - np.log1p(128.0), weights, length_ridge
    )
    for key, expected in [
        ("a", a),
        ("a_inv", np.linalg.inv(a)),
        ("b_quality", b_q),
        ("theta_quality", theta_q),
        ("length_a", a_len),
        ("length_a_inv", np.linalg.inv(a_len)),
        ("b_log_length", b_len),
        ("theta_log_length", theta_len),
    ]:
        scale = np.abs(expected).max()
        np.testing.assert_allclose(state[key], expected, rtol=1e-10, atol=1e-10 * scale)
    assert state["observations"] == n
    assert state["weight_sum"] == pytest.approx(weights.sum(), rel=1e-12)
    assert state["updates_since_refactor"] == 0

    # The other arm is untouched; later updates continue from the fitted statistics.
    other_after = policy.inspect("other")
    for key in ("a", "a_inv", "theta_quality", "length_a", "length_a_inv", "theta_log_length"):
        np.testing.assert_array_equal(other_after[key], other_before[key])
    oracle = arm_oracle(dim, ridge, 0.4, 128.0, length_ridge=length_ridge)
    oracle.a, oracle.b_quality = a.copy(), b_q.copy()
    oracle.length_a, oracle.b_log_length = a_len.copy(), b_len.copy()
    oracle.observations, oracle.weight_sum = n, float(weights.sum())
    for _ in range(30):
        obs = random_observation(rng, dim)
        policy.update("m", **obs)
        oracle.update(**obs)
    oracle.assert_matches(policy.inspect("m"), rtol=1e-9)


def test_fit_without_tokens_or_weights_resets_the_length_head(profile: dict[str, Any]) -> None:
    rng = np.random.default_rng(3)
    dim, ridge = 6, 1.0
    policy = mixllm.Policy(dim, ridge=ridge)
    policy.add_model("m", **profile)
    for _ in range(20):
        policy.update("m", rng.normal(size=dim), quality=1.0, output_tokens=5000.0)
    assert np.abs(policy.inspect("m")["theta_log_length"]).max() > 0.01

    X = rng.normal(size=(30, dim))
    quality = rng.uniform(size=30)
    policy.fit("m", X, quality)

    state = policy.inspect("m")
    a, _, theta_q = weighted_ridge(X, quality - 0.5, np.ones(30), ridge)
    np.testing.assert_allclose(state["a"], a, rtol=1e-12)
    np.testing.assert_allclose(state["theta_quality"], theta_q, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(state["theta_log_length"], np.zeros(dim))
    np.testing.assert_array_equal(state["b_log_length"], np.zeros(dim))
    np.testing.assert_array_equal(state["length_a"], policy.length_ridge * np.eye(dim))
    assert state["weight_sum"] == 30.0


@pytest.mark.parametrize("length_ridge", [1.0, 0.2], ids=["equal-ridges", "own-ridge"])
def test_fit_learns_lengths_from_the_rows_that_have_them(
    length_ridge: float, profile: dict[str, Any]
) -> None:
    """NaN output tokens mark rows whose length was not seen: the quality head learns from
    every row, the length head from the others only, and later updates continue from there."""
    rng = np.random.default_rng(5)
    dim, n, ridge = 6, 40, 1.0
    X = rng.normal(size=(n, dim))
    quality = rng.uniform(size=n)
    tokens = rng.integers(1, 900, size=n).astype(np.float64)
    unseen = rng.uniform(size=n) < 0.3
    tokens[unseen] = np.nan
    policy = mixllm.Policy(dim, ridge=ridge, length_ridge=length_ridge)
    policy.add_model("m", **profile, prior_output_tokens=100.0)
    policy.fit("m", X, quality, tokens)

    state = policy.inspect("m")
    a, _, theta_q = weighted_ridge(X, quality - 0.5, np.ones(n), ridge)
    seen = ~unseen
    a_len, _, theta_len = weighted_ridge(
        X[seen], np.log1p(tokens[seen]) - np.log1p(100.0), np.ones(seen.sum()), length_ridge
    )
    np.testing.assert_allclose(state["a"], a, rtol=1e-12)
    np.testing.assert_allclose(state["theta_quality"], theta_q, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(state["length_a"], a_len, rtol=1e-12)
    np.testing.assert_allclose(state["length_a_inv"], np.linalg.inv(a_len), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(state["theta_log_length"], theta_len, rtol=1e-9, atol=1e-12)
    assert state["observations"] == n


def test_fit_with_a_zero_weight_row_ignores_that_row(profile: dict[str, Any]) -> None:
    rng = np.random.default_rng(4)
    dim = 5
    X = rng.normal(size=(10, dim))
    quality = rng.uniform(size=10)
    weights = np.ones(10)
    weights[3] = 0.0
    with_zero = mixllm.Policy(dim)
    with_zero.add_model("m", **profile)
    with_zero.fit("m", X, quality, weights=weights)
    without = mixllm.Policy(dim)
    without.add_model("m", **profile)
    keep = np.arange(10) != 3
    without.fit("m", X[keep], quality[keep])
    a, b = with_zero.inspect("m"), without.inspect("m")
    for key in ("a", "a_inv", "theta_quality"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=1e-15)
    assert a["observations"] == 10


# --- decisions ---------------------------------------------------------------------------------


def reference_decide(
    policy: mixllm.Policy,
    x: np.ndarray,
    prompt_tokens: float,
    willingness_to_pay: float,
    queues: dict[str, QueueReplica],
    now_s: float,
) -> dict[str, Any]:
    """The decision rule of docs/design/how-it-decides.md, from the policy's inspected heads and the
    test's own replica of each model's queue, at ``now_s``."""
    columns: dict[str, list[Any]] = {
        k: []
        for k in (
            "quality",
            "cost",
            "latency",
            "uncertainty",
            "penalty",
            "score",
            "excluded",
            "output_tokens",
            "service",
            "latency_sd",
        )
    }
    for name in policy.models:
        s = policy.inspect(name)
        p = s["profile"]
        quality = s["prior_quality"] + s["theta_quality"] @ x
        log_length = np.log1p(s["prior_output_tokens"]) + s["theta_log_length"] @ x
        tokens = np.expm1(np.clip(log_length, 0.0, MAX_LOG_LENGTH))
        cost = (prompt_tokens * p["price_in"] + tokens * p["price_out"]) / 1e6 + p["fee"]
        uncertainty = np.sqrt(max(0.0, x @ s["a_inv"] @ x))
        service = p["ttft_s"] + tokens / p["tokens_per_s"]
        # Every slot busy: wait for the work ahead. Both parts are scaled by how much longer
        # than predicted the model's requests have been taking.
        queue = queues.get(name, QueueReplica())
        latency = (queue.wait(p["concurrency"], now_s) + service) * queue.ratio()
        latency_sd = queue.latency_sd(
            p["concurrency"], service, latency, policy.service_time_smoothing
        )
        # Each factor and weighted term saturates at the largest float (scoring.rs): an
        # enormous queue's penalty, whose exp overflows, counts as that.
        with np.errstate(over="ignore"):
            penalty = min(np.expm1(latency / policy.tau_s), FLOAT_MAX)
        cost = min(cost, FLOAT_MAX)
        uncertainty = min(uncertainty, FLOAT_MAX)
        with np.errstate(over="ignore"):
            score = (
                quality
                - min(cost / willingness_to_pay, FLOAT_MAX)
                + min(policy.alpha * uncertainty, FLOAT_MAX)
                - min(policy.beta * penalty, FLOAT_MAX)
            )
        for key, value in [
            ("quality", quality),
            ("cost", cost),
            ("latency", latency),
            ("service", service),
            ("uncertainty", uncertainty),
            ("penalty", penalty),
            ("score", score),
            ("latency_sd", latency_sd),
            ("excluded", latency + policy.tau_margin_sd * latency_sd > policy.tau_s),
            ("output_tokens", tokens),
        ]:
            columns[key].append(value)
    out: dict[str, Any] = {k: np.array(v) for k, v in columns.items()}
    admissible = np.flatnonzero(~out["excluded"])
    if admissible.size:
        out["index"] = int(admissible[np.argmax(out["score"][admissible])])  # first of ties
    else:
        out["index"] = int(np.argmin(out["latency"]))
    return out


def assert_same_choice(decision: mixllm.Decision, expected: dict[str, Any]) -> None:
    """The chosen index must match, unless the reference itself has a near-tie (< 1e-9)."""
    if decision.index == expected["index"]:
        return
    key = "score" if (~expected["excluded"]).any() else "latency"
    values = expected[key]
    assert abs(values[decision.index] - values[expected["index"]]) < 1e-9, (
        f"chose {decision.index}, reference chose {expected['index']}: {key} {values}"
    )
    assert expected["excluded"][decision.index] == expected["excluded"][expected["index"]]


def build_pool(rng: np.random.Generator, dim: int) -> mixllm.Policy:
    """A pool whose models differ in prices, speed, queue and history, with τ small enough that
    latency exclusion matters."""
    policy = mixllm.Policy(
        dim, alpha=0.3, beta=0.2, ridge=1.5, tau_s=6.0, tau_margin_sd=1.0, refactor_every=50
    )
    specs = [
        ("fast-cheap", 0.1, 0.4, 0.0, 0.2, 200.0, 2, 0.3, 150.0),
        ("big", 5.0, 15.0, 0.0, 1.0, 40.0, 8, 0.8, 500.0),
        ("self-hosted", 0.0, 0.0, 0.0, 0.5, 25.0, 1, 0.5, 256.0),
        ("fee", 0.5, 1.0, 0.002, 0.3, 90.0, 3, 0.6, 0.0),
        ("fresh", 2.0, 6.0, 0.0, 0.6, 70.0, 4, 0.55, 300.0),
    ]
    for name, pin, pout, fee, ttft, tps, conc, pq, pt in specs:
        policy.add_model(
            name,
            price_in=pin,
            price_out=pout,
            fee=fee,
            ttft_s=ttft,
            tokens_per_s=tps,
            concurrency=conc,
            prior_quality=pq,
            prior_output_tokens=pt,
        )
    n = 200
    X = rng.normal(size=(n, dim))
    policy.fit(
        "big",
        X,
        rng.uniform(size=n),
        np.exp(rng.uniform(0, 8, size=n)),
        weights=rng.uniform(0.5, 2, size=n),
    )
    # Huge lengths push the head past the clamp at log1p(tokens) = 13.8 for some contexts.
    policy.fit("fee", X[:40] * 0.2, rng.uniform(size=40), np.full(40, 5e7))
    for _ in range(120):
        policy.update(
            "fast-cheap",
            rng.normal(size=dim),
            quality=float(rng.uniform()),
            output_tokens=float(rng.integers(0, 600)),
            weight=float(10 ** rng.uniform(-1, 1)),
        )
        policy.update("self-hosted", rng.normal(size=dim), quality=float(rng.uniform()))
    return policy


@dataclass
class QueueReplica:
    """One model's queue as README's "How it decides" describes it, kept from the same begin and
    end calls the policy gets: requests in flight, the time their predicted work would be
    done, the moving averages of predicted and observed service behind the service ratio, and
    that of their squared error behind each estimate's spread."""

    in_flight: int = 0
    clears_at: float = -math.inf
    mean_predicted: float | None = None
    mean_observed: float | None = None
    mean_squared_error: float | None = None

    def begin(self, predicted: float, slots: int, now: float) -> None:
        self.in_flight += 1
        self.clears_at = max(self.clears_at, now) + predicted / slots

    def end(self, latency: float, predicted: float, slots: int, now: float, smoothing: float):
        self.in_flight -= 1
        self.clears_at = (
            now if self.in_flight == 0 else self.clears_at + (latency - predicted) / slots
        )

        def fold(mean: float | None, value: float) -> float:
            return value if mean is None else mean + smoothing * (value - mean)

        # The error of the estimate: the prediction scaled by the ratio as it stood.
        error = latency - predicted * self.ratio()
        self.mean_predicted = fold(self.mean_predicted, predicted)
        self.mean_observed = fold(self.mean_observed, latency)
        self.mean_squared_error = fold(self.mean_squared_error, error**2)

    def ratio(self) -> float:
        if self.mean_predicted is None or self.mean_observed is None or self.mean_predicted <= 0:
            return 1.0
        return float(np.clip(self.mean_observed / self.mean_predicted, 1.0, 1000.0))

    def wait(self, slots: int, now: float) -> float:
        return 0.0 if self.in_flight < slots else max(0.0, self.clears_at - now)

    def latency_sd(self, slots: int, service: float, latency: float, smoothing: float) -> float:
        """The spread of a latency estimate: each request ahead (when it queues) adds its
        share of a slot's error, its own service the error scaled to its size, and the
        service ratio (a moving average) its own error on the whole estimate."""
        mse, predicted, observed = (
            self.mean_squared_error,
            self.mean_predicted,
            self.mean_observed,
        )
        if mse is None or predicted is None or observed is None:
            return 0.0
        ahead = self.in_flight if self.in_flight >= slots else 0
        own = mse * ahead / slots**2 + (mse / predicted**2 * service**2 if predicted > 0 else 0.0)
        ratio_variance = smoothing / (2 - smoothing) * mse / observed**2 if observed > 0 else 0.0
        return math.sqrt(own + ratio_variance * latency**2)


def set_in_flight(
    policy: mixllm.Policy,
    name: str,
    target: int,
    begun: dict[str, list[float]],
    queues: dict[str, QueueReplica],
    now_s: float,
) -> None:
    """Requests in flight of model ``name`` up or down to ``target`` at ``now_s`` (in the policy
    and in ``queues``); each begun with a predicted service time (recorded in ``begun``) and
    ended after 3 s, sometimes more, sometimes less than predicted, so the work left moves
    both ways."""
    mine = begun.setdefault(name, [])
    queue = queues.setdefault(name, QueueReplica())
    slots = policy.profile(name)["concurrency"]
    while policy.in_flight(name) < target:
        mine.append(float(np.random.default_rng(len(mine) + target).uniform(0.0, 5.0)))
        policy.begin(name, mine[-1], now_s=now_s)
        queue.begin(mine[-1], slots, now_s)
    while policy.in_flight(name) > target:
        predicted = mine.pop()
        policy.end(name, 3.0, predicted, now_s=now_s)
        queue.end(3.0, predicted, slots, now_s, policy.service_time_smoothing)


WILLINGNESS = [1e-6, 1e-3, 0.5, 1.0, 30.0, 1e3, 1e6, float("inf")]


def check_books(
    policy: mixllm.Policy, replicas: dict[str, QueueReplica], now: float, seen: dict[str, int]
) -> None:
    """The policy's queue books agree with the replica's, model by model; counts which case of
    the wait each model was in."""
    for name in policy.models:
        state, replica = policy.inspect(name), replicas[name]
        # The policy's books agree with the replica's.
        assert state["in_flight"] == replica.in_flight
        assert state["service_ratio"] == pytest.approx(replica.ratio(), rel=1e-12)
        if replica.mean_predicted is None:
            assert state["service_means_s"] is None
        else:
            assert state["service_means_s"] == pytest.approx(
                (replica.mean_predicted, replica.mean_observed), rel=1e-12
            )
        assert state["service_mse_s2"] == (
            None
            if replica.mean_squared_error is None
            else pytest.approx(replica.mean_squared_error, rel=1e-12)
        )
        if replica.in_flight:
            assert state["clears_at_s"] == pytest.approx(replica.clears_at, rel=1e-12)
        seen["ratio > 1"] += int(replica.ratio() > 1.0)
        if replica.in_flight < state["profile"]["concurrency"]:
            seen["a slot free"] += 1
        elif replica.clears_at > now:
            seen["waiting"] += 1
        else:
            seen["all slots busy, work done"] += 1


def test_decide_matches_the_reference_implementation() -> None:
    rng = np.random.default_rng(11)
    dim = 10
    policy = build_pool(rng, dim)
    # Queues varied between rounds, 10 s apart on the test's own clock; decisions spread over
    # each round, so the work ahead drains while they are made.
    seen = {"excluded": 0, "admissible": 0, "all_excluded": 0, "clamped": 0}
    seen |= {"waiting": 0, "all slots busy, work done": 0, "a slot free": 0, "ratio > 1": 0}
    seen |= {"excluded by the margin alone": 0}
    begun: dict[str, list[float]] = {}
    replicas: dict[str, QueueReplica] = {}
    for round_ in range(12):
        start = 10.0 * round_
        queues = rng.integers(0, 12, size=len(policy.models))
        if round_ == 5:
            queues[:] = 40  # everyone is too slow: the fastest is taken
        for name, queue in zip(policy.models, queues, strict=True):
            set_in_flight(policy, name, int(queue), begun, replicas, start)
        for _ in range(25):
            now = start + float(rng.uniform(0.0, 10.0))
            x = rng.normal(size=dim) * rng.choice([0.3, 1.0, 3.0])
            prompt_tokens = float(rng.uniform(0, 8000))
            wtp = float(rng.choice(WILLINGNESS))
            decision = policy.decide(
                x, prompt_tokens=prompt_tokens, willingness_to_pay=wtp, now_s=now
            )
            expected = reference_decide(policy, x, prompt_tokens, wtp, replicas, now)
            check_books(policy, replicas, now, seen)

            assert decision.models == policy.models
            for key in (
                "quality",
                "cost",
                "latency",
                "uncertainty",
                "penalty",
                "score",
                "output_tokens",
                "service",
                "latency_sd",
            ):
                np.testing.assert_allclose(
                    getattr(decision, key), expected[key], rtol=1e-9, atol=1e-9, err_msg=key
                )
            np.testing.assert_array_equal(decision.excluded, expected["excluded"])
            assert_same_choice(decision, expected)
            assert decision.model == decision.models[decision.index]

            seen["excluded"] += int(expected["excluded"].any())
            seen["admissible"] += int((~expected["excluded"]).any())
            seen["all_excluded"] += int(expected["excluded"].all())
            seen["excluded by the margin alone"] += int(
                (expected["excluded"] & (expected["latency"] <= policy.tau_s)).any()
            )
            seen["clamped"] += int(
                np.isclose(expected["output_tokens"], np.expm1(MAX_LOG_LENGTH)).any()
            )
    # The scenario really exercised exclusion, the all-excluded fallback, the length clamp and
    # every case of the wait.
    assert all(count > 0 for count in seen.values()), seen


def test_explain_agrees_with_the_arrays() -> None:
    rng = np.random.default_rng(12)
    policy = build_pool(rng, 4)
    decision = policy.decide(rng.normal(size=4), prompt_tokens=100.0, willingness_to_pay=5.0)
    explained = decision.explain()
    assert list(explained) == decision.models
    for i, name in enumerate(decision.models):
        row = explained[name]
        assert row["score"] == decision.score[i]
        assert row["cost_usd"] == decision.cost[i]
        assert row["latency_s"] == decision.latency[i]
        assert row["latency_sd_s"] == decision.latency_sd[i]
        assert row["service_s"] == decision.service[i]
        assert row["excluded"] == bool(decision.excluded[i])
    assert decision.chosen_service_s == decision.service[decision.index]


@pytest.mark.parametrize(
    "field",
    [
        "quality",
        "cost",
        "latency",
        "service",
        "output_tokens",
        "uncertainty",
        "penalty",
        "score",
        "excluded",
    ],
)
def test_a_decisions_arrays_are_read_only(field: str) -> None:
    rng = np.random.default_rng(13)
    policy = build_pool(rng, 4)
    decision = policy.decide(rng.normal(size=4), prompt_tokens=100.0, willingness_to_pay=5.0)
    values = getattr(decision, field)
    assert not values.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        values[0] = values[1]


def test_infinite_willingness_to_pay_ignores_cost() -> None:
    rng = np.random.default_rng(13)
    policy = build_pool(rng, 6)
    x = rng.normal(size=6)
    decision = policy.decide(x, prompt_tokens=1e6, willingness_to_pay=float("inf"))
    expected = (
        decision.quality + policy.alpha * decision.uncertainty - policy.beta * decision.penalty
    )
    np.testing.assert_allclose(decision.score, expected, rtol=1e-12, atol=1e-12)
    assert (decision.cost > 0).any()


def test_ties_go_to_the_earlier_model(profile: dict[str, Any]) -> None:
    policy = mixllm.Policy(3)
    for name in ("first", "second", "third"):
        policy.add_model(name, **profile)
    decision = policy.decide(np.ones(3), prompt_tokens=10.0, willingness_to_pay=1.0)
    assert decision.score[0] == decision.score[1] == decision.score[2]
    assert decision.index == 0
    policy.remove_model("first")
    assert policy.decide(np.ones(3), prompt_tokens=10.0, willingness_to_pay=1.0).model == "second"


# Batches go in blocks of four rows; a last, partial block (n = 1, 3, 302) takes another path.
@pytest.mark.parametrize("n", [1, 3, 300, 302])
@pytest.mark.parametrize("per_row", [False, True])
def test_decide_batch_matches_decide_row_by_row(per_row: bool, n: int) -> None:
    rng = np.random.default_rng(14 + per_row)
    dim = 7
    policy = build_pool(rng, dim)
    for name, queue in zip(policy.models, [3, 9, 0, 5, 1], strict=True):
        set_in_flight(policy, name, queue, {}, {}, 0.0)
    now = 2.0  # part of the work ahead is done
    X = rng.normal(size=(n, dim)) * rng.choice([0.3, 1.0, 3.0], size=(n, 1))
    if per_row:
        prompt_tokens: Any = rng.uniform(0, 8000, size=n)
        wtp: Any = rng.choice(WILLINGNESS, size=n)
    else:
        prompt_tokens, wtp = 2500.0, 0.5
    chosen = policy.decide_batch(X, prompt_tokens=prompt_tokens, willingness_to_pay=wtp, now_s=now)
    assert chosen.dtype == np.int64
    assert chosen.shape == (n,)
    expected = [
        policy.decide(
            X[i],
            prompt_tokens=float(prompt_tokens[i]) if per_row else prompt_tokens,
            willingness_to_pay=float(wtp[i]) if per_row else wtp,
            now_s=now,
        ).index
        for i in range(n)
    ]
    np.testing.assert_array_equal(chosen, expected)
    if n >= 300:
        assert len(set(expected)) > 1  # the batch really chose between models


def test_decide_batch_reads_strided_lists_and_float32() -> None:
    rng = np.random.default_rng(16)
    dim = 5
    policy = build_pool(rng, dim)
    X = rng.normal(size=(60, dim))
    kwargs = {"prompt_tokens": 100.0, "willingness_to_pay": 2.0}
    reference = policy.decide_batch(X, **kwargs)
    np.testing.assert_array_equal(reference, [policy.decide(x, **kwargs).index for x in X])
    wide = np.zeros((60, 2 * dim))
    wide[:, ::2] = X
    np.testing.assert_array_equal(policy.decide_batch(wide[:, ::2], **kwargs), reference)
    np.testing.assert_array_equal(policy.decide_batch(X.tolist(), **kwargs), reference)
    X32 = X.astype(np.float32)
    np.testing.assert_array_equal(
        policy.decide_batch(X32, **kwargs), policy.decide_batch(X32.astype(np.float64), **kwargs)
    )
    np.testing.assert_array_equal(
        policy.decide_batch(np.asfortranarray(X32), **kwargs),
        policy.decide_batch(X32.astype(np.float64), **kwargs),
    )
    strided = np.zeros(2 * dim)
    strided[::2] = X[0]
    assert (
        policy.decide(strided[::2], **kwargs).score.tolist()
        == policy.decide(X[0], **kwargs).score.tolist()
    )
    assert policy.decide_batch(np.zeros((0, dim)), **kwargs).shape == (0,)


# Column-major arrays (`X.T` of a C array, many pandas `.values`) must be read in logical order,
# not memory order.
def test_decide_batch_reads_fortran_ordered_float64() -> None:
    rng = np.random.default_rng(17)
    dim = 5
    policy = build_pool(rng, dim)
    X = rng.normal(size=(60, dim))
    kwargs = {"prompt_tokens": 100.0, "willingness_to_pay": 2.0}
    np.testing.assert_array_equal(
        policy.decide_batch(np.asfortranarray(X), **kwargs), policy.decide_batch(X, **kwargs)
    )


def test_fit_reads_fortran_ordered_float64(profile: dict[str, Any]) -> None:
    X = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    policy = mixllm.Policy(2)
    policy.add_model("m", **profile)
    policy.fit("m", np.asfortranarray(X), np.array([0.6, 0.7, 0.8]))
    np.testing.assert_allclose(policy.inspect("m")["a"], np.eye(2) + X.T @ X, rtol=1e-14)
