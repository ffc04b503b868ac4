"""Refits running beside everything else the Router does: pool changes, manual fits, saves, a
store being attached, many threads giving feedback, and data a refit cannot learn from. Each
refit here is held at its embedding until the test releases it, so that what happens meanwhile
is known; every wait has a timeout, so a deadlock fails the test instead of hanging it."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import threading
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

import mixllm
from light_router import HashEmbedder
from mixllm.config import ModelConfig, RouterConfig, TaggerConfig
from mixllm.routing import persistence, refit_state
from mixllm.routing.background_refit import BackgroundRefit
from mixllm.routing.router import Router
from refit_data import POOL, dataset

WAIT_S = 60


class GatedEmbedder(HashEmbedder):
    """The tests' stand-in encoder; a call embedding at least ``gate_at`` texts (a refit's
    rows) waits until ``release`` is set, once ``gate_at`` is given."""

    def __init__(self) -> None:
        super().__init__(16)
        self.gate_at: int | None = None
        self.gate_only: int | None = None  # gates calls of exactly this size instead
        self.started = threading.Event()
        self.release = threading.Event()

    def embed(self, texts: Sequence[str], **_: Any) -> NDArray[np.float32]:
        items = list(texts)
        gated = self.gate_at is not None and len(items) >= self.gate_at
        if gated or len(items) == self.gate_only:
            self.started.set()
            assert self.release.wait(WAIT_S), "the test never released the refit"
        return super().embed(items)

    def refits(self, at_least: int) -> int:
        """How many calls embedded ``at_least`` texts or more."""
        return sum(1 for size in self.batches if size >= at_least)


def fitted(rows: int, **changes: Any) -> tuple[Router, GatedEmbedder]:
    embedder = GatedEmbedder()
    router = Router(RouterConfig(models=POOL, dim=4, **changes), embedder=embedder)  # type: ignore[arg-type]
    router.fit(dataset(rows))
    return router, embedder


def feedback_on(router: Router, n: int, offset: int) -> None:
    for text in dataset(n, offset=offset).prompts:
        decision = router.route(text, willingness_to_pay=1e-9)  # the cheap model, always
        router.feedback(decision.id, quality=float("two plus two" in text), output_tokens=40.0)


def held_automatic_refit(rows: int) -> tuple[Router, GatedEmbedder]:
    """A Router fitted on ``rows`` rows whose automatic refit (growth 1) is running, held."""
    router, embedder = fitted(rows, refit_growth=1.0)
    embedder.gate_at = 2 * rows
    feedback_on(router, rows, offset=100)
    assert embedder.started.wait(WAIT_S)
    return router, embedder


def finish(router: Router, embedder: GatedEmbedder) -> None:
    embedder.release.set()
    assert router.wait_for_refit(WAIT_S)


MID = ModelConfig("mid", 0.5, 0.5)


@pytest.mark.parametrize(
    ("change", "check"),
    [
        (lambda r: r.add_model(MID), lambda r: "mid" in r.models and MID in r.config.models),
        (lambda r: r.remove_model("big"), lambda r: r.models == ["small"]),
        (
            lambda r: r.update_model(replace(POOL[1], price_out=20.0)),
            lambda r: (
                r.config.models[1].price_out == 20.0
                and r.policy.inspect("big")["profile"]["price_out"] == 20.0
            ),
        ),
    ],
    ids=["add", "remove", "update"],
)
def test_a_pool_change_during_an_automatic_refit_is_kept(change, check) -> None:
    router, embedder = held_automatic_refit(20)
    policy = router.policy
    change(router)
    finish(router, embedder)
    # The refit learned on the pool as it was: it is discarded, counted, and still due.
    assert check(router)
    assert router.policy is policy
    assert router.automatic_refits == 0
    assert router.automatic_refits_discarded == 1
    assert router.refit_due()
    # The next feedback runs it again, on the pool as it is now.
    feedback_on(router, 1, offset=300)
    assert router.wait_for_refit(WAIT_S)
    assert router.automatic_refits == 1
    assert router.policy is not policy
    assert check(router)


def test_a_manual_fit_during_an_automatic_refit_is_kept() -> None:
    router, embedder = held_automatic_refit(20)
    router.fit(dataset(30, offset=500))
    projection, policy = router.projection, router.policy
    finish(router, embedder)
    assert router.projection is projection and router.policy is policy
    assert router.automatic_refits_discarded == 1
    # The rows of the manual fit (and the feedback logged) are what the next refit learns.
    embedder.gate_at = None
    assert router.refit().rows == 30 + 20


def test_a_scheduled_refit_discarded_by_a_pool_change_runs_again_at_once() -> None:
    router, embedder = fitted(20, refit_growth=0.0)
    feedback_on(router, 20, offset=100)
    embedder.gate_at = 40
    outcomes: list[str] = []
    refitter = BackgroundRefit(router, every_feedbacks=1, on_refit=outcomes.append)

    async def scenario() -> None:
        task = asyncio.create_task(refitter.run())
        refitter.feedback_learned()
        assert await asyncio.to_thread(embedder.started.wait, WAIT_S)
        router.add_model(MID)
        embedder.release.set()
        while len(outcomes) < 2:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(asyncio.wait_for(scenario(), WAIT_S))
    assert outcomes == ["discarded", "ok"]
    assert (refitter.discarded, refitter.refits) == (1, 1)
    assert "mid" in router.models and router.refit().rows == 40


def test_a_manual_refit_during_a_pool_change_is_refused_and_changes_nothing() -> None:
    router, embedder = fitted(20, refit_growth=0.0)
    feedback_on(router, 20, offset=100)
    embedder.gate_at = 40
    errors: list[BaseException] = []

    def refit() -> None:
        try:
            router.refit()
        except BaseException as err:
            errors.append(err)

    worker = threading.Thread(target=refit)
    worker.start()
    assert embedder.started.wait(WAIT_S)
    projection = router.projection
    router.add_model(MID)
    embedder.release.set()
    worker.join(WAIT_S)
    assert not worker.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], mixllm.StateChangedError)
    assert "pool changed" in str(errors[0])
    assert router.projection is projection and "mid" in router.models
    # Nothing was taken out of the log: the refit, run again, learns all of it.
    assert router.refit().rows == 40


@pytest.mark.parametrize("overtaker", ["refitted", "fitted"])
def test_a_warm_start_overtaken_by_a_refit_or_fit_adds_nothing_and_says_which(
    overtaker: str,
) -> None:
    router, embedder = fitted(20, refit_growth=0.0)
    feedback_on(router, 20, offset=100)
    examples = replace(dataset(7, offset=700), models=["mid", "other"])
    embedder.gate_only = 7
    errors: list[BaseException] = []

    def add() -> None:
        try:
            router.add_model(MID, examples=examples)
        except BaseException as err:
            errors.append(err)

    worker = threading.Thread(target=add)
    worker.start()
    assert embedder.started.wait(WAIT_S)
    # Swaps in a new projection while the examples are embedded.
    if overtaker == "refitted":
        router.refit()
    else:
        router.fit(dataset(20, offset=300))
    embedder.release.set()
    worker.join(WAIT_S)
    assert len(errors) == 1 and isinstance(errors[0], mixllm.StateChangedError)
    assert f"the router was {overtaker} while the examples of 'mid'" in str(errors[0])
    assert "mid" not in router.models
    router.add_model(MID, examples=examples)
    assert router.policy.inspect("mid")["observations"] == 7


def labelled(n: int, offset: int = 0) -> mixllm.RoutingDataset:
    rows = dataset(n, offset)
    return replace(rows, labels=["easy" if "two plus" in p else "hard" for p in rows.prompts])


def test_a_refit_that_cannot_learn_domains_from_the_feedback_is_refused_up_front() -> None:
    embedder = GatedEmbedder()
    config = RouterConfig(models=POOL, dim=4, tagger=TaggerConfig(mode="labels"))
    router = Router(config, embedder=embedder)  # type: ignore[arg-type]
    router.fit(labelled(12))
    # With nothing logged, the labelled rows alone refit.
    assert router.refit().rows == 12
    feedback_on(router, 3, offset=100)
    calls = len(embedder.calls)
    with pytest.raises(mixllm.ConfigError, match=r'"labels".*3 logged feedback'):
        router.refit()
    assert len(embedder.calls) == calls  # refused before embedding anything


def test_an_automatic_refit_that_cannot_run_warns_once_and_is_not_retried(caplog) -> None:
    embedder = GatedEmbedder()
    config = RouterConfig(models=POOL, dim=4, tagger=TaggerConfig(mode="labels"), refit_growth=0.5)
    router = Router(config, embedder=embedder)  # type: ignore[arg-type]
    router.fit(labelled(12))
    calls = len(embedder.calls)
    with caplog.at_level(logging.WARNING, logger="mixllm.refit"):
        for offset in range(100, 130):
            feedback_on(router, 1, offset=offset)
            assert router.wait_for_refit(WAIT_S)
    # Due from the 6th feedback on, never attempted: no embedding, one warning.
    assert router.refit_due()
    assert embedder.refits(at_least=18) == 0
    assert len(embedder.calls) - calls == 30  # each feedback's route, nothing else
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and '"labels"' in warned[0].getMessage()
    assert router.automatic_refits == 0 and router.automatic_refits_failed == 1
    # Something changed (a pool change): it may try again, and warns once more.
    router.add_model(MID)
    with caplog.at_level(logging.WARNING, logger="mixllm.refit"):
        feedback_on(router, 2, offset=200)
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 2


def test_a_failing_automatic_refit_is_retried_only_after_as_much_feedback_again() -> None:
    router, _ = fitted(12, refit_growth=0.5)
    attempts = []

    def failing(*_: Any, **__: Any) -> Any:
        attempts.append(1)
        raise RuntimeError("no memory left")

    router._refit_locked = failing  # type: ignore[method-assign]
    for offset in range(100, 126):
        feedback_on(router, 1, offset=offset)
        assert router.wait_for_refit(WAIT_S)
    # Due at the 6th feedback; after each failure the next waits for 6 more feedbacks.
    assert len(attempts) == 4
    assert router.automatic_refits_failed == 4
    assert router.pending() == 0


def one_due_point_from_many_threads() -> tuple[Router, GatedEmbedder]:
    """A Router 8 feedbacks short of its refit's due point gets 24 at once, from 24 threads."""
    router, embedder = fitted(16, refit_growth=1.0)
    feedback_on(router, 8, offset=100)
    decisions = [router.route(f"What is {i} plus {i}?", willingness_to_pay=1e-9) for i in range(24)]
    embedder.gate_at = 32
    barrier = threading.Barrier(len(decisions))

    def give(decision: mixllm.RouteDecision) -> None:
        barrier.wait(WAIT_S)
        router.feedback(decision.id, quality=1.0)

    threads = [threading.Thread(target=give, args=(d,)) for d in decisions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert not any(thread.is_alive() for thread in threads)
    finish(router, embedder)
    return router, embedder


def test_many_threads_at_the_due_point_start_one_refit() -> None:
    # Threads switch as often as the interpreter allows, so that they interleave everywhere;
    # a race shows only in some interleavings, so the due point is crossed many times.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(12):
            router, embedder = one_due_point_from_many_threads()
            # One refit, on the 16 rows and every feedback it found logged.
            assert embedder.refits(at_least=32) == 1
            assert router.automatic_refits == 1
    finally:
        sys.setswitchinterval(interval)


def test_a_refit_queued_behind_another_runs_only_when_still_due() -> None:
    router, embedder = fitted(20, refit_growth=1.0)
    feedback_on(router, 19, offset=100)
    embedder.gate_at = 39
    worker = threading.Thread(target=router.refit)
    worker.start()
    assert embedder.started.wait(WAIT_S)
    # The 20th feedback makes a refit due while the manual one runs: it waits behind it...
    feedback_on(router, 1, offset=200)
    embedder.release.set()
    worker.join(WAIT_S)
    assert router.wait_for_refit(WAIT_S)
    # ...and the manual one learned 19 of the 20 answers: with 1 logged on 39 rows, not due.
    assert not router.refit_due()
    assert router.automatic_refits == 0
    assert embedder.refits(at_least=39) == 1


class SavingLock:
    """The Router's lock, saving the Router each time the refit thread lets go of it: a save
    at every moment another thread could take the lock between the refit's sections."""

    def __init__(self, router: Router, directory: Path) -> None:
        self.inner = threading.Lock()
        self.router = router
        self.directory = directory
        self.refit_thread: threading.Thread | None = None
        self.saves: list[Path] = []

    def __enter__(self) -> bool:
        return self.inner.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.inner.__exit__(*exc)
        if threading.current_thread() is self.refit_thread and not exc[0]:
            self.refit_thread = None  # the save takes the lock too
            self.saves.append(self.router.save(self.directory / str(len(self.saves))))
            self.refit_thread = threading.current_thread()

    def acquire(self, *args: Any) -> bool:
        return self.inner.acquire(*args)

    def release(self) -> None:
        self.inner.release()

    def locked(self) -> bool:
        return self.inner.locked()


def test_a_save_racing_the_swap_never_holds_a_row_twice(tmp_path) -> None:
    router, _ = fitted(12, refit_growth=0.0)
    feedback_on(router, 6, offset=100)
    spy = SavingLock(router, tmp_path)
    router._lock = spy  # type: ignore[assignment]
    worker = threading.Thread(target=router.refit)
    spy.refit_thread = worker
    worker.start()
    worker.join(WAIT_S)
    assert not worker.is_alive()
    assert spy.saves
    for state in spy.saves:
        loaded = Router.load(state.parent, embedder=HashEmbedder(16))  # type: ignore[arg-type]
        assert loaded._training is not None
        texts = [*loaded._training.prompts, *(f.text for f in loaded._feedback_log)]
        assert len(texts) == len(set(texts)) == 18, state


def test_the_rows_kept_for_refits_are_capped_newest_first(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(refit_state, "MAX_TRAINING_ROWS", 15)
    router, _ = fitted(12, refit_growth=0.0)
    feedback_on(router, 10, offset=100)
    # The refit learns from all 22; it keeps the newest 15 for the next one.
    assert router.refit().rows == 22
    kept = router._training
    assert kept is not None and len(kept) == 15
    assert kept.prompts == [*dataset(12).prompts[7:], *dataset(10, offset=100).prompts]
    assert Router.load(router.save(tmp_path / "s").parent)._training == kept
    # A fit on more rows than the cap learns from all of them, and keeps the newest.
    assert router.fit(dataset(20, offset=300)).rows == 20
    assert router._training == dataset(20, offset=300).select(slice(5, None))


def test_a_state_saved_with_more_rows_than_the_cap_loads_with_the_newest(
    monkeypatch, tmp_path
) -> None:
    router, _ = fitted(20, refit_growth=0.0)
    state = router.save(tmp_path / "s")
    monkeypatch.setattr(refit_state, "MAX_TRAINING_ROWS", 15)
    loaded = Router.load(state.parent, embedder=HashEmbedder(16))  # type: ignore[arg-type]
    assert loaded._training == dataset(20).select(slice(5, None))


def test_rows_past_the_saved_size_keep_their_newest_part(monkeypatch, tmp_path) -> None:
    router, _ = fitted(200, refit_growth=0.0)
    whole = persistence._training_size(refit_state.training_to_bytes(dataset(200)))
    monkeypatch.setattr(persistence, "MAX_TRAINING_BYTES", whole * 3 // 4)
    with pytest.warns(mixllm.UnusedDataWarning, match=r"the newest (\d+) rows") as caught:
        state = router.save(tmp_path / "s")
    kept = int(re.search(r"newest (\d+) rows", str(caught[0].message)).group(1))  # type: ignore[union-attr]
    # Most of the rows fit; the oldest are left out.
    assert 100 <= kept < 200
    loaded = Router.load(state.parent, embedder=HashEmbedder(16))  # type: ignore[arg-type]
    assert loaded._training == dataset(200).select(slice(200 - kept, None))


class RecordingStore:
    """Stands in for a store: records any use."""

    def __init__(self) -> None:
        self.used: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.used.append(name)
        raise AssertionError(f"the store was used: {name}")


def test_attaching_a_store_during_a_refit_is_refused_changing_nothing() -> None:
    router, embedder = held_automatic_refit(20)
    store = RecordingStore()
    with pytest.raises(mixllm.ConfigError, match="while a refit runs"):
        router.attach_store(store)  # type: ignore[arg-type]
    assert store.used == [] and router.store is None
    finish(router, embedder)
    assert router.automatic_refits == 1


def test_a_refit_changes_no_other_thread_s_warnings() -> None:
    router, embedder = fitted(20, refit_growth=0.0)
    feedback_on(router, 20, offset=100)
    router.remove_model("big")  # the rows hold outcomes of a model no longer in the pool
    embedder.gate_at = 40
    reports: list[mixllm.FitReport] = []
    worker = threading.Thread(target=lambda: reports.append(router.refit()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        worker.start()
        assert embedder.started.wait(WAIT_S)
        # Another thread warns while the refit runs: the warning is heard.
        warnings.warn("elsewhere", mixllm.UnusedDataWarning, stacklevel=1)
        embedder.release.set()
        worker.join(WAIT_S)
    assert not worker.is_alive()
    assert [str(w.message) for w in caught] == ["elsewhere"]
    # The refit does not warn of the removed model's rows; its report names them.
    assert reports[0].models_not_in_pool == ("big",)
