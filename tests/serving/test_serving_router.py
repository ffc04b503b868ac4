"""What the gateway needs of the Router: per-query limits (allowed models, a cost ceiling, a
latency tolerance), `aroute` that never blocks the event loop and batches concurrent
embeddings, `cancel`, and lengths recorded at completion."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from gateway_harness import HashEmbedder, tiny_router
from mixllm._core import InvalidInputError, NoModelWithinLimitsError, UnknownModelError
from mixllm.config import ModelConfig
from mixllm.errors import DecisionNotFoundError
from mixllm.routing.router import Router


def model(name: str, **changes: float) -> ModelConfig:
    settings = {"price_in": 1.0, "price_out": 1.0, "ttft_s": 0.1, "tokens_per_s": 100.0,
                "concurrency": 1, "prior_output_tokens": 100.0}  # fmt: skip
    settings.update(changes)
    return ModelConfig(name=name, **settings)  # type: ignore[arg-type]


# "best" is better and dearer and slower; "cheap" is cheap and fast; "mid" is in between.
POOL = (
    model("best", prior_quality=0.9, price_out=100.0, ttft_s=2.0),
    model("mid", prior_quality=0.6, price_out=10.0, ttft_s=1.0),
    model("cheap", prior_quality=0.3, price_out=0.1),
)


def router() -> Router:
    return tiny_router(POOL, willingness_to_pay=1.0, tau_s=30.0)


def test_without_limits_the_best_model_wins() -> None:
    assert router().route("q").model == "best"


def test_allowed_models_limit_the_choice() -> None:
    r = router()
    decision = r.route("q", models=["mid", "cheap"])
    assert decision.model == "mid"
    assert r.policy.in_flight("mid") == 1 and r.policy.in_flight("best") == 0


def test_a_cost_ceiling_rules_out_dear_models() -> None:
    r = router()
    detail = r.route("q").detail
    costs = dict(zip(detail.models, detail.cost, strict=True))
    ceiling = (costs["mid"] + costs["best"]) / 2
    decision = r.route("q", max_cost_usd=ceiling)
    assert decision.model == "mid"
    # The fallbacks respect the ceiling too.
    assert decision.detail.ranking == ["mid", "cheap"]
    # Nothing within the ceiling: one answer, an error naming it, and nothing counted.
    with pytest.raises(NoModelWithinLimitsError, match="max_cost_usd"):
        r.route("q", max_cost_usd=costs["cheap"] / 2)
    assert r.pending() == 2


def test_a_latency_tolerance_rules_out_slow_models() -> None:
    r = router()
    detail = r.route("q").detail
    latency = dict(zip(detail.models, detail.latency, strict=True))
    assert latency["best"] > latency["mid"] > latency["cheap"]
    tolerance = (latency["mid"] + latency["best"]) / 2
    # The one request in flight for "best" (concurrency 1) makes it slower still.
    assert r.route("q", max_latency_s=tolerance).model == "mid"
    # None fast enough: an error naming the tolerance.
    with pytest.raises(NoModelWithinLimitsError, match="max_latency_s"):
        r.route("q", max_latency_s=1e-3)
    with pytest.raises(NoModelWithinLimitsError, match="max_latency_s"):
        asyncio.run(r.aroute("q", max_latency_s=1e-3))
    assert r.pending() == 2


@pytest.mark.parametrize(
    ("limits", "error", "says"),
    [
        ({"models": []}, InvalidInputError, "at least one"),
        ({"models": "best"}, InvalidInputError, "sequence"),
        ({"models": ["nope"]}, UnknownModelError, "nope"),
        ({"max_cost_usd": -1.0}, InvalidInputError, "max_cost_usd"),
        ({"max_cost_usd": float("nan")}, InvalidInputError, "max_cost_usd"),
        ({"max_latency_s": 0.0}, InvalidInputError, "max_latency_s"),
    ],
)
def test_bad_limits_are_refused_and_change_nothing(
    limits: dict[str, object], error: type[Exception], says: str
) -> None:
    r = router()
    with pytest.raises(error, match=says):
        r.route("q", **limits)
    with pytest.raises(error, match=says):
        asyncio.run(r.aroute("q", **limits))
    assert r.pending() == 0
    assert all(r.policy.in_flight(m.name) == 0 for m in POOL)


def test_aroute_decides_as_route_does() -> None:
    sync, async_ = router(), router()
    texts = [f"query {i}" for i in range(5)]
    expected = [sync.route(t, models=["mid", "cheap"]).model for t in texts]

    async def run() -> list[str]:
        decisions = [await async_.aroute(t, models=["mid", "cheap"]) for t in texts]
        return [d.model for d in decisions]

    assert asyncio.run(run()) == expected


class SlowEmbedder(HashEmbedder):
    """Takes 50 ms a batch, holding its thread, as a real encoder does."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()

    def embed(self, texts: list[str]) -> np.ndarray:
        self.threads.add(threading.get_ident())
        time.sleep(0.05)
        return super().embed(texts)


def test_aroute_embeds_off_the_loop_and_batches_concurrent_queries() -> None:
    r = router()
    embedder = SlowEmbedder()
    r._embedder = embedder  # type: ignore[assignment]

    async def run() -> tuple[list[str], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        task = asyncio.create_task(ticker())
        decisions = await asyncio.gather(*(r.aroute(f"query {i}") for i in range(20)))
        task.cancel()
        return [d.model for d in decisions], ticks

    models, ticks = asyncio.run(run())
    assert len(models) == 20
    # 20 texts in far fewer batches than texts: the first alone, the rest together.
    assert sum(embedder.batches) == 20 and len(embedder.batches) <= 3, embedder.batches
    assert threading.get_ident() not in embedder.threads
    # The loop kept running while the encoder worked.
    assert ticks >= 5


def test_cancel_takes_the_request_out_and_closes_the_decision() -> None:
    r = router()
    decision = r.route("q")
    assert r.policy.in_flight(decision.model) == 1
    r.cancel(decision.id)
    assert r.policy.in_flight(decision.model) == 0
    with pytest.raises(DecisionNotFoundError, match="cancelled"):
        r.feedback(decision.id, quality=1.0)


def test_lengths_given_at_completion_are_learned_at_once_and_only_once() -> None:
    r = router()
    decision = r.route("q")
    start = r.policy.inspect(decision.model)
    r.complete(decision.id, latency_s=1.0, output_tokens=300.0)
    before = r.policy.inspect(decision.model)
    assert before["b_log_length"][-1] - start["b_log_length"][-1] == pytest.approx(
        np.log1p(300.0) - np.log1p(100.0)
    )
    np.testing.assert_array_equal(before["b_quality"], start["b_quality"])
    assert before["observations"] == start["observations"]
    r.feedback(decision.id, quality=1.0)
    after = r.policy.inspect(decision.model)
    np.testing.assert_array_equal(after["b_log_length"], before["b_log_length"])
    assert after["observations"] == before["observations"] + 1
    # A refused length changes nothing: the decision stays in flight, nothing learned.
    refused = r.route("q")
    state = r.policy.to_bytes()
    with pytest.raises(InvalidInputError, match="output_tokens"):
        r.complete(refused.id, output_tokens=-1.0)
    with pytest.raises(InvalidInputError, match="output_tokens"):
        r.complete(refused.id, output_tokens=1e101)
    assert r.policy.to_bytes() == state
    assert r.policy.in_flight(refused.model) == 1


def test_update_model_keeps_what_was_learned() -> None:
    r = router()
    decision = r.route("q")
    r.feedback(decision.id, quality=1.0)
    r.update_model(model("best", prior_quality=0.9, price_out=1.0, ttft_s=2.0))
    assert r.policy.inspect("best")["observations"] == 1
    assert r.policy.profile("best")["price_out"] == 1.0
    assert {m.name: m.price_out for m in r.config.models}["best"] == 1.0
    with pytest.raises(UnknownModelError):
        r.update_model(model("nope"))
