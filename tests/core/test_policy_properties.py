"""Property tests of `mixllm.Policy` over dimensions, weights, qualities and pool changes."""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mixllm

PROFILE: dict[str, Any] = {
    "price_in": 1.0,
    "price_out": 3.0,
    "ttft_s": 0.4,
    "tokens_per_s": 60.0,
    "concurrency": 2,
}
DECIDE = {"prompt_tokens": 200.0, "willingness_to_pay": 5.0}

dims = st.integers(min_value=1, max_value=40)
seeds = st.integers(min_value=0, max_value=2**32 - 1)
weights = st.floats(min_value=-3.0, max_value=3.0).map(lambda e: 10.0**e)
qualities = st.floats(min_value=-1.0, max_value=2.0, allow_nan=False)
output_tokens = st.none() | st.floats(min_value=0.0, max_value=1e5, allow_nan=False)
observations = st.lists(st.tuples(qualities, output_tokens, weights), min_size=1, max_size=30)


def observation_stream(
    dim: int, seed: int, values: list[tuple[float, float | None, float]]
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "x": rng.normal(size=dim) * 10 ** rng.uniform(-1, 1),
            "quality": quality,
            "output_tokens": tokens,
            "weight": weight,
        }
        for quality, tokens, weight in values
    ]


@settings(max_examples=150, deadline=None)
@given(
    dim=dims,
    seed=seeds,
    values=observations,
    ridge=st.sampled_from([0.1, 1.0, 10.0]),
    # None: the quality head's ridge, so the two heads share their matrices until a length is
    # missing.
    length_ridge=st.sampled_from([None, 0.5, 30.0]),
    refactor_every=st.sampled_from([1, 2, 5, 1000]),
    priors=st.tuples(qualities, st.floats(min_value=0.0, max_value=1e4)),
)
def test_any_sequence_of_updates_matches_the_oracle(
    arm_oracle: Any,
    dim: int,
    seed: int,
    values: list[tuple[float, float | None, float]],
    ridge: float,
    length_ridge: float | None,
    refactor_every: int,
    priors: tuple[float, float],
) -> None:
    length_ridge = ridge if length_ridge is None else length_ridge
    policy = mixllm.Policy(
        dim, ridge=ridge, length_ridge=length_ridge, refactor_every=refactor_every
    )
    policy.add_model("m", **PROFILE, prior_quality=priors[0], prior_output_tokens=priors[1])
    oracle = arm_oracle(dim, ridge, *priors, length_ridge=length_ridge)
    for obs in observation_stream(dim, seed, values):
        policy.update("m", **obs)
        oracle.update(**obs)
    oracle.assert_matches(policy.inspect("m"), rtol=1e-8)


@settings(max_examples=80, deadline=None)
@given(dim=dims, seed=seeds, values=observations)
def test_a_fit_equals_its_rows_learned_one_by_one_in_any_order(
    dim: int, seed: int, values: list[tuple[float, float | None, float]]
) -> None:
    stream = observation_stream(dim, seed, values)
    X = np.array([o["x"] for o in stream])
    quality = np.array([o["quality"] for o in stream])
    tokens = np.array([o["output_tokens"] or 0.0 for o in stream])
    w = np.array([o["weight"] for o in stream])
    order = np.random.default_rng(seed).permutation(len(stream))

    policy = mixllm.Policy(dim)
    for name in ("fit", "shuffled", "online"):
        policy.add_model(name, **PROFILE)
    policy.fit("fit", X, quality, tokens, weights=w)
    policy.fit("shuffled", X[order], quality[order], tokens[order], weights=w[order])
    for x, q, t, wi in zip(X, quality, tokens, w, strict=True):
        policy.update("online", x, quality=q, output_tokens=t, weight=wi)

    fitted = policy.inspect("fit")
    for other in ("shuffled", "online"):
        state = policy.inspect(other)
        for key in ("a", "a_inv", "theta_quality", "theta_log_length"):
            scale = np.abs(fitted[key]).max()
            np.testing.assert_allclose(
                state[key], fitted[key], rtol=1e-8, atol=1e-8 * scale, err_msg=f"{other} {key}"
            )
        assert state["observations"] == fitted["observations"] == len(stream)


pool_ops = st.lists(
    st.tuples(st.sampled_from(["add", "remove"]), st.integers(min_value=0, max_value=5)),
    max_size=25,
)


@settings(max_examples=100, deadline=None)
@given(ops=pool_ops, dim=st.integers(min_value=1, max_value=8))
def test_the_pool_keeps_insertion_order_through_adds_and_removes(
    ops: list[tuple[str, int]], dim: int
) -> None:
    policy = mixllm.Policy(dim)
    expected: list[str] = []
    x = np.linspace(-1, 1, dim)
    for op, i in ops:
        name = f"model-{i}"
        if op == "add":
            if name in expected:
                with pytest.raises(mixllm.DuplicateModelError):
                    policy.add_model(name, **PROFILE)
            else:
                policy.add_model(name, **PROFILE, prior_quality=i / 10)
                expected.append(name)
        elif name in expected:
            policy.remove_model(name)
            expected.remove(name)
        else:
            with pytest.raises(mixllm.UnknownModelError):
                policy.remove_model(name)
        assert policy.models == expected
        assert len(policy) == len(expected)
        for j in range(6):
            assert (f"model-{j}" in policy) == (f"model-{j}" in expected)
        if expected:
            decision = policy.decide(x, **DECIDE)
            assert decision.models == expected
            # Fresh arms with equal profiles: the best prior quality wins, the first of ties.
            priors = [int(m.split("-")[1]) / 10 for m in expected]
            assert decision.index == priors.index(max(priors))
            chosen = policy.decide_batch(np.stack([x, x]), **DECIDE)
            assert chosen.tolist() == [decision.index] * 2
        else:
            with pytest.raises(mixllm.EmptyPoolError):
                policy.decide(x, **DECIDE)


@settings(max_examples=80, deadline=None)
@given(
    dim=dims,
    seed=seeds,
    values=observations,
    ridge=st.sampled_from([0.25, 1.0, 4.0]),
    prior_quality=qualities,
)
def test_removing_and_re_adding_a_model_gives_a_fresh_arm(
    dim: int,
    seed: int,
    values: list[tuple[float, float | None, float]],
    ridge: float,
    prior_quality: float,
) -> None:
    policy = mixllm.Policy(dim, ridge=ridge)
    policy.add_model("m", **PROFILE)
    policy.add_model("other", **PROFILE)
    for obs in observation_stream(dim, seed, values):
        policy.update("m", **obs)
    policy.begin("m")
    policy.begin("m")
    policy.end("m", 2.0)

    policy.remove_model("m")
    policy.add_model("m", **PROFILE, prior_quality=prior_quality, prior_output_tokens=10.0)

    assert policy.models == ["other", "m"]
    state = policy.inspect("m")
    np.testing.assert_array_equal(state["a"], ridge * np.eye(dim))
    np.testing.assert_array_equal(state["a_inv"], np.eye(dim) / ridge)
    for key in ("theta_quality", "theta_log_length", "b_quality", "b_log_length"):
        np.testing.assert_array_equal(state[key], np.zeros(dim))
    assert (state["observations"], state["weight_sum"], state["updates_since_refactor"]) == (
        0,
        0.0,
        0,
    )
    assert (state["in_flight"], state["completed"], state["mean_service_s"]) == (0, 0, None)
    assert (state["prior_quality"], state["prior_output_tokens"]) == (prior_quality, 10.0)
    x = np.random.default_rng(seed).normal(size=dim)
    decision = policy.decide(x, **DECIDE)
    assert decision.quality[1] == prior_quality
    assert decision.output_tokens[1] == pytest.approx(10.0, rel=1e-12)
    assert decision.uncertainty[1] == pytest.approx(np.sqrt(x @ x / ridge), rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(dim=dims, seed=seeds, values=observations)
def test_a_model_is_scored_independently_of_the_rest_of_the_pool(
    dim: int, seed: int, values: list[tuple[float, float | None, float]]
) -> None:
    policy = mixllm.Policy(dim, alpha=0.3)
    policy.add_model("a", **PROFILE)
    for obs in observation_stream(dim, seed, values):
        policy.update("a", **obs)
    x = np.random.default_rng(seed + 1).normal(size=dim)
    alone = policy.decide(x, **DECIDE)

    policy.add_model("b", **PROFILE)
    policy.add_model("c", **{**PROFILE, "concurrency": 1})
    for obs in observation_stream(dim, seed + 2, values):
        policy.update("b", **obs)
    policy.begin("c")
    policy.begin("c")
    policy.remove_model("b")
    crowded = policy.decide(x, **DECIDE)

    assert crowded.models == ["a", "c"]
    for key in ("quality", "cost", "latency", "uncertainty", "penalty", "score"):
        assert getattr(crowded, key)[0] == getattr(alone, key)[0], key


def bad_calls(dim: int) -> list[Callable[[mixllm.Policy], object]]:
    x = np.ones(dim)
    nan_x = x.copy()
    nan_x[-1] = np.nan
    return [
        lambda p: p.update("a", np.ones(dim + 1), quality=1.0),
        lambda p: p.update("a", nan_x, quality=1.0),
        lambda p: p.update("a", x, quality=np.nan),
        lambda p: p.update("a", x, quality=1.0, output_tokens=-1.0),
        lambda p: p.update("a", x, quality=1.0, weight=0.0),
        lambda p: p.update("gone", x, quality=1.0),
        lambda p: p.update("a", x.astype(np.int64), quality=1.0),
        lambda p: p.fit("a", np.ones((3, dim)), np.ones(2)),
        lambda p: p.fit("a", np.stack([x, nan_x]), np.ones(2)),
        lambda p: p.fit("a", np.ones((2, dim)), np.ones(2), weights=np.array([1.0, -1.0])),
        lambda p: p.decide(nan_x, **DECIDE),
        lambda p: p.decide(x, prompt_tokens=1.0, willingness_to_pay=0.0),
        lambda p: p.decide_batch(np.ones((2, dim)), prompt_tokens=np.ones(3), willingness_to_pay=1),
        lambda p: p.add_model("a", **PROFILE),
        lambda p: p.add_model("new", **{**PROFILE, "tokens_per_s": 0.0}),
        lambda p: p.update_profile("a", price_out=-1.0),
        lambda p: p.end("b", 1.0),
        lambda p: p.end("a", np.nan),
        lambda p: p.remove_model("gone"),
    ]


@settings(max_examples=100, deadline=None)
@given(
    dim=dims,
    seed=seeds,
    values=observations,
    which=st.integers(min_value=0, max_value=18),
)
def test_a_rejected_call_leaves_everything_bit_identical(
    dim: int, seed: int, values: list[tuple[float, float | None, float]], which: int
) -> None:
    policy = mixllm.Policy(dim, refactor_every=4)
    policy.add_model("a", **PROFILE)
    policy.add_model("b", **PROFILE, fee=0.5)
    for obs in observation_stream(dim, seed, values):
        policy.update("a", **obs)
    policy.begin("a")
    probes = np.random.default_rng(seed).normal(size=(5, dim))

    def observe() -> tuple[Any, ...]:
        scores = [policy.decide(x, **DECIDE).score.tobytes() for x in probes]
        inspected = [
            {
                k: v.tobytes() if isinstance(v, np.ndarray) else v
                for k, v in policy.inspect(m).items()
            }
            for m in policy.models
        ]
        return policy.to_bytes(), policy.in_flight("a"), scores, inspected

    before = observe()
    calls = bad_calls(dim)
    assert len(calls) == 19
    with pytest.raises(mixllm.MixllmError):
        calls[which](policy)
    assert observe() == before


# Finite amounts from 0 to the largest float, the extremes most likely.
amounts = st.one_of(
    st.sampled_from([0.0, 1e308, float(np.finfo(np.float64).max), 5e-324]),
    st.floats(min_value=-300.0, max_value=308.0).map(lambda e: 10.0**e),
)
positive_amounts = amounts.filter(lambda v: v > 0.0)
extreme_profiles = st.fixed_dictionaries(
    {
        "price_in": amounts,
        "price_out": amounts,
        "fee": amounts,
        "ttft_s": amounts,
        "tokens_per_s": positive_amounts,
        "concurrency": st.integers(min_value=1, max_value=3),
        "prior_quality": st.floats(min_value=-1e300, max_value=1e300),
        "prior_output_tokens": amounts,
    }
)


@settings(max_examples=300, deadline=None)
@given(
    profiles=st.lists(extreme_profiles, min_size=1, max_size=4),
    busy=st.lists(st.none() | amounts, min_size=4, max_size=4),
    alpha=st.just(0.0) | amounts,
    beta=st.just(0.0) | amounts,
    tau_s=positive_amounts,
    x=st.lists(st.floats(min_value=-1e100, max_value=1e100), min_size=2, max_size=2),
    prompt_tokens=amounts,
    willingness_to_pay=st.just(float("inf")) | positive_amounts,
)
def test_no_nan_ever_decides(
    profiles: list[dict[str, Any]],
    busy: list[float | None],
    alpha: float,
    beta: float,
    tau_s: float,
    x: list[float],
    prompt_tokens: float,
    willingness_to_pay: float,
) -> None:
    policy = mixllm.Policy(2, alpha=alpha, beta=beta, tau_s=tau_s)
    for i, (profile, service) in enumerate(zip(profiles, busy, strict=False)):
        policy.add_model(f"m{i}", **profile)
        if service is not None:
            for _ in range(profile["concurrency"]):
                policy.begin(f"m{i}", service, now_s=0.0)
    decision = policy.decide(
        x, prompt_tokens=prompt_tokens, willingness_to_pay=willingness_to_pay, now_s=0.0
    )
    assert not np.isnan(decision.latency).any()
    assert not np.isnan(decision.cost).any() and np.isfinite(decision.cost).all()
    # A NaN score is never in the running.
    assert not np.isnan(decision.score[~decision.excluded]).any()
    admissible = ~decision.excluded
    if admissible.any():
        assert admissible[decision.index]
        assert decision.score[decision.index] == decision.score[admissible].max()
    else:
        assert decision.latency[decision.index] == decision.latency.min()
    chosen = policy.decide_batch(
        np.array([x]),
        prompt_tokens=prompt_tokens,
        willingness_to_pay=willingness_to_pay,
        now_s=0.0,
    )
    assert chosen.tolist() == [decision.index]


def valid_state() -> bytes:
    policy = mixllm.Policy(3, length_ridge=2.0, refactor_every=7)
    for name in ("alpha", "beta"):
        policy.add_model(name, **PROFILE)
    rng = np.random.default_rng(0)
    for i in range(20):
        policy.update(
            ("alpha", "beta")[i % 2],
            rng.normal(size=3),
            quality=i % 3 / 2,
            output_tokens=None if i % 4 == 0 else 10.0 * i,
        )
    policy.begin("alpha", 2.0, now_s=0.0)
    policy.end("alpha", 3.0, 2.0, now_s=3.0)
    return policy.to_bytes()


VALID_STATE = valid_state()
HEADER_LEN = 20


def resealed(data: bytes) -> bytes:
    """With the header's payload length and the checksum made right for what it holds."""
    if len(data) < HEADER_LEN + 4:
        return data
    body = data[:12] + struct.pack("<Q", len(data) - HEADER_LEN - 4) + data[HEADER_LEN:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def assert_loads_or_refuses(data: bytes, tmp_path: Path) -> None:
    """`from_bytes` and `load` agree: both refuse with a StateFileError, or both give the same
    policy, one that decides, learns and saves a state that loads."""
    path = tmp_path / "fuzzed.bin"
    path.write_bytes(data)
    try:
        policy = mixllm.Policy.from_bytes(data)
    except mixllm.StateFileError:
        with pytest.raises(mixllm.StateFileError):
            mixllm.Policy.load(path)
        return
    assert mixllm.Policy.load(path).to_bytes() == policy.to_bytes()
    x = np.full(policy.dim, 0.5)
    if policy.models:
        policy.decide(x, **DECIDE)
        for name in policy.models:
            # An update may be refused (a value out of range), changing nothing.
            with contextlib.suppress(mixllm.InvalidInputError):
                policy.update(name, x, quality=1.0, output_tokens=5.0)
    assert mixllm.Policy.from_bytes(policy.to_bytes()).to_bytes() == policy.to_bytes()


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), magic=st.booleans(), reseal=st.booleans())
def test_arbitrary_bytes_are_refused_cleanly(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, magic: bool, reseal: bool
) -> None:
    if magic:
        data = b"MIXLLMP\0" + struct.pack("<I", 4) + data
    if reseal:
        data = resealed(data)
    assert_loads_or_refuses(data, tmp_path_factory.mktemp("fuzz"))


field_values = st.one_of(
    st.integers(min_value=0, max_value=2**64 - 1).map(lambda v: struct.pack("<Q", v)),
    st.sampled_from([0, 1, 2, 3, 4096, 4097, 2**63, 2**64 - 1]).map(lambda v: struct.pack("<Q", v)),
    st.sampled_from(
        [-1.0, 0.0, 0.5, 2.0, -1e150, 1e150, 1e300, float("nan"), float("inf"), -float("inf")]
    ).map(lambda v: struct.pack("<d", v)),
)


@settings(max_examples=300, deadline=None)
@given(
    edits=st.lists(
        st.tuples(st.integers(min_value=0, max_value=len(VALID_STATE)), field_values),
        min_size=1,
        max_size=3,
    ),
    aligned=st.booleans(),
    cut=st.none() | st.integers(min_value=0, max_value=len(VALID_STATE)),
)
def test_damaged_states_that_pass_the_checksum_are_refused_or_work(
    tmp_path_factory: pytest.TempPathFactory,
    edits: list[tuple[int, bytes]],
    aligned: bool,
    cut: int | None,
) -> None:
    data = bytearray(VALID_STATE)
    payload_len = len(data) - HEADER_LEN - 4
    for at, value in edits:
        at = HEADER_LEN + at % (payload_len - 8)
        if aligned:
            at -= (at - HEADER_LEN) % 8
        data[at : at + 8] = value
    damaged = bytes(data if cut is None else data[:cut])
    assert_loads_or_refuses(resealed(damaged), tmp_path_factory.mktemp("fuzz"))
