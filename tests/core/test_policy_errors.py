"""Bad input to `mixllm.Policy`: the right exception class, a message naming the problem, and no
change of state (the saved bytes and the in-flight counts are identical before and after)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import mixllm
from mixllm import (
    DimensionError,
    DuplicateModelError,
    EmptyPoolError,
    InputTypeError,
    InvalidInputError,
    MixllmError,
    StateFileError,
    UnknownModelError,
)

DIM = 4
NAN, INF = float("nan"), float("inf")
PROFILE: dict[str, Any] = {
    "price_in": 1.0,
    "price_out": 3.0,
    "ttft_s": 0.4,
    "tokens_per_s": 60.0,
    "concurrency": 2,
}
X = np.array([0.5, -1.0, 2.0, 0.25])
DECIDE = {"prompt_tokens": 100.0, "willingness_to_pay": 2.0}


@pytest.fixture
def policy() -> mixllm.Policy:
    """Two models with some history, a request in flight and an observed service time."""
    rng = np.random.default_rng(0)
    p = mixllm.Policy(DIM, refactor_every=5)
    p.add_model("a", **PROFILE)
    p.add_model("b", **PROFILE, fee=0.01, prior_quality=0.7)
    for _ in range(7):
        p.update("a", rng.normal(size=DIM), quality=0.8, output_tokens=120.0)
        p.update("b", rng.normal(size=DIM), quality=0.3, weight=2.0)
    p.begin("a")
    p.begin("a")
    p.end("a", 1.5)
    return p


def state(
    p: mixllm.Policy,
) -> tuple[bytes, dict[str, tuple[int, float | None]], list[float]]:
    """Everything a rejected call must leave alone: the saved state, and per model the requests
    in flight with the time their predicted work would be done (not saved), and the scores."""
    # At a fixed time: the queues' waits move with the clock, not with a rejected call.
    scores = p.decide(X, **DECIDE, now_s=1e7).score.tolist() if len(p) else []
    live = {m: (p.in_flight(m), p.inspect(m)["clears_at_s"]) for m in p.models}
    return p.to_bytes(), live, scores


def assert_rejected(
    p: mixllm.Policy,
    call: Callable[[mixllm.Policy], object],
    error: type[Exception],
    match: str,
) -> None:
    before = state(p)
    with pytest.raises(error, match=match) as raised:
        call(p)
    assert isinstance(raised.value, MixllmError)
    assert state(p) == before


def test_the_exception_tree() -> None:
    assert issubclass(InvalidInputError, ValueError)
    assert issubclass(DimensionError, InvalidInputError)
    assert issubclass(InputTypeError, TypeError)
    assert issubclass(UnknownModelError, KeyError)
    assert issubclass(DuplicateModelError, ValueError)
    assert issubclass(EmptyPoolError, LookupError)
    assert issubclass(StateFileError, ValueError)
    for cls in (
        InvalidInputError,
        DimensionError,
        InputTypeError,
        UnknownModelError,
        DuplicateModelError,
        EmptyPoolError,
        StateFileError,
    ):
        assert issubclass(cls, MixllmError)
        assert cls.__module__ == "mixllm"
    assert issubclass(MixllmError, Exception)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 0}, "dim"),
        ({"dim": -3}, "dim"),
        ({"dim": 100_000}, "dim"),
        ({"dim": 4, "ridge": 0.0}, "ridge"),
        ({"dim": 4, "ridge": -1.0}, "ridge"),
        ({"dim": 4, "ridge": NAN}, "ridge"),
        ({"dim": 4, "length_ridge": 0.0}, "length_ridge"),
        ({"dim": 4, "length_ridge": -2.0}, "length_ridge"),
        ({"dim": 4, "length_ridge": INF}, "length_ridge"),
        ({"dim": 4, "tau_s": 0.0}, "tau_s"),
        ({"dim": 4, "tau_s": -5.0}, "tau_s"),
        ({"dim": 4, "tau_s": INF}, "tau_s"),
        ({"dim": 4, "alpha": -0.1}, "alpha"),
        ({"dim": 4, "tau_margin_sd": -1.0}, "tau_margin_sd"),
        ({"dim": 4, "tau_margin_sd": NAN}, "tau_margin_sd"),
        ({"dim": 4, "beta": NAN}, "beta"),
        ({"dim": 4, "refactor_every": 0}, "refactor_every"),
        ({"dim": 4, "refactor_every": -1}, "refactor_every"),
        ({"dim": 4, "service_time_smoothing": 0.0}, "service_time_smoothing"),
        ({"dim": 4, "service_time_smoothing": 1.5}, "service_time_smoothing"),
    ],
)
def test_bad_configuration_is_rejected(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        mixllm.Policy(**kwargs)


def test_a_valid_configuration_is_kept() -> None:
    p = mixllm.Policy(
        3,
        alpha=0.0,
        beta=0.0,
        ridge=1e-6,
        tau_s=0.5,
        refactor_every=1,
        service_time_smoothing=1.0,
        length_ridge=40.0,
        tau_margin_sd=1.5,
    )
    assert (p.dim, p.alpha, p.beta, p.ridge, p.tau_s) == (3, 0.0, 0.0, 1e-6, 0.5)
    assert p.tau_margin_sd == 1.5 and mixllm.Policy(3).tau_margin_sd == 0.0
    assert p.length_ridge == 40.0 and mixllm.Policy(3).length_ridge == 1.0
    assert (p.refactor_every, p.service_time_smoothing) == (1, 1.0)
    assert len(p) == 0
    assert p.models == []


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"price_in": -1.0}, "price_in"),
        ({"price_out": -0.01}, "price_out"),
        ({"price_out": NAN}, "price_out"),
        ({"fee": -1e-9}, "fee"),
        ({"ttft_s": -0.1}, "ttft_s"),
        ({"ttft_s": INF}, "ttft_s"),
        ({"tokens_per_s": 0.0}, "tokens_per_s"),
        ({"tokens_per_s": -10.0}, "tokens_per_s"),
        ({"tokens_per_s": INF}, "tokens_per_s"),
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": -2}, "concurrency"),
        ({"concurrency": 2**40}, "concurrency"),
        ({"prior_quality": NAN}, "prior_quality"),
        ({"prior_output_tokens": -1.0}, "prior_output_tokens"),
        ({"prior_output_tokens": INF}, "prior_output_tokens"),
    ],
)
def test_bad_model_profiles_are_rejected(
    policy: mixllm.Policy, changes: dict[str, Any], match: str
) -> None:
    kwargs = {**PROFILE, **changes}
    assert_rejected(policy, lambda p: p.add_model("c", **kwargs), InvalidInputError, match)
    assert "c" not in policy
    if "prior" not in match:
        assert_rejected(
            policy, lambda p: p.update_profile("a", **changes), InvalidInputError, match
        )


def test_zero_prices_are_fine(policy: mixllm.Policy) -> None:
    policy.add_model(
        "free",
        price_in=0.0,
        price_out=0.0,
        ttft_s=0.0,
        tokens_per_s=1.0,
        concurrency=1,
        prior_output_tokens=0.0,
    )
    assert policy.profile("free")["price_in"] == 0.0
    assert policy.decide(X, **DECIDE).cost[2] == 0.0


def test_duplicate_and_empty_names(policy: mixllm.Policy) -> None:
    assert_rejected(policy, lambda p: p.add_model("a", **PROFILE), DuplicateModelError, '"a"')
    assert_rejected(policy, lambda p: p.add_model("", **PROFILE), InvalidInputError, "name")
    assert policy.models == ["a", "b"]


@pytest.mark.parametrize(
    "call",
    [
        lambda p: p.update("zz", X, quality=1.0),
        lambda p: p.fit("zz", np.ones((2, DIM)), np.ones(2)),
        lambda p: p.remove_model("zz"),
        lambda p: p.begin("zz"),
        lambda p: p.end("zz", 1.0),
        lambda p: p.in_flight("zz"),
        lambda p: p.inspect("zz"),
        lambda p: p.profile("zz"),
        lambda p: p.update_profile("zz", price_in=1.0),
    ],
    ids=["update", "fit", "remove", "begin", "end", "in_flight", "inspect", "profile", "profile="],
)
def test_unknown_models(policy: mixllm.Policy, call: Callable[[mixllm.Policy], object]) -> None:
    assert_rejected(policy, call, UnknownModelError, "unknown model.*zz")
    with pytest.raises(KeyError):
        call(policy)


def test_feedback_for_a_removed_model_is_rejected_and_touches_nothing(
    policy: mixllm.Policy,
) -> None:
    policy.remove_model("b")
    assert_rejected(policy, lambda p: p.update("b", X, quality=1.0), UnknownModelError, "b")
    assert_rejected(policy, lambda p: p.end("b", 1.0), UnknownModelError, "b")


BAD_VECTORS: list[tuple[str, Any, type[Exception], str]] = [
    ("short", np.ones(DIM - 1), DimensionError, "length 3, expected length 4"),
    ("long", [1.0] * (DIM + 1), DimensionError, "length 5, expected length 4"),
    ("2-D", np.ones((1, DIM)), DimensionError, "1-D"),
    ("0-D", np.array(1.0), DimensionError, "1-D"),
    ("int dtype", np.ones(DIM, dtype=np.int64), InputTypeError, "float64 or float32"),
    ("object dtype", np.array([1.0] * DIM, dtype=object), InputTypeError, "float64 or float32"),
    ("str dtype", np.array(["1"] * DIM), InputTypeError, "float64 or float32"),
    ("str", "1234", InputTypeError, "str"),
    ("list of str", ["a"] * DIM, InputTypeError, "list"),
    ("None", None, InputTypeError, "NoneType"),
    ("nan", [0.0, NAN, 0.0, 0.0], InvalidInputError, "finite.*position 1"),
    ("inf", [0.0, 0.0, 0.0, -INF], InvalidInputError, "finite.*position 3"),
    ("huge", [0.0, 0.0, 1e101, 0.0], InvalidInputError, "too large"),
]


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [case[1:] for case in BAD_VECTORS],
    ids=[case[0] for case in BAD_VECTORS],
)
def test_bad_contexts(policy: mixllm.Policy, x: Any, error: type[Exception], match: str) -> None:
    assert_rejected(policy, lambda p: p.decide(x, **DECIDE), error, match)
    assert_rejected(policy, lambda p: p.update("a", x, quality=0.5), error, match)


BAD_MATRICES: list[tuple[str, Any, type[Exception], str]] = [
    ("1-D", np.ones(DIM), DimensionError, "2-D"),
    ("3-D", np.ones((2, DIM, 1)), DimensionError, "2-D"),
    ("columns", np.ones((2, DIM + 1)), DimensionError, r"shape \(2, 5\)"),
    ("ragged", [[1.0] * DIM, [1.0] * (DIM - 1)], DimensionError, "row 1 has 3 values"),
    ("int dtype", np.ones((2, DIM), dtype=np.int32), InputTypeError, "float64 or float32"),
    ("object dtype", np.ones((2, DIM), dtype=object), InputTypeError, "float64 or float32"),
    ("str", "abc", InputTypeError, "2-D"),
    ("nan", np.where(np.eye(2, DIM) > 0, NAN, 0.0), InvalidInputError, "row 0.*finite"),
    ("inf", np.where(np.eye(2, DIM, 1) > 0, INF, 0.0), InvalidInputError, "row 0.*finite"),
]


@pytest.mark.parametrize(
    ("X_", "error", "match"),
    [case[1:] for case in BAD_MATRICES],
    ids=[case[0] for case in BAD_MATRICES],
)
def test_bad_matrices(policy: mixllm.Policy, X_: Any, error: type[Exception], match: str) -> None:
    assert_rejected(policy, lambda p: p.decide_batch(X_, **DECIDE), error, match)
    assert_rejected(policy, lambda p: p.fit("a", X_, [0.5, 0.5]), error, match)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"quality": NAN}, "quality"),
        ({"quality": INF}, "quality"),
        ({"quality": 1e200}, "quality"),
        ({"quality": 0.5, "output_tokens": NAN}, "output_tokens"),
        ({"quality": 0.5, "output_tokens": INF}, "output_tokens"),
        ({"quality": 0.5, "output_tokens": -1.0}, "output_tokens"),
        ({"quality": 0.5, "weight": 0.0}, "weight"),
        ({"quality": 0.5, "weight": -1.0}, "weight"),
        ({"quality": 0.5, "weight": NAN}, "weight"),
        ({"quality": 0.5, "weight": INF}, "weight"),
        ({"quality": 0.5, "weight": 1e200}, "weight"),
    ],
)
def test_bad_observations(policy: mixllm.Policy, kwargs: dict[str, Any], match: str) -> None:
    assert_rejected(policy, lambda p: p.update("a", X, **kwargs), InvalidInputError, match)
    assert_rejected(policy, lambda p: p.update("b", X, **kwargs), InvalidInputError, match)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prompt_tokens": NAN, "willingness_to_pay": 1.0}, "prompt_tokens"),
        ({"prompt_tokens": INF, "willingness_to_pay": 1.0}, "prompt_tokens"),
        ({"prompt_tokens": -1.0, "willingness_to_pay": 1.0}, "prompt_tokens"),
        ({"prompt_tokens": 10.0, "willingness_to_pay": 0.0}, "willingness_to_pay"),
        ({"prompt_tokens": 10.0, "willingness_to_pay": -2.0}, "willingness_to_pay"),
        ({"prompt_tokens": 10.0, "willingness_to_pay": NAN}, "willingness_to_pay"),
        ({"prompt_tokens": 10.0, "willingness_to_pay": -INF}, "willingness_to_pay"),
    ],
)
def test_bad_decision_arguments(policy: mixllm.Policy, kwargs: dict[str, Any], match: str) -> None:
    assert_rejected(policy, lambda p: p.decide(X, **kwargs), InvalidInputError, match)
    X2 = np.stack([X, X])
    assert_rejected(policy, lambda p: p.decide_batch(X2, **kwargs), InvalidInputError, match)
    # The bad value as the second entry of a per-row array.
    per_row = {**kwargs, match: np.array([DECIDE[match], kwargs[match]])}
    assert_rejected(policy, lambda p: p.decide_batch(X2, **per_row), InvalidInputError, match)


def test_per_row_decision_arguments_of_the_wrong_length(policy: mixllm.Policy) -> None:
    X3 = np.stack([X, X, X])
    for name in ("prompt_tokens", "willingness_to_pay"):
        for values in (np.ones(2), [1.0] * 4, np.ones(1)):
            kwargs = {**DECIDE, name: values}
            assert_rejected(
                policy, lambda p, kw=kwargs: p.decide_batch(X3, **kw), DimensionError, name
            )
        kwargs = {**DECIDE, name: np.ones(3, dtype=np.int64)}
        assert_rejected(policy, lambda p, kw=kwargs: p.decide_batch(X3, **kw), InputTypeError, name)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((np.ones(3),), {}, DimensionError, "quality has 3 values.*2"),
        ((np.array([0.5, NAN]),), {}, InvalidInputError, "quality.*finite"),
        ((np.ones(2), np.ones(3)), {}, DimensionError, "output_tokens"),
        ((np.ones(2), np.array([1.0, -1.0])), {}, InvalidInputError, "output_tokens row 1"),
        ((np.ones(2), np.array([NAN, INF])), {}, InvalidInputError, "output_tokens row 1"),
        ((np.ones(2),), {"weights": np.ones(1)}, DimensionError, "weights"),
        ((np.ones(2),), {"weights": np.array([1.0, -0.5])}, InvalidInputError, "weights"),
        ((np.ones(2),), {"weights": np.array([NAN, 1.0])}, InvalidInputError, "weights"),
        ((np.ones(2, dtype=np.int64),), {}, InputTypeError, "quality"),
        ((np.ones(2), "many"), {}, InputTypeError, "output_tokens"),
    ],
)
def test_bad_fits(
    policy: mixllm.Policy,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    X2 = np.stack([X, -X])
    assert_rejected(policy, lambda p: p.fit("b", X2, *args, **kwargs), error, match)


def test_fit_rejects_values_beyond_the_magnitude_limit(policy: mixllm.Policy) -> None:
    X1 = np.array([[1e10, 0.0, 0.0, 0.0]])
    assert_rejected(
        policy, lambda p: p.fit("b", X1, [1e300]), InvalidInputError, "quality.*too large"
    )


def test_a_ridge_whose_inverse_overflows_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match=r"^ridge must be at least"):
        mixllm.Policy(4, ridge=1e-310)
    with pytest.raises(InvalidInputError, match=r"^length_ridge must be at least"):
        mixllm.Policy(4, length_ridge=1e-310)
    assert mixllm.Policy(4, ridge=1e-300, length_ridge=1e-300).dim == 4


def test_end_without_begin_and_bad_latencies(policy: mixllm.Policy) -> None:
    assert_rejected(policy, lambda p: p.end("b", 1.0), InvalidInputError, "begin")
    for latency in (NAN, INF, -0.5):
        assert_rejected(policy, lambda p, s=latency: p.end("a", s), InvalidInputError, "latency_s")
    assert policy.in_flight("a") == 1
    policy.end("a", 0.0)
    assert_rejected(policy, lambda p: p.end("a", 1.0), InvalidInputError, "in flight")
    assert policy.in_flight("a") == 0


def test_bad_predicted_service_times_and_times_change_nothing(policy: mixllm.Policy) -> None:
    """`begin`, `end`, `cancel` and the readers check the predicted service time and `now_s`
    before counting anything."""
    t = 1e6  # later than anything the fixture's default clock gave
    policy.begin("a", 2.0, now_s=t)  # predicted work a bad call could corrupt
    for bad in (NAN, INF, -0.5):
        for call in (
            lambda p, s=bad: p.begin("a", s, now_s=t),
            lambda p, s=bad: p.end("a", 1.0, s, now_s=t),
            lambda p, s=bad: p.cancel("a", s, now_s=t),
        ):
            assert_rejected(policy, call, InvalidInputError, "predicted_service_s")
    for bad in (NAN, INF, -INF):
        for call in (
            lambda p, s=bad: p.begin("a", 1.0, now_s=s),
            lambda p, s=bad: p.end("a", 1.0, 1.0, now_s=s),
            lambda p, s=bad: p.cancel("a", 1.0, now_s=s),
            lambda p, s=bad: p.decide(X, **DECIDE, now_s=s),
            lambda p, s=bad: p.decide_batch(X[None, :], **DECIDE, now_s=s),
            lambda p, s=bad: p.predicted_wait_s("a", now_s=s),
        ):
            assert_rejected(policy, call, InvalidInputError, "now_s must be finite")
    assert_rejected(policy, lambda p: p.begin("a", "soon"), InputTypeError, "must be a number")
    assert_rejected(policy, lambda p: p.begin("a", 1.0, now_s="now"), InputTypeError, "now_s")
    # Two slots, three requests: the third waits for its share of the work, 1 + 12 / 2 s.
    policy.begin("a", 12.0, now_s=t)
    assert policy.inspect("a")["clears_at_s"] == t + 7.0
    assert policy.predicted_wait_s("a", now_s=t + 3.0) == 4.0
    policy.cancel("a", 12.0, now_s=t + 1.0)
    # Twice as fast as predicted: what is queued behind moves 0.5 s earlier.
    policy.end("a", 1.0, 2.0, now_s=t + 1.0)
    assert policy.inspect("a")["clears_at_s"] == t + 0.5
    assert policy.predicted_wait_s("a", now_s=t + 0.1) == 0.0  # a slot is free
    # Finished without a latency: it leaves as predicted, and nothing is learned.
    service = policy.inspect("a")["mean_service_s"]
    policy.begin("a", 3.0, now_s=t + 1.0)
    policy.end("a", None, 3.0, now_s=t + 1.5)
    assert policy.inspect("a")["clears_at_s"] == t + 2.5  # from t + 1, 3 s over 2 slots
    assert policy.inspect("a")["mean_service_s"] == service
    policy.end("a", 1.0, now_s=t + 2.0)
    state = policy.inspect("a")
    assert (state["in_flight"], state["clears_at_s"]) == (0, None)
    # Empty, the queue starts over from now.
    policy.begin("a", 4.0, now_s=t + 10.0)
    assert policy.inspect("a")["clears_at_s"] == t + 12.0


def test_a_new_concurrency_spreads_the_queued_work_over_the_new_slots(
    policy: mixllm.Policy,
) -> None:
    t = 1e6  # later than anything the fixture's default clock gave
    for _ in range(3):  # 10 s each on two slots (the fixture's request drained long ago)
        policy.begin("a", 10.0, now_s=t)
    assert policy.inspect("a")["clears_at_s"] == t + 15.0
    for bad in (NAN, INF):
        assert_rejected(
            policy,
            lambda p, s=bad: p.update_profile("a", concurrency=4, now_s=s),
            InvalidInputError,
            "now_s must be finite",
        )
    # At t + 3, 12 s of two slots' work is left: 6 s of four slots'.
    policy.update_profile("a", concurrency=4, now_s=t + 3.0)
    assert policy.inspect("a")["clears_at_s"] == t + 9.0
    assert policy.predicted_wait_s("a", now_s=t + 3.0) == 6.0
    # Other fields leave the books alone.
    policy.update_profile("a", price_in=2.0, now_s=t + 4.0)
    assert policy.inspect("a")["clears_at_s"] == t + 9.0
    # A request's error now moves the queue by its share of four slots: 4 s late is 1 s.
    policy.end("a", 14.0, 10.0, now_s=t + 8.0)
    assert policy.inspect("a")["clears_at_s"] == t + 10.0
    for _ in range(3):
        policy.end("a", None, 10.0, now_s=t + 10.0)
    state = policy.inspect("a")
    assert (state["in_flight"], state["clears_at_s"]) == (0, None)


def test_an_empty_pool_cannot_decide(policy: mixllm.Policy) -> None:
    empty = mixllm.Policy(DIM)
    assert_rejected(empty, lambda p: p.decide(X, **DECIDE), EmptyPoolError, "no models")
    assert_rejected(empty, lambda p: p.decide_batch([X], **DECIDE), EmptyPoolError, "no models")
    for name in policy.models:
        policy.remove_model(name)
    with pytest.raises(EmptyPoolError, match="add_model"):
        policy.decide(X, **DECIDE)
    with pytest.raises(LookupError):
        policy.decide_batch(np.zeros((0, DIM)), **DECIDE)


def test_float32_lists_and_ints_are_accepted(policy: mixllm.Policy) -> None:
    reference = policy.decide(X, **DECIDE)
    for x in (X.astype(np.float32), X.tolist(), tuple(X.tolist())):
        decision = policy.decide(x, **DECIDE)
        np.testing.assert_allclose(decision.score, reference.score, rtol=1e-6)
    assert policy.decide([1, 0, 0, 2], prompt_tokens=0, willingness_to_pay=3).index in (0, 1)

    twin = mixllm.Policy.from_bytes(policy.to_bytes())
    policy.update("a", X.astype(np.float32), quality=1, output_tokens=10)
    twin.update("a", X.astype(np.float32).astype(np.float64), quality=1.0, output_tokens=10.0)
    assert policy.to_bytes() == twin.to_bytes()
    policy.fit("b", np.stack([X, -X]).astype(np.float32), [0.5, 1], np.array([3, 4], np.float32))
    policy.fit("b", [list(X), list(-X)], [0.5, 1.0], weights=[1.0, 2.0])
    assert policy.inspect("b")["weight_sum"] == 3.0


def test_scalar_arguments_of_the_wrong_type_raise_type_error(policy: mixllm.Policy) -> None:
    before = state(policy)
    with pytest.raises(TypeError):
        policy.update("a", X, quality="high")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        policy.decide(X, prompt_tokens=None, willingness_to_pay=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        policy.add_model("c", **{**PROFILE, "concurrency": 2.5})
    assert state(policy) == before


def test_a_string_prompt_tokens_raises_input_type_error_in_decide_too(
    policy: mixllm.Policy,
) -> None:
    with pytest.raises(InputTypeError, match="prompt_tokens"):
        policy.decide_batch(np.stack([X]), prompt_tokens="100", willingness_to_pay=1.0)
    with pytest.raises(InputTypeError, match="prompt_tokens"):
        policy.decide(X, prompt_tokens="100", willingness_to_pay=1.0)  # type: ignore[arg-type]
