"""The Router refits itself in the background once the feedback logged since its last fit
reaches ``refit_growth`` times that fit's rows, and goes on routing meanwhile."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

import mixllm
from mixllm.config import RouterConfig
from mixllm.routing.router import Router
from refit_data import POOL, dataset


def fitted(rows: int, **changes: float) -> Router:
    router = Router(RouterConfig(models=POOL, dim=4, **changes))  # type: ignore[arg-type]
    router.fit(dataset(rows))
    return router


def give_feedback(router: Router, n: int, offset: int) -> None:
    for text in dataset(n, offset=offset).prompts:
        decision = router.route(text, willingness_to_pay=1e-9)  # the cheap model, always
        router.feedback(decision.id, quality=float("two plus two" in text), output_tokens=40.0)
        router.wait_for_refit()


def arms(router: Router) -> dict[str, dict[str, object]]:
    return {name: router.policy.inspect(name) for name in router.models}


def test_the_router_refits_once_its_rows_have_grown_by_half() -> None:
    assert RouterConfig(models=POOL).refit_growth == 0.0  # opt-in
    router = fitted(12, refit_growth=0.5)
    give_feedback(router, 5, offset=100)
    assert router.automatic_refits == 0
    assert not router.refit_due()
    give_feedback(router, 1, offset=105)
    # The 12 rows plus 6 answers, learned again; nothing is left in the log to relearn.
    assert router.automatic_refits == 1
    assert router.refit().rows == 18
    # The next refit waits for the rows to grow by half again.
    give_feedback(router, 8, offset=200)
    assert router.automatic_refits == 1
    give_feedback(router, 1, offset=208)
    assert router.automatic_refits == 2


def test_a_larger_growth_refits_later() -> None:
    router = fitted(12, refit_growth=1.0)
    give_feedback(router, 11, offset=100)
    assert router.automatic_refits == 0
    give_feedback(router, 1, offset=111)
    assert router.automatic_refits == 1


def test_an_automatic_refit_learns_what_a_manual_one_does() -> None:
    automatic = fitted(12, refit_growth=1.0)
    manual = fitted(12, refit_growth=0.0)
    give_feedback(automatic, 12, offset=100)
    give_feedback(manual, 12, offset=100)
    assert automatic.automatic_refits == 1
    assert manual.automatic_refits == 0
    report = manual.refit()
    assert report.rows == 24
    mine, theirs = arms(automatic), arms(manual)
    for name, values in mine.items():
        for key, value in values.items():
            if isinstance(value, (int, float, list, np.ndarray)) and not isinstance(value, bool):
                np.testing.assert_allclose(theirs[name][key], value, rtol=1e-9, err_msg=key)
    assert automatic.projection is not None and manual.projection is not None
    probe = np.random.default_rng(0).normal(size=(3, automatic.projection.input_dim))
    np.testing.assert_allclose(
        automatic.projection.context(probe), manual.projection.context(probe), rtol=1e-9
    )


class HeldEmbedder:
    """The Router's encoder, except that embedding ``held`` texts at once (a refit's rows)
    waits until ``release`` is set."""

    def __init__(self, inner: Any, held: int) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.held = held
        self.started = threading.Event()
        self.release = threading.Event()

    def embed(self, texts: Sequence[str], **kwargs: Any) -> Any:
        items = list(texts)
        if len(items) == self.held:
            self.started.set()
            self.release.wait(30)
        return self.inner.embed(items, **kwargs)


def test_routing_goes_on_while_the_router_refits_itself() -> None:
    router = fitted(40, refit_growth=1.0)
    held = HeldEmbedder(router.embedder, held=80)
    router._embedder = held  # type: ignore[assignment]
    for text in dataset(40, offset=100).prompts:
        router.feedback(router.route(text).id, quality=1.0)
    assert held.started.wait(30)
    # The refit is under way: routing and learning go on with the state the Router has.
    projection = router.projection
    for i in range(20):
        router.feedback(router.route(f"What is {i} plus {i}?").id, quality=1.0)
    assert router.automatic_refits == 0
    assert router.projection is projection
    held.release.set()
    assert router.wait_for_refit(30)
    assert router.automatic_refits == 1
    assert router.projection is not projection
    # The feedback learned during the refit stays logged for the next one.
    assert router.refit().rows == 100


def test_feedback_during_a_refit_stays_logged_when_the_log_is_full() -> None:
    router = fitted(40, refit_growth=0.0, feedback_log_size=4)
    held = HeldEmbedder(router.embedder, held=44)
    router._embedder = held  # type: ignore[assignment]
    give_feedback(router, 4, offset=100)  # the log is full: 4 answers
    worker = threading.Thread(target=router.refit)
    worker.start()
    assert held.started.wait(30)
    # Two answers during the refit push the two oldest copied ones out of the log.
    give_feedback(router, 2, offset=200)
    held.release.set()
    worker.join(30)
    assert not worker.is_alive()
    # The refit learned the 40 rows and the 4 answers it copied; the 2 answers given during it
    # are still logged for the next one (not dropped in place of the copied ones).
    assert router.refit().rows == 40 + 4 + 2


def refitted_with_feedback_during(late: int) -> Router:
    """A Router refitted on 40 rows and 4 answers, given ``late`` more answers while the refit
    embeds its rows."""
    router = fitted(40, refit_growth=0.0)
    held = HeldEmbedder(router.embedder, held=44)
    router._embedder = held  # type: ignore[assignment]
    give_feedback(router, 4, offset=100)
    worker = threading.Thread(target=router.refit)
    worker.start()
    assert held.started.wait(30)
    give_feedback(router, late, offset=200)
    held.release.set()
    worker.join(30)
    assert not worker.is_alive()
    return router


def test_feedback_given_during_a_refit_is_taught_to_the_arms_it_swaps_in() -> None:
    busy = refitted_with_feedback_during(2)
    # The same refit with no feedback beside it, then the two answers learned online under
    # its projection: what the busy Router's new arms must hold.
    quiet = refitted_with_feedback_during(0)
    assert quiet.projection is not None
    texts = dataset(2, offset=200).prompts
    contexts = quiet.projection.context(quiet.embedder.embed(texts))
    for text, context in zip(texts, contexts, strict=True):
        quality = float("two plus two" in text)
        quiet.policy.update("small", context, quality=quality, output_tokens=40.0)
    mine, theirs = arms(busy), arms(quiet)
    assert mine["small"]["observations"] == theirs["small"]["observations"]
    for name, values in mine.items():
        for key, value in values.items():
            if isinstance(value, (int, float, list, np.ndarray)) and not isinstance(value, bool):
                np.testing.assert_allclose(theirs[name][key], value, rtol=1e-9, err_msg=key)
    # Still logged, for the next refit to learn from its rows.
    assert busy.refit().rows == 40 + 4 + 2


def test_a_failed_automatic_refit_leaves_the_router_as_it_was() -> None:
    router = fitted(12, refit_growth=0.5)
    attempts = []

    def failing() -> mixllm.FitReport:
        attempts.append(1)
        raise RuntimeError("no memory left")

    router._refit_locked = failing  # type: ignore[method-assign]
    projection, policy = router.projection, router.policy
    give_feedback(router, 6, offset=100)
    assert attempts == [1]
    assert router.automatic_refits == 0 and router.automatic_refits_failed == 1
    assert router.projection is projection and router.policy is policy
    # It goes on routing and learning; the next attempt waits for 6 more feedbacks.
    give_feedback(router, 5, offset=200)
    assert router.pending() == 0
    assert attempts == [1]
    give_feedback(router, 1, offset=300)
    assert attempts == [1, 1]


def failing_refits(router: Router) -> list[int]:
    """Makes every refit of ``router`` fail; returns the list it appends to at each attempt."""
    attempts: list[int] = []

    def failing() -> mixllm.FitReport:
        attempts.append(1)
        raise RuntimeError("no memory left")

    router._refit_locked = failing  # type: ignore[method-assign]
    return attempts


def test_after_a_failed_refit_a_full_log_makes_the_next_attempt_due_as_soon() -> None:
    # 12 rows and growth 1 would wait for 12 feedbacks; the log holds 4, and refits that
    # succeed would run every 4 (when it is full): a failed one is retried as often.
    router = fitted(12, refit_growth=1.0, feedback_log_size=4)
    attempts = failing_refits(router)
    give_feedback(router, 4, offset=100)
    assert attempts == [1]
    give_feedback(router, 3, offset=200)
    assert attempts == [1]
    give_feedback(router, 1, offset=300)
    assert attempts == [1, 1]


def test_feedback_for_a_removed_model_does_not_count_towards_the_retry() -> None:
    router = fitted(12, refit_growth=1.0, feedback_log_size=4)
    attempts = failing_refits(router)
    give_feedback(router, 4, offset=100)
    assert attempts == [1]
    orphans = [router.route(text, models=["big"]) for text in dataset(3, offset=400).prompts]
    router.remove_model("big")
    assert [router.feedback(d.id, quality=1.0) for d in orphans] == [False] * 3
    # Nothing was learned or logged by those: the retry still waits for 4 learned feedbacks.
    give_feedback(router, 3, offset=200)
    assert attempts == [1]
    give_feedback(router, 1, offset=300)
    assert attempts == [1, 1]


def test_a_removed_refit_listener_hears_nothing_and_removing_a_stranger_is_refused() -> None:
    router = fitted(12, refit_growth=1.0)
    heard: list[str] = []
    kept: list[str] = []
    router.add_refit_listener(heard.append)
    router.add_refit_listener(kept.append)
    router.remove_refit_listener(heard.append)
    with pytest.raises(ValueError, match="not listening to this router's refits"):
        router.remove_refit_listener(heard.append)
    give_feedback(router, 12, offset=100)
    assert router.automatic_refits == 1
    assert heard == [] and kept == ["ok"]


def test_no_automatic_refit_when_turned_off_or_without_rows_of_a_fit() -> None:
    off = fitted(12, refit_growth=0.0)
    give_feedback(off, 30, offset=100)
    assert off.automatic_refits == 0
    assert not off.refit_due()
    source = fitted(12)
    # Built from a projection and arms alone: no rows to scale the growth by.
    bare = Router(source.config, projection=source.projection, policy=source.policy)
    give_feedback(bare, 30, offset=100)
    assert bare.automatic_refits == 0


def test_a_negative_growth_is_refused_naming_it() -> None:
    with pytest.raises(mixllm.ConfigError, match="refit_growth must be >= 0"):
        RouterConfig(models=POOL, refit_growth=-1.0)
    config = RouterConfig(models=POOL)
    assert RouterConfig.from_dict(config.to_dict()) == config
    off = replace(config, refit_growth=0.0)
    assert RouterConfig.from_dict(off.to_dict()).refit_growth == 0.0
