"""`Router.reroute`: another model for a decision's own query, from its context, prompt tokens
and willingness to pay, never embedding the text again; refused, changing nothing, when the
decision no longer awaits feedback, the model is not in the pool, or a fit replaced the
projection its context came from."""

from __future__ import annotations

import numpy as np
import pytest

import mixllm
from light_router import DIM, INPUT_DIM, HashEmbedder, ManualClock, model, rows
from mixllm.config import EmbedderConfig, RouterConfig
from mixllm.errors import DecisionNotFoundError, StateChangedError
from mixllm.routing.router import Router
from mixllm.understanding.projection import LinearProjection

TEXT = "Summarise the plot of Hamlet in two sentences."
TTL_S = 60.0


def uncached_router(embedder: HashEmbedder, clock: ManualClock | None = None) -> Router:
    """A Router that keeps no routing context: every route embeds its text."""
    config = RouterConfig(
        models=(model("small"), model("medium", price_out=5.0), model("large", price_out=20.0)),
        dim=DIM,
        embedder=EmbedderConfig(cache_size=0),
        feedback_ttl_s=TTL_S,
    )
    projection = LinearProjection(np.eye(DIM, INPUT_DIM), np.zeros(INPUT_DIM))
    return Router(config, embedder=embedder, projection=projection, clock=clock)  # type: ignore[arg-type]


def in_flight(router: Router) -> dict[str, int]:
    return {m: router.policy.in_flight(m) for m in router.models}


def observations(router: Router) -> dict[str, int]:
    return {m: int(router.policy.inspect(m)["observations"]) for m in router.models}


def test_a_reroute_embeds_nothing_and_keeps_the_query() -> None:
    embedder = HashEmbedder()
    router = uncached_router(embedder)
    first = router.route(TEXT, willingness_to_pay=0.02, prompt_tokens=321.0)
    assert len(embedder.calls) == 1
    other = next(m for m in router.models if m != first.model)
    second = router.reroute(first.id, other)
    assert len(embedder.calls) == 1
    assert second.model == other and second.id != first.id
    assert (second.prompt_tokens, second.willingness_to_pay) == (321.0, 0.02)
    assert second.detail.ranking == [other]
    # Both requests count in flight until the caller cancels the first.
    assert in_flight(router)[first.model] == 1 and in_flight(router)[other] == 1
    assert router.pending() == 2
    # Routing the same text again (no cache) embeds it again: the count above is live.
    router.route(TEXT, models=[other])
    assert len(embedder.calls) == 2


def test_what_a_reroute_learns_goes_to_its_model_as_a_route_there_would() -> None:
    rerouted = uncached_router(HashEmbedder(), ManualClock())
    first = rerouted.route(TEXT, willingness_to_pay=0.02)
    other = next(m for m in rerouted.models if m != first.model)
    second = rerouted.reroute(first.id, other)
    rerouted.cancel(first.id)
    before = observations(rerouted)
    assert rerouted.feedback(second.id, quality=0.75, output_tokens=40.0, latency_s=1.5)
    after = observations(rerouted)
    assert after[other] == before[other] + 1
    assert all(after[m] == before[m] for m in rerouted.models if m != other)
    assert all(count == 0 for count in in_flight(rerouted).values())
    assert rerouted._feedback_log[-1] == mixllm.routing.learning.LoggedFeedback(
        TEXT, other, 0.75, 40.0
    )
    # Learned exactly as a decision routed to that model from the start would have been.
    direct = uncached_router(HashEmbedder(), ManualClock())
    decision = direct.route(TEXT, willingness_to_pay=0.02, models=[other])
    assert direct.feedback(decision.id, quality=0.75, output_tokens=40.0, latency_s=1.5)
    learned, expected = rerouted.policy.inspect(other), direct.policy.inspect(other)
    for key in ("theta_quality", "b_quality", "a", "theta_log_length", "mean_service_s"):
        np.testing.assert_array_equal(learned[key], expected[key], err_msg=key)
    probe = np.linspace(-1.0, 1.0, DIM + 1)
    assert predicted(rerouted, probe)[other] == predicted(direct, probe)[other]


def predicted(router: Router, context: np.ndarray) -> dict[str, dict[str, float | bool]]:
    """What the router's arms predict for ``context``, model by model."""
    return router.policy.decide(
        context, prompt_tokens=10.0, willingness_to_pay=0.02, now_s=0.0
    ).explain()


def unchanged(router: Router) -> tuple[int, dict[str, int], bytes]:
    return router.pending(), in_flight(router), router.policy.to_bytes()


@pytest.mark.parametrize("close", ["cancel", "feedback", "expire", "never issued"])
def test_a_decision_that_awaits_no_feedback_is_not_rerouted(close: str) -> None:
    clock = ManualClock()
    router = uncached_router(HashEmbedder(), clock)
    decision = router.route(TEXT)
    decision_id = decision.id
    if close == "cancel":
        router.cancel(decision_id)
    elif close == "feedback":
        router.feedback(decision_id, quality=1.0)
    elif close == "expire":
        clock.now += TTL_S + 1
    else:
        decision_id = "nope-1"
    before = unchanged(router)
    reason = {"cancel": "cancelled", "feedback": "already answered", "expire": "expired"}
    with pytest.raises(DecisionNotFoundError, match=reason.get(close, "no decision")):
        router.reroute(decision_id, "large")
    if close != "expire":  # expiry takes the request out of the queue, whoever asks
        assert unchanged(router) == before


def test_a_completed_decision_awaiting_feedback_can_still_be_rerouted() -> None:
    router = uncached_router(HashEmbedder())
    decision = router.route(TEXT)
    router.complete(decision.id, latency_s=1.0)
    assert router.reroute(decision.id, "large").model == "large"


def test_a_model_not_in_the_pool_is_refused() -> None:
    router = uncached_router(HashEmbedder())
    decision = router.route(TEXT, models=["small"])
    router.remove_model("large")
    before = unchanged(router)
    with pytest.raises(mixllm.UnknownModelError, match="'large': it is not in the pool"):
        router.reroute(decision.id, "large")
    with pytest.raises(mixllm.InputTypeError, match="model must be a str"):
        router.reroute(decision.id, ["medium"])  # type: ignore[arg-type]
    with pytest.raises(mixllm.InputTypeError, match="decision_id must be a str"):
        router.reroute(None, "medium")  # type: ignore[arg-type]
    assert unchanged(router) == before


def test_a_decision_made_before_a_fit_is_not_rerouted() -> None:
    embedder = HashEmbedder()
    router = uncached_router(embedder)
    decision = router.route(TEXT, models=["small"])
    router.fit(rows())
    before = unchanged(router)
    with pytest.raises(StateChangedError, match="route its text again"):
        router.reroute(decision.id, "large")
    assert unchanged(router) == before
    # One made with the projection in place is.
    fresh = router.route(TEXT, models=["small"])
    calls = len(embedder.calls)
    assert router.reroute(fresh.id, "large").model == "large"
    assert len(embedder.calls) == calls
