"""The quality ridge chosen by how held-out queries are routed (the frontier's area), not by the
heads' squared error: the area against an oracle, the choice on data where a strong ridge must
win and where it must not, and `Router.fit` using it whenever the data has the rows and the
costs to show it."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mixllm import InvalidInputError
from mixllm.config import ModelConfig, RouterConfig
from mixllm.data import RoutingDataset
from mixllm.routing.router import Router
from mixllm.routing.tuning import (
    AUC,
    MIN_ROUTING_ROWS,
    MSE,
    RIDGES,
    choose_ridge_by_routing,
    routing_auc,
)

POOL = (ModelConfig("strong", 10.0, 10.0), ModelConfig("cheap", 0.1, 0.1))


def frontier_area(quality_pct: np.ndarray, cost_pct: np.ndarray) -> float:
    """As the reference routers write it: the best quality at each cost of the grid, then
    its running maximum, then the trapezoid mean."""
    grid = np.linspace(0, 100, 401)
    heights = []
    for x in grid:
        within = cost_pct <= x
        heights.append(quality_pct[within].max() if within.any() else 0.0)
    return float(np.trapezoid(np.maximum.accumulate(heights), grid) / 100)


def test_routing_auc_is_the_reference_routers_area() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        cost = rng.uniform(0, 130, 15)
        quality = rng.uniform(20, 110, 15)
        assert routing_auc(quality, cost) == pytest.approx(frontier_area(quality, cost), abs=1e-9)
    # A single point at the reference's cost leaves nothing below it.
    assert routing_auc(np.array([100.0]), np.array([100.0])) == pytest.approx(100 * 0.25 / 2 / 100)


def contexts(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.column_stack([x, np.ones(n)])


def choice_on(x: np.ndarray, quality: np.ndarray, pool: tuple[ModelConfig, ...] = POOL) -> float:
    n, models = quality.shape
    # The first model costs 100 times the others, which differ a little among themselves.
    cost = np.column_stack(
        [np.full(n, 1e-3), *(np.full(n, 1e-5 * (1 + k)) for k in range(1, models))]
    )
    config = RouterConfig(models=pool, dim=x.shape[1] - 1)
    return choose_ridge_by_routing(
        lambda ridge: replace(config, ridge=ridge).new_policy(x.shape[1]),
        [m.name for m in pool],
        x,
        quality,
        cost,
        None,
        np.full(n, 50.0),
    ).chosen


def test_noise_in_many_heads_wants_more_shrinkage() -> None:
    # Five cheap models, each right half the time at random, and a dear one right 90% of the
    # time; the context says nothing. Heads that follow it send queries to whichever cheap
    # model's noise looks best, so the weakest ridge routes worse than a stronger one.
    rng = np.random.default_rng(1)
    x = contexts(150, 48, seed=1)
    quality = np.column_stack([rng.random(150) < p for p in (0.9, *[0.5] * 5)]).astype(float)
    pool = (
        ModelConfig("dear", 10.0, 10.0),
        *(ModelConfig(f"cheap{k}", 0.1, 0.1) for k in range(5)),
    )
    assert choice_on(x, quality, pool) >= 1.0


def test_a_signal_in_the_context_wants_a_weak_ridge() -> None:
    # The cheap model is right exactly on the queries of one half-space, the strong one on all:
    # shrinking the heads hard would hide where the cheap one suffices.
    x = contexts(400, 4, seed=2)
    cheap_right = (x[:, 0] > 0).astype(float)
    quality = np.column_stack([np.ones(400), cheap_right])
    assert choice_on(x, quality) <= 0.3


def test_mismatched_outcomes_are_refused() -> None:
    x = contexts(20, 4, seed=0)
    config = RouterConfig(models=POOL, dim=4)
    with pytest.raises(InvalidInputError, match=r"quality and cost must be \(20, 2\)"):
        choose_ridge_by_routing(
            lambda ridge: config.new_policy(5),
            ["strong", "cheap"],
            x,
            np.zeros((20, 2)),
            np.zeros((19, 2)),
            None,
            np.full(20, 5.0),
        )


def dataset(n: int, costs: bool) -> RoutingDataset:
    rng = np.random.default_rng(3)
    quality = np.column_stack([rng.random(n) < 0.8, rng.random(n) < 0.4]).astype(float)
    cost = np.column_stack([np.full(n, 1e-3), np.full(n, 1e-5)])
    return RoutingDataset(
        prompts=[f"question number {i} about {'maths' if i % 2 else 'poems'}" for i in range(n)],
        models=["strong", "cheap"],
        quality=quality,
        cost_usd=cost if costs else np.full((n, 2), np.nan),
        prompt_tokens=np.full(n, 10.0),
        output_tokens=rng.integers(5, 500, (n, 2)).astype(float),
        latency_s=None,
        labels=["maths" if i % 2 else "poems" for i in range(n)],
        split=None,
        ids=[str(i) for i in range(n)],
    )


def test_fit_chooses_the_quality_ridge_by_routing_when_costs_are_logged(tmp_path: Path) -> None:
    router = Router(RouterConfig(models=POOL, dim=8))
    report = router.fit(dataset(MIN_ROUTING_ROWS, costs=True))
    ridge = next(c for c in report.tuning if c.knob == "ridge")
    length = next(c for c in report.tuning if c.knob == "length_ridge")
    assert (ridge.criterion, length.criterion) == (AUC, MSE)
    assert set(ridge.candidates) == set(RIDGES)
    assert all(len(scores) == 5 for scores in ridge.fold_scores.values())
    best = max(ridge.mean_scores.values())
    assert ridge.mean_scores[ridge.chosen] == best
    assert router.config.ridge == ridge.chosen == router.policy.ridge
    assert ridge.to_dict()["criterion"] == AUC
    back = Router.load(router.save(tmp_path / "state").parent)
    assert back.config.ridge == ridge.chosen


def test_fit_without_costs_chooses_by_squared_error() -> None:
    router = Router(RouterConfig(models=POOL, dim=8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = router.fit(dataset(MIN_ROUTING_ROWS, costs=False))
    ridge = next(c for c in report.tuning if c.knob == "ridge")
    assert ridge.criterion == MSE


def test_fit_on_few_rows_chooses_by_squared_error() -> None:
    # Folds of a few queries each trace frontiers too coarse to rank the ridges by.
    router = Router(RouterConfig(models=POOL, dim=8))
    report = router.fit(dataset(MIN_ROUTING_ROWS - 1, costs=True))
    ridge = next(c for c in report.tuning if c.knob == "ridge")
    assert ridge.criterion == MSE


def test_a_pinned_ridge_is_not_chosen() -> None:
    router = Router(RouterConfig(models=POOL, dim=8, ridge=0.5))
    report = router.fit(dataset(60, costs=True))
    assert [c.knob for c in report.tuning] == ["length_ridge"]
    assert router.policy.ridge == 0.5
