"""The Router's answers to bad or huge input and to backlogs: every argument checked before
anything changes, work bounded on long texts, caches bounded in bytes, expiry spread over
calls, and a model removed in the middle of a decision."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mixllm
from light_router import INPUT_DIM, HashEmbedder, ManualClock, light_router, rows
from mixllm import _lru, data
from mixllm._lru import LruCache
from mixllm.data import tokens
from mixllm.routing import route as routing
from mixllm.routing import router as router_module
from mixllm.routing.ledger import EXPIRE_PER_CALL
from mixllm.routing.router import Router


def in_flight(router: Router) -> int:
    return sum(router.policy.in_flight(m) for m in router.models)


class RemovingAfterDecide:
    """The Router's policy, but the model each decision picks is removed (through the Router)
    right after the decision and before the Router counts the request: the interleaving a
    `remove_model` in another thread can produce."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.policy = router.policy

    def decide(self, *args: Any, **kwargs: Any) -> Any:
        decision = self.policy.decide(*args, **kwargs)
        self.router.remove_model(decision.model)
        return decision

    def __contains__(self, name: str) -> bool:
        return name in self.policy

    def __getattr__(self, name: str) -> Any:
        return getattr(self.policy, name)


def test_feedback_for_a_model_removed_during_its_decision_is_the_documented_no_op() -> None:
    router = light_router()
    policy = router.policy
    router._policy = RemovingAfterDecide(router)  # type: ignore[assignment]
    decision = router.route("which model?")
    router._policy = policy
    assert decision.model not in router.models
    before = policy.to_bytes()
    assert router.feedback(decision.id, quality=1.0, latency_s=2.0) is False
    assert policy.to_bytes() == before
    assert router.pending() == 0 and in_flight(router) == 0
    # And `complete` first, then feedback, as a service that learns quality later does.
    router._policy = RemovingAfterDecide(router)  # type: ignore[assignment]
    other = router.route("another question")
    router._policy = policy
    router.complete(other.id, latency_s=1.0)
    assert router.feedback(other.id, quality=0.0) is False


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quality": 1.0, "latency_s": 1e200}, "latency_s must be at most 1e\\+100"),
        ({"quality": 1.0, "output_tokens": 1e101}, "output_tokens must be at most"),
        ({"quality": -1e150}, "quality must be at most"),
        ({"quality": 1.0, "latency_s": 10**400}, "latency_s is too large"),
        ({"quality": 1.0, "latency_s": "1"}, "latency_s must be a number"),
    ],
)
def test_feedback_out_of_the_cores_bounds_is_refused_before_anything_changes(
    kwargs: dict[str, Any], message: str
) -> None:
    router = light_router()
    decision = router.route("a question")
    state = router.policy.to_bytes()
    with pytest.raises(mixllm.InvalidInputError, match=message):
        router.feedback(decision.id, **kwargs)
    assert router.policy.to_bytes() == state
    assert router.pending() == 1 and in_flight(router) == 1
    # The decision is still open, and a good answer takes it out of flight.
    assert router.feedback(decision.id, quality=1.0, latency_s=3.0) is True
    assert router.pending() == 0 and in_flight(router) == 0


def test_bad_texts_are_mixllm_errors() -> None:
    router = light_router()
    with pytest.raises(mixllm.InputTypeError, match="text must be a str, got int") as caught:
        router.route(5)  # type: ignore[arg-type]
    assert isinstance(caught.value, TypeError)
    with pytest.raises(mixllm.InvalidInputError, match="not valid Unicode"):
        router.route("\ud800")
    with pytest.raises(mixllm.InvalidInputError, match=r"texts\[1\] is not valid Unicode"):
        router.route_batch(["fine", "bad \udfff"])
    with pytest.raises(mixllm.InputTypeError, match=r"texts\[0\]"):
        router.route_batch([b"bytes"])  # type: ignore[list-item]
    with pytest.raises(mixllm.InvalidInputError, match="willingness_to_pay must be a number"):
        router.route("fine", willingness_to_pay="1")  # type: ignore[arg-type]
    assert router.pending() == 0 and in_flight(router) == 0
    # An integer too large for a float is a willingness beyond any price.
    assert router.route("fine", willingness_to_pay=10**400).willingness_to_pay == math.inf


class CountingTokenizer:
    """A tokenizer that records the longest text it was asked to encode."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.longest = 0

    def encode_batch(self, texts: list[str], **kwargs: Any) -> Any:
        self.longest = max([self.longest, *(len(t) for t in texts)])
        return self.inner.encode_batch(texts, **kwargs)

    def count(self, texts: list[str], **kwargs: Any) -> Any:
        self.longest = max([self.longest, *(len(t) for t in texts)])
        return self.inner.count(texts, **kwargs)


def test_a_huge_text_is_tokenized_only_as_far_as_it_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counter = CountingTokenizer(tokens._counting_tokenizer())
    monkeypatch.setattr(tokens, "_tokenizer", counter)
    embedder = mixllm.Embedder(cache_size=0)
    encoder_side = CountingTokenizer(embedder._tokenizer)
    embedder._tokenizer = encoder_side
    router = light_router(embedder=embedder)
    router._embedder = _ProjectingEmbedder(embedder)  # type: ignore[assignment]
    sentence = "The quick brown fox jumps over the lazy dog. "
    text = sentence * (4_000_000 // len(sentence))
    decision = router.route(text)
    assert counter.longest <= tokens.EXACT_COUNT_CHARS
    assert encoder_side.longest <= 64 * embedder.max_tokens
    # The count is the prefix's, scaled: exact for a text that repeats itself.
    exact_per_sentence = data.count_tokens([sentence * 100])[0] / 100
    assert decision.prompt_tokens == pytest.approx(
        exact_per_sentence * len(text) / len(sentence), rel=1e-3
    )
    short = "A short question?"
    assert router.route(short).prompt_tokens == data.count_tokens([short])[0]


class _ProjectingEmbedder:
    """The real encoder's vectors cut to the light router's input width."""

    def __init__(self, inner: mixllm.Embedder) -> None:
        self.inner = inner

    def embed(self, texts: list[str]) -> Any:
        vectors = self.inner.embed(texts)[:, :INPUT_DIM]
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_the_context_cache_keeps_digests_within_its_byte_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    budget = 20 * (16 + (_lru.ENTRY_OVERHEAD + 8 * 7))
    monkeypatch.setattr(router_module, "CONTEXT_CACHE_BYTES", budget)
    router = light_router()
    for i in range(100):
        router.route(f"question number {i} " + "x" * i)
        assert router._contexts.nbytes <= budget
    assert len(router._contexts) == 20
    assert all(isinstance(k, bytes) and len(k) == 16 for k in router._contexts._data)


def test_an_lru_cache_never_exceeds_its_byte_budget() -> None:
    cache: LruCache[int, str] = LruCache(1000, max_bytes=100)
    sizes = [7, 30, 1, 99, 100, 101, 50, 50, 3]
    for key, size in enumerate(sizes):
        cache.put(key, "v", size)
        assert cache.nbytes <= 100
    assert cache.get(5) is None  # heavier than the whole budget: never kept
    assert cache.get(8) is not None and cache.get(7) is not None
    cache.put(8, "w", 40)  # replacing an entry accounts its new size only
    assert cache.nbytes == 90 and cache.get(8) == "w"


def test_expiry_is_spread_over_calls_and_reaches_every_decision() -> None:
    clock = ManualClock()
    router = light_router(clock=clock, feedback_ttl_s=10.0)
    backlog = [router.route(f"q{i % 7}") for i in range(500)]
    assert router.pending() == 500 and in_flight(router) == 500
    clock.now += 11.0
    fresh = router.route("new")
    # One call drops at most EXPIRE_PER_CALL of the expired decisions.
    assert router.pending() == 501 - EXPIRE_PER_CALL
    # A decision past its time to live takes no feedback even before expiry reaches it,
    # and its request leaves the queue then.
    last = backlog[-1]
    with pytest.raises(mixllm.DecisionNotFoundError, match="expired"):
        router.feedback(last.id, quality=1.0)
    assert in_flight(router) == 501 - EXPIRE_PER_CALL - 1
    calls = 0
    while router.pending() > 1 + calls:
        router.route("more")
        calls += 1
        assert calls <= math.ceil(500 / (EXPIRE_PER_CALL - 1))
    assert in_flight(router) == router.pending() == 1 + calls
    assert router.feedback(fresh.id, quality=1.0) is True
    for old in backlog[:3]:
        with pytest.raises(mixllm.DecisionNotFoundError, match="expired"):
            router.feedback(old.id, quality=1.0)


_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(),
    st.text(max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(quality=_ANY_VALUE, output_tokens=_ANY_VALUE, latency_s=_ANY_VALUE)
def test_feedback_with_any_values_learns_or_changes_nothing(
    quality: Any, output_tokens: Any, latency_s: Any
) -> None:
    router = light_router()
    decision = router.route("a question")
    state = router.policy.to_bytes()
    try:
        learned = router.feedback(
            decision.id, quality=quality, output_tokens=output_tokens, latency_s=latency_s
        )
    except mixllm.InvalidInputError:
        assert router.policy.to_bytes() == state
        assert router.pending() == 1 and in_flight(router) == 1
    else:
        assert learned is True
        assert router.pending() == 0 and in_flight(router) == 0


def test_a_context_computed_across_a_fit_is_not_cached() -> None:
    # A route embeds its text while a fit replaces the projection: the context it computed
    # belongs to the old projection and must not be served to later decisions.
    class FittingMidEmbed(HashEmbedder):
        router: Router | None = None

        def embed(self, texts: Any) -> Any:
            vectors = super().embed(texts)
            if self.router is not None and list(texts) == ["the query"]:
                router, self.router = self.router, None
                router.fit(rows())
            return vectors

    embedder = FittingMidEmbed()
    router = light_router(embedder=embedder)
    embedder.router = router
    old_projection = router.projection
    router.route("the query")
    assert router.projection is not old_projection
    key = routing.text_key("the query")
    assert router._contexts.get(key) is None
    # The next route computes the context with the projection now in place.
    router.route("the query")
    cached = router._contexts.get(key)
    assert cached is not None
    assert router.projection is not None
    expected = router.projection.context(embedder.embed(["the query"]))[0]
    np.testing.assert_allclose(cached[0], expected)
