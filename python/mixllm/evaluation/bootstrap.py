"""How much of a comparison of frontiers the test set's luck could have made: a paired
bootstrap over the test queries.

Each router's sweep leaves, per point (λ), what every test query got: its quality as scored
(0 over τ) and its cost (:class:`Outcomes`). A resample draws the test queries with replacement
(one draw for every router and for the reference, so the comparison is paired) and recomputes
every point as % of the reference over the drawn queries; each router's hull, its AIQ and the
gaps between hulls follow (`metrics`). The queues are those of the stream that ran: a resample
reweighs queries, it does not run the simulation again, so it measures the sampling noise of
the test set, not that of the arrival order. The AIQ's cost range is the run's, held fixed.

:func:`paired_differences` does the same for two variants of one router over the same λ (the
continual experiment's feedback modes): the difference of their mean quality over the λ and
of their AIQ.

For each baseline (:func:`compare`):

* ``aiq_lead``: mixllm's AIQ minus the baseline's, the 2.5th, 50th and 97.5th percentiles over
  the resamples;
* ``dominated_share``: the share of resamples in which mixllm's hull is at or above the
  baseline's from mixllm's cheapest point up (`metrics.shortfall` finds no stretch);
* for each stretch where the run found the baseline ahead, at the cost where its lead was
  largest (``gap_at_pct``; in a resample where either router's cheapest point is dearer than
  that, at the dearer of the two, the first cost both can run at): the gap's 2.5th and 97.5th
  percentiles (``gap_interval``) and the share of resamples in which the baseline is ahead
  there (``gap_positive_share``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mixllm.evaluation.metrics import aiq, hull, hull_quality, shortfall
from mixllm.evaluation.simulator import SimulationResult

__all__ = ["Outcomes", "compare", "paired_differences", "resample_counts"]

F64 = NDArray[np.float64]
Pairs = list[tuple[float, float]]

# Percentiles of an interval: the central 95%.
_LOW, _HIGH = 2.5, 97.5


@dataclass(frozen=True)
class Outcomes:
    """What every test query got at each point of one router's sweep: ``quality`` as scored
    (0 over τ) and ``cost`` (USD), both (points, queries)."""

    quality: F64
    cost: F64

    def __post_init__(self) -> None:
        if self.quality.ndim != 2 or self.quality.shape != self.cost.shape:
            raise ValueError(
                f"quality and cost must be (points, queries) of one shape, got "
                f"{self.quality.shape} and {self.cost.shape}"
            )

    @classmethod
    def stack(cls, results: Sequence[SimulationResult]) -> Outcomes:
        """The outcomes of a sweep's runs, one row per point, in the points' order."""
        return cls(
            np.array([r.quality for r in results], dtype=np.float64),
            np.array([r.cost for r in results], dtype=np.float64),
        )

    @property
    def queries(self) -> int:
        return int(self.quality.shape[1])


def resample_counts(queries: int, resamples: int, seed: int) -> F64:
    """(resamples, queries): how many times each query is drawn in each resample."""
    if queries < 1 or resamples < 1:
        raise ValueError(f"need queries and resamples, got {queries} and {resamples}")
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(queries, np.full(queries, 1.0 / queries), size=resamples)
    drawn: F64 = counts.astype(np.float64)
    return drawn


def _resampled(outcomes: Outcomes, counts: F64, reference: tuple[F64, F64]) -> list[Pairs]:
    """Per resample, the router's (cost %, quality %) points over the drawn queries."""
    ref_quality = counts @ reference[0]
    ref_cost = counts @ reference[1]
    quality = 100.0 * (outcomes.quality @ counts.T) / ref_quality[None, :]
    cost = 100.0 * (outcomes.cost @ counts.T) / ref_cost[None, :]
    return [
        list(zip(cost[:, b].tolist(), quality[:, b].tolist(), strict=True))
        for b in range(counts.shape[0])
    ]


def _observed(outcomes: Outcomes, reference: tuple[F64, F64]) -> Pairs:
    return _resampled(outcomes, np.ones((1, outcomes.queries)), reference)[0]


def _worst_cost(mine: Pairs, other: Pairs, lo: float, hi: float) -> float:
    """Where in [lo, hi] ``other``'s hull is furthest above ``mine``'s: at a vertex of either
    (both are piecewise linear) or an end."""
    knots = sorted({lo, hi} | {c for c, _ in (*hull(mine), *hull(other)) if lo < c < hi})
    gaps = hull_quality(other, knots) - hull_quality(mine, knots)
    return float(knots[int(np.argmax(gaps))])


def _cheapest(points: Pairs) -> float:
    return min(c for c, _ in points)


def _gap(mine: Pairs, other: Pairs, at: float) -> float:
    """How far ``other``'s hull is above ``mine``'s at cost ``at``."""
    return float(hull_quality(other, [at])[0] - hull_quality(mine, [at])[0])


def _percentiles(values: Sequence[float], which: Sequence[float]) -> list[float]:
    return [float(v) for v in np.percentile(np.asarray(values), which)]


def compare(
    mine: Outcomes,
    baselines: Mapping[str, Outcomes],
    reference: tuple[F64, F64],
    shortfalls: Mapping[str, Mapping[str, Any]],
    c_range: tuple[float, float],
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per baseline, the bootstrap of its comparison with ``mine`` (see the module's doc).

    ``reference`` is the reference model's quality and cost per test query; ``shortfalls``
    holds the run's `metrics.shortfall` of each baseline (its ``behind`` stretches are the
    ones measured); ``c_range`` is the AIQ's cost range."""
    for name, outcomes in {"mine": mine, **baselines}.items():
        if outcomes.queries != len(reference[0]) or len(reference[0]) != len(reference[1]):
            raise ValueError(
                f"{name} has {outcomes.queries} queries, the reference {len(reference[0])} "
                f"qualities and {len(reference[1])} costs"
            )
    counts = resample_counts(mine.queries, resamples, seed)
    mine_points = _resampled(mine, counts, reference)
    mine_observed = _observed(mine, reference)
    mine_aiq = [aiq(points, *c_range) for points in mine_points]
    mine_cheapest = [_cheapest(points) for points in mine_points]
    out: dict[str, dict[str, Any]] = {}
    for name, outcomes in baselines.items():
        other_points = _resampled(outcomes, counts, reference)
        other_observed = _observed(outcomes, reference)
        leads = [
            m - aiq(points, *c_range) for m, points in zip(mine_aiq, other_points, strict=True)
        ]
        dominated = [
            not shortfall(m, o, c_range[1])["behind"]
            for m, o in zip(mine_points, other_points, strict=True)
        ]
        stretches = []
        for stretch in shortfalls[name]["behind"]:
            at = _worst_cost(mine_observed, other_observed, stretch["from_pct"], stretch["to_pct"])
            gaps = [
                _gap(m, o, max(at, cheapest, _cheapest(o)))
                for m, o, cheapest in zip(mine_points, other_points, mine_cheapest, strict=True)
            ]
            stretches.append(
                {
                    "gap_at_pct": at,
                    "gap_interval": _percentiles(gaps, (_LOW, _HIGH)),
                    "gap_positive_share": float(np.mean(np.asarray(gaps) > 0.0)),
                }
            )
        out[name] = {
            "aiq_lead": _percentiles(leads, (_LOW, 50.0, _HIGH)),
            "dominated_share": float(np.mean(dominated)),
            "behind": stretches,
        }
    return out


def paired_differences(
    first: Outcomes,
    second: Outcomes,
    reference: tuple[F64, F64],
    c_range: tuple[float, float],
    counts: F64,
) -> dict[str, list[float]]:
    """``first`` minus ``second`` over the resamples ``counts`` (`resample_counts`; the same
    draw for every pair of a run keeps them comparable): the mean quality % over their points
    (``mean_quality``) and the AIQ (``aiq``), each the 2.5th, 50th and 97.5th percentiles."""
    if first.quality.shape != second.quality.shape:
        raise ValueError(
            f"the two variants must have the same points and queries, got "
            f"{first.quality.shape} and {second.quality.shape}"
        )
    if counts.ndim != 2 or counts.shape[1] != first.queries or len(reference[0]) != first.queries:
        raise ValueError(
            f"counts must be (resamples, {first.queries}) and the reference "
            f"{first.queries} queries, got {counts.shape} and {len(reference[0])}"
        )
    a, b = _resampled(first, counts, reference), _resampled(second, counts, reference)
    mean_quality = [
        float(np.mean([q for _, q in x]) - np.mean([q for _, q in y]))
        for x, y in zip(a, b, strict=True)
    ]
    aiqs = [aiq(x, *c_range) - aiq(y, *c_range) for x, y in zip(a, b, strict=True)]
    which = (_LOW, 50.0, _HIGH)
    return {"mean_quality": _percentiles(mean_quality, which), "aiq": _percentiles(aiqs, which)}
