"""The operating point in the user's words: λ calibrated on held-out folds at fit time.

λ (willingness to pay, USD per quality point) means little to someone who wants "95% of the
best model's quality, as cheaply as possible" or "the best quality at a tenth of its cost",
and the λ that gives either depends on the pool's prices and the data's quality scale.
`calibrate` measures it: on each of k folds of the rows a Router is fitted on, it fits the
heads on the other folds, routes the held-out queries at every λ of a grid and records what
they got (the logged quality and cost of the chosen model). Summed over the folds, each λ gets
an expected quality and cost in % of the reference (the best single model on those rows) and a
cost per 1,000 queries. `Calibration.for_quality`, `for_cost` and `for_budget` turn a target
into the λ that meets it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mixllm._core import InvalidInputError
from mixllm.config import RouterConfig
from mixllm.data import RoutingDataset
from mixllm.routing.tuning import FOLDS, column_means_filled, fold_ids
from mixllm.validation import positive

__all__ = ["LAMBDAS", "Calibration", "CalibrationPoint", "calibrate"]

F64 = NDArray[np.float64]

# λ from "cost decides" to "cost is ignored", about 4 points per decade.
LAMBDAS = (*(float(v) for v in np.logspace(-8, 4, 49)), math.inf)
# Bisection of the grid where neighbouring points differ by more than GAP_PCT points of
# quality or cost (of the largest total seen): rounds, and new points per round.
REFINE_ROUNDS = 4
REFINE_POINTS = 32
GAP_PCT = 1.0


@dataclass(frozen=True)
class CalibrationPoint:
    """What routing at ``willingness_to_pay`` gave the held-out queries."""

    willingness_to_pay: float
    quality_pct: float
    cost_pct: float
    cost_per_1000_usd: float


@dataclass(frozen=True)
class Calibration:
    """λ → expected quality and cost, measured on ``rows`` queries over ``folds`` folds; the
    percentages are of ``reference``'s quality and cost on the same queries."""

    reference: str
    rows: int
    folds: int
    points: tuple[CalibrationPoint, ...]

    def for_quality(self, quality_pct: float) -> float:
        """The λ of the cheapest point reaching ``quality_pct`` % of the reference's quality,
        or of the best quality reached when none does."""
        positive("quality_pct", quality_pct)
        reached = [p for p in self.points if p.quality_pct >= quality_pct]
        if not reached:
            return max(self.points, key=lambda p: (p.quality_pct, -p.cost_pct)).willingness_to_pay
        return min(reached, key=lambda p: (p.cost_pct, -p.quality_pct)).willingness_to_pay

    def for_cost(self, cost_pct: float) -> float:
        """The λ of the best quality at no more than ``cost_pct`` % of the reference's cost,
        or of the cheapest point when every point costs more."""
        positive("cost_pct", cost_pct)
        return self._within(lambda p: p.cost_pct, cost_pct)

    def for_budget(self, usd_per_1000: float) -> float:
        """The λ of the best quality at no more than ``usd_per_1000`` dollars per 1,000
        queries, or of the cheapest point when every point costs more."""
        positive("budget_per_1000_usd", usd_per_1000)
        return self._within(lambda p: p.cost_per_1000_usd, usd_per_1000)

    def _within(self, cost: Any, limit: float) -> float:
        affordable = [p for p in self.points if cost(p) <= limit]
        if not affordable:
            return min(self.points, key=lambda p: (cost(p), -p.quality_pct)).willingness_to_pay
        return max(affordable, key=lambda p: (p.quality_pct, -cost(p))).willingness_to_pay

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (λ = inf written as null)."""
        return {
            "reference": self.reference,
            "rows": self.rows,
            "folds": self.folds,
            "points": [
                {
                    "willingness_to_pay": (
                        p.willingness_to_pay if math.isfinite(p.willingness_to_pay) else None
                    ),
                    "quality_pct": p.quality_pct,
                    "cost_pct": p.cost_pct,
                    "cost_per_1000_usd": p.cost_per_1000_usd,
                }
                for p in self.points
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        try:
            points = tuple(
                CalibrationPoint(
                    willingness_to_pay=_lambda(p["willingness_to_pay"]),
                    quality_pct=float(p["quality_pct"]),
                    cost_pct=float(p["cost_pct"]),
                    cost_per_1000_usd=float(p["cost_per_1000_usd"]),
                )
                for p in data["points"]
            )
            calibration = cls(str(data["reference"]), int(data["rows"]), int(data["folds"]), points)
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidInputError(f"not a calibration table: {err!r}") from err
        if not points:
            raise InvalidInputError("a calibration table needs at least one point")
        return calibration


def _lambda(value: Any) -> float:
    """A λ read back from JSON, where null stands for inf."""
    return math.inf if value is None else float(value)


Totals = tuple[float, float]


def _apart(first: Totals, second: Totals, top: Totals) -> bool:
    """Whether two points differ by more than `GAP_PCT` % of the top quality or cost."""
    return any(abs(a - b) > GAP_PCT / 100 * t for a, b, t in zip(first, second, top, strict=True))


def _refined(totals: dict[float, Totals], routed: Callable[[float], Totals]) -> dict[float, Totals]:
    """``totals`` with more λ: where neighbouring λ route very differently, λ is bisected
    (geometrically), so that a target falls between close points."""
    top = (
        max(q for q, _ in totals.values()) or 1.0,
        max(c for _, c in totals.values()) or 1.0,
    )
    for _ in range(REFINE_ROUNDS):
        finite = sorted(lam for lam in totals if math.isfinite(lam))
        wide = [
            math.sqrt(a * b)
            for a, b in itertools.pairwise(finite)
            if _apart(totals[a], totals[b], top)
        ]
        if not wide:
            break
        for lam in wide[:REFINE_POINTS]:
            totals[lam] = routed(lam)
    return totals


def calibrate(
    config: RouterConfig,
    contexts: F64,
    dataset: RoutingDataset,
    *,
    lambdas: Sequence[float] = LAMBDAS,
    folds: int = FOLDS,
    seed: int = 0,
) -> Calibration:
    """The calibration table of a configuration on ``dataset`` (see the module's description),
    with the routing ``contexts`` of its rows.

    Only the pool's models with outcomes in the data (a quality logged on at least one row)
    are routed to. A pool model without any (added to the pool, not yet in the data) is left
    out: no held-out query can say what choosing it would have given, so the table is the one
    the other models give, and that model is never its reference. An outcome the data did not
    log counts as the model's mean over the rows that logged it (a cost never logged, as 0)."""
    pool = [m for m in config.models if _has_quality(dataset, m.name)]
    if not pool:
        raise InvalidInputError("calibration needs a model of the pool with outcomes in the data")
    columns = np.array([dataset.models.index(m.name) for m in pool])
    n = len(dataset)
    quality = column_means_filled(dataset.quality[:, columns])
    cost = column_means_filled(dataset.cost_usd[:, columns])
    tokens = None if dataset.output_tokens is None else dataset.output_tokens[:, columns]
    assignment = fold_ids(n, folds, seed)
    fitted = []
    for fold in range(folds):
        held = assignment == fold
        if not held.any():
            continue
        policy = config.with_models(tuple(pool)).new_policy(contexts.shape[1])
        for j, model in enumerate(pool):
            seen = ~held & ~np.isnan(dataset.quality[:, columns[j]])
            if seen.any():
                lengths = None if tokens is None else tokens[seen, j]
                policy.fit(model.name, contexts[seen], dataset.quality[seen, columns[j]], lengths)
        fitted.append((np.flatnonzero(held), policy))

    def routed(lam: float) -> tuple[float, float]:
        """Total quality and cost of the held-out queries routed at ``lam``."""
        total_quality = total_cost = 0.0
        for picked, policy in fitted:
            chosen = policy.decide_batch(
                contexts[picked],
                prompt_tokens=dataset.prompt_tokens[picked],
                willingness_to_pay=lam,
                now_s=0.0,
                # Small batches: threads would cost more than they save.
                threads=1,
            )
            total_quality += float(quality[picked, chosen].sum())
            total_cost += float(cost[picked, chosen].sum())
        return total_quality, total_cost

    totals = _refined({float(lam): routed(float(lam)) for lam in lambdas}, routed)
    best = min(range(len(pool)), key=lambda j: (-quality[:, j].mean(), cost[:, j].mean()))
    ref_quality, ref_cost = float(quality[:, best].sum()), float(cost[:, best].sum())
    points = tuple(
        CalibrationPoint(
            willingness_to_pay=lam,
            quality_pct=100.0 * totals[lam][0] / ref_quality if ref_quality > 0 else math.nan,
            cost_pct=100.0 * totals[lam][1] / ref_cost if ref_cost > 0 else math.nan,
            cost_per_1000_usd=1000.0 * totals[lam][1] / n,
        )
        for lam in sorted(totals)
    )
    return Calibration(pool[best].name, n, folds, points)


def _has_quality(dataset: RoutingDataset, model: str) -> bool:
    """Whether ``dataset`` logged a quality for ``model`` on at least one row."""
    if model not in dataset.models:
        return False
    return bool((~np.isnan(dataset.quality[:, dataset.models.index(model)])).any())
