"""Offline quality-cost frontier of a query representation, for comparing representations.

Given routing contexts for a train and a test set, and every model's quality and dollar cost on
every query (the RouterBench layout), fit one ridge quality head and one ridge cost head per
model on the train contexts, then on the test set route each query to
argmax_l  q̂_l(x) - ĉ_l(x) / λ  for a sweep of λ (willingness to pay, USD per quality point).
Each λ gives one (cost, quality) point, both as % of sending every test query to a reference
model (GPT-4 in the MixLLM paper). This isolates the representation: the heads, the sweep and
the data are the same for every representation compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "FrontierPoint",
    "cost_to_reach",
    "fit_ridge",
    "quality_at_cost",
    "routing_frontier",
]

F64 = NDArray[np.float64]
DEFAULT_LAMBDAS: F64 = np.concatenate([np.logspace(-5, 4, 181), [np.inf]])


@dataclass(frozen=True)
class FrontierPoint:
    """One λ of the sweep: quality and cost of the routed test set as % of the reference."""

    willingness_to_pay: float
    quality_pct: float
    cost_pct: float


def fit_ridge(x: ArrayLike, y: ArrayLike, alpha: float) -> F64:
    """Weights W (p, k) minimising ‖XW - Y‖² + alpha‖W‖² (one column per target)."""
    xm = np.asarray(x, dtype=np.float64)
    ym = np.asarray(y, dtype=np.float64)
    gram = xm.T @ xm + alpha * np.eye(xm.shape[1])
    weights: F64 = np.linalg.solve(gram, xm.T @ ym)
    return weights


def routing_frontier(
    x_train: ArrayLike,
    quality_train: ArrayLike,
    cost_train: ArrayLike,
    x_test: ArrayLike,
    quality_test: ArrayLike,
    cost_test: ArrayLike,
    reference: int,
    *,
    alpha: float = 1.0,
    lambdas: Sequence[float] | F64 = DEFAULT_LAMBDAS,
) -> list[FrontierPoint]:
    """The frontier over ``lambdas``; quality/cost arrays are (n, models), ``reference`` is
    the column everything is measured against."""
    q_test = np.asarray(quality_test, dtype=np.float64)
    c_test = np.asarray(cost_test, dtype=np.float64)
    xt = np.asarray(x_test, dtype=np.float64)
    q_hat = xt @ fit_ridge(x_train, quality_train, alpha)
    c_hat = xt @ fit_ridge(x_train, cost_train, alpha)
    ref_quality = q_test[:, reference].sum()
    ref_cost = c_test[:, reference].sum()
    rows = np.arange(len(xt))
    points = []
    for lam in lambdas:
        scores = q_hat if np.isinf(lam) else q_hat - c_hat / lam
        choice = np.argmax(scores, axis=1)
        points.append(
            FrontierPoint(
                float(lam),
                100.0 * q_test[rows, choice].sum() / ref_quality,
                100.0 * c_test[rows, choice].sum() / ref_cost,
            )
        )
    return points


class CostQuality(Protocol):
    """Anything with a quality and a cost in % of the reference (a point of a frontier)."""

    @property
    def quality_pct(self) -> float: ...

    @property
    def cost_pct(self) -> float: ...


def quality_at_cost(points: Sequence[CostQuality], cost_pct: float) -> float:
    """Best quality % among points costing at most ``cost_pct`` (NaN when none does)."""
    eligible = [p.quality_pct for p in points if p.cost_pct <= cost_pct]
    return max(eligible) if eligible else float("nan")


def cost_to_reach(points: Sequence[CostQuality], quality_pct: float) -> float:
    """Least cost % among points reaching ``quality_pct`` (NaN when none does)."""
    eligible = [p.cost_pct for p in points if p.quality_pct >= quality_pct]
    return min(eligible) if eligible else float("nan")
