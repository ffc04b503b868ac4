"""Router.refit: projection, domains and heads learned again from the rows of the last fit
plus the feedback received since."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import mixllm
from mixllm.config import ModelConfig, RouterConfig
from mixllm.data import RoutingDataset
from mixllm.routing.router import Router

POOL = (ModelConfig("small", 0.1, 0.1), ModelConfig("big", 1.0, 9.9))


def dataset(n: int, offset: int = 0) -> RoutingDataset:
    easy = (np.arange(n) + offset) % 2 == 0
    return RoutingDataset(
        prompts=[
            f"{'What is two plus two' if e else 'Prove the Riemann hypothesis'}, case {i + offset}?"
            for i, e in enumerate(easy)
        ],
        models=["small", "big"],
        quality=np.column_stack([easy.astype(float), np.ones(n)]),
        cost_usd=np.column_stack([np.full(n, 1e-5), np.full(n, 1e-3)]),
        prompt_tokens=np.full(n, 10.0),
        output_tokens=np.full((n, 2), 100.0),
        latency_s=None,
        labels=None,
        split=None,
        ids=[str(i + offset) for i in range(n)],
    )


def test_refit_learns_from_the_fit_rows_and_the_feedback() -> None:
    router = Router(RouterConfig(models=POOL, dim=4))
    router.fit(dataset(12))
    before = router.policy.inspect("small")["observations"]
    assert before == 12
    texts = dataset(20, offset=100).prompts
    for text in texts:
        decision = router.route(text, willingness_to_pay=1e-9)  # the cheap model, always
        easy = "two plus two" in text
        router.feedback(decision.id, quality=1.0 if easy else 0.0, output_tokens=50.0)
    # Feedback teaches the arm online; a refit learns the 12 rows and the 20 answers anew.
    assert router.policy.inspect("small")["observations"] == 32
    report = router.refit()
    assert report.rows == 32
    assert report.rows_per_model == {"small": 32, "big": 12}
    assert router.policy.inspect("small")["observations"] == 32
    # Learned: nothing is refitted twice.
    again = router.refit()
    assert again.rows == 32


def test_binary_feedback_is_relearned_as_one_or_zero() -> None:
    router = Router(RouterConfig(models=POOL, dim=4))
    router.fit(dataset(4))
    decision = router.route("Prove the Riemann hypothesis, case 7?", willingness_to_pay=1e-9)
    router.feedback(decision.id, satisfied=False)
    report = router.refit()
    assert report.rows == 5 and report.rows_per_model[decision.model] == 5


def test_a_loaded_router_refits_on_its_feedback_alone(tmp_path) -> None:
    fitted = Router(RouterConfig(models=POOL, dim=4))
    fitted.fit(dataset(12))
    router = Router.load(fitted.save(tmp_path / "s").parent)
    with pytest.raises(mixllm.InvalidInputError, match="nothing to learn from"):
        router.refit()
    for text in dataset(6, offset=50).prompts:
        router.feedback(router.route(text).id, quality=1.0)
    assert router.refit().rows == 6


def test_routing_goes_on_during_a_refit() -> None:
    router = Router(RouterConfig(models=POOL, dim=4))
    router.fit(dataset(40))
    for text in dataset(40, offset=100).prompts:
        router.feedback(router.route(text).id, quality=1.0)
    errors: list[BaseException] = []

    def route_many() -> None:
        try:
            for i in range(200):
                router.route(f"What is {i} plus {i}?")
        except BaseException as err:
            errors.append(err)

    worker = threading.Thread(target=route_many)
    worker.start()
    router.refit()
    worker.join()
    assert errors == []
    assert router.pending() > 0


def test_the_log_is_bounded() -> None:
    router = Router(RouterConfig(models=POOL, dim=4, feedback_log_size=3))
    router.fit(dataset(4))
    for text in dataset(10, offset=10).prompts:
        router.feedback(router.route(text).id, quality=1.0)
    assert router.refit().rows == 4 + 3
    with pytest.raises(mixllm.ConfigError, match="feedback_log_size must be >= 0"):
        RouterConfig(models=POOL, feedback_log_size=-1)
