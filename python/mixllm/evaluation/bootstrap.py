"""How much of a comparison of frontiers the test set's luck could have made: a paired
bootstrap over the test queries.

Each router's sweep leaves, per point (λ), what every test query got: its quality as scored
(0 over τ) and its cost (:class:`Outcomes`). A resample draws the test queries with replacement
(one draw for every router and for the reference, so the comparison is paired) and recomputes
every point as % of the reference over the drawn queries; each router's hull, its AIQ and the
gaps between hulls follow (`metrics`). The queues are those of the stream that ran: a resample
reweighs queries, it does not run the simulation again, so it measures the sampling noise of
the test set, not that of the arrival order. The AIQ's cost range is the run's, held fixed. A
resample that drew only queries on which the reference scored 0 (or cost nothing) has no
percentages; it is left out, and every result says how many resamples it rests on.

Each interval is the 2.5th and 97.5th percentiles over the resamples, taken one comparison at
a time (nothing corrects for making many), beside the run's own value.

For each baseline (:func:`compare`):

* ``aiq_lead``: mixllm's AIQ minus the baseline's in the run, and ``aiq_lead_interval``;
* ``mixllm_at_or_above_share``: the share of resamples in which mixllm's hull is at or above
  the baseline's from mixllm's cheapest point up (`metrics.shortfall` finds no stretch): how
  often the run's whole-range comparison comes out that way again, not a probability that
  mixllm is better;
* for each stretch where the run found the baseline ahead, the gap at the cost where the run
  found it largest (``max_gap_at_pct``; in a resample where either router's cheapest point is
  dearer than that, at the dearer of the two, the first cost both can run at): its
  ``gap_interval`` and the share of resamples in which the baseline is ahead there
  (``gap_positive_share``). One cost per stretch, and the one most favourable to the baseline
  in the run, so the share leans towards the baseline. Where mixllm's cheapest point moves
  with the draw (the cheapest corners), the gap there mostly says where that point lands.

:func:`paired_differences` does the same for two variants of one router over the same λ (the
continual experiment's feedback modes): the difference of their mean quality over the λ and of
their AIQ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mixllm._core import InvalidInputError
from mixllm.evaluation.metrics import GAP_TOLERANCE, aiq, hull_quality, shortfall
from mixllm.evaluation.simulator import SimulationResult

__all__ = ["Outcomes", "compare", "paired_differences", "resample_counts"]

F64 = NDArray[np.float64]
Pairs = list[tuple[float, float]]

# Percentiles of an interval: the central 95%.
_INTERVAL = (2.5, 97.5)


@dataclass(frozen=True)
class Outcomes:
    """What every test query got at each point of one router's sweep: ``quality`` as scored
    (0 over τ) and ``cost`` (USD), both (points, queries), and the model column it was sent to
    (``choice``, the same shape, when the sweep's runs give it)."""

    quality: F64
    cost: F64
    choice: NDArray[np.int64] | None = None

    def __post_init__(self) -> None:
        if self.quality.ndim != 2 or self.quality.shape != self.cost.shape:
            raise InvalidInputError(
                f"quality and cost must be (points, queries) of one shape, got "
                f"{self.quality.shape} and {self.cost.shape}"
            )
        if self.choice is not None and self.choice.shape != self.quality.shape:
            raise InvalidInputError(
                f"choice must be (points, queries) as quality is, {self.quality.shape}, got "
                f"{self.choice.shape}"
            )

    @classmethod
    def stack(cls, results: Sequence[SimulationResult], queries: slice = slice(None)) -> Outcomes:
        """The outcomes of a sweep's runs, one row per point, in the points' order: of the
        ``queries`` scored (all by default)."""
        return cls(
            np.array([r.quality[queries] for r in results], dtype=np.float64),
            np.array([r.cost[queries] for r in results], dtype=np.float64),
            np.array([r.choice[queries] for r in results], dtype=np.int64),
        )

    @property
    def queries(self) -> int:
        return int(self.quality.shape[1])


def resample_counts(queries: int, resamples: int, seed: int) -> F64:
    """(resamples, queries): how many times each query is drawn in each resample."""
    if queries < 1 or resamples < 1:
        raise InvalidInputError(f"need queries and resamples, got {queries} and {resamples}")
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(queries, np.full(queries, 1.0 / queries), size=resamples)
    drawn: F64 = counts.astype(np.float64)
    return drawn


def _usable(counts: F64, reference: tuple[F64, F64]) -> F64:
    """The resamples whose drawn queries give the reference a quality and a cost to divide
    by."""
    kept: F64 = counts[(counts @ reference[0] > 0.0) & (counts @ reference[1] > 0.0)]
    if len(kept) == 0:
        raise InvalidInputError(
            f"none of {len(counts)} resamples drew a query the reference scored above 0 and "
            f"paid for: too few test queries to resample"
        )
    return kept


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


def _cheapest(points: Pairs) -> float:
    return min(c for c, _ in points)


def _gap(mine: Pairs, other: Pairs, at: float) -> float:
    """How far ``other``'s hull is above ``mine``'s at cost ``at``."""
    return float(hull_quality(other, [at])[0] - hull_quality(mine, [at])[0])


def _interval(values: Sequence[float]) -> list[float]:
    return [float(v) for v in np.percentile(np.asarray(values), _INTERVAL)]


def _check_queries(named: Mapping[str, Outcomes], reference: tuple[F64, F64]) -> None:
    if len(reference[0]) != len(reference[1]):
        raise InvalidInputError(
            f"the reference has {len(reference[0])} qualities and {len(reference[1])} costs"
        )
    for name, outcomes in named.items():
        if outcomes.queries != len(reference[0]):
            raise InvalidInputError(
                f"{name} has {outcomes.queries} queries, the reference {len(reference[0])}"
            )


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
    ones measured, at their ``max_gap_at_pct``); ``c_range`` is the AIQ's cost range."""
    _check_queries({"mine": mine, **baselines}, reference)
    if set(shortfalls) != set(baselines):
        raise InvalidInputError(
            f"shortfalls are for {sorted(shortfalls)}, the baselines {sorted(baselines)}"
        )
    counts = _usable(resample_counts(mine.queries, resamples, seed), reference)
    mine_points = _resampled(mine, counts, reference)
    mine_aiq = [aiq(points, *c_range) for points in mine_points]
    mine_cheapest = [_cheapest(points) for points in mine_points]
    mine_run_aiq = aiq(_observed(mine, reference), *c_range)
    out: dict[str, dict[str, Any]] = {}
    for name, outcomes in baselines.items():
        other_points = _resampled(outcomes, counts, reference)
        leads = [
            m - aiq(points, *c_range) for m, points in zip(mine_aiq, other_points, strict=True)
        ]
        at_or_above = [
            not shortfall(m, o, c_range[1])["behind"]
            for m, o in zip(mine_points, other_points, strict=True)
        ]
        stretches = []
        for stretch in shortfalls[name]["behind"]:
            at = stretch["max_gap_at_pct"]
            # Below a router's cheapest point its hull is 0 (it cannot run that cheaply), which
            # is no gap in routing: where the draw moves either cheapest point past `at`, the
            # gap is taken at the first cost both reach.
            gaps = np.array(
                [
                    _gap(m, o, max(at, cheapest, _cheapest(o)))
                    for m, o, cheapest in zip(mine_points, other_points, mine_cheapest, strict=True)
                ]
            )
            stretches.append(
                {
                    "gap_interval": _interval(gaps.tolist()),
                    "gap_positive_share": float(np.mean(gaps > GAP_TOLERANCE)),
                }
            )
        out[name] = {
            "resamples": len(counts),
            "aiq_lead": mine_run_aiq - aiq(_observed(outcomes, reference), *c_range),
            "aiq_lead_interval": _interval(leads),
            "mixllm_at_or_above_share": float(np.mean(at_or_above)),
            "behind": stretches,
        }
    return out


def paired_differences(
    first: Outcomes,
    second: Outcomes,
    reference: tuple[F64, F64],
    c_range: tuple[float, float],
    counts: F64,
) -> dict[str, Any]:
    """``first`` minus ``second``, in the run and over the resamples ``counts``
    (`resample_counts`; the same draw for every pair of a run keeps them comparable): the mean
    quality % over their points (``mean_quality`` and ``mean_quality_interval``) and the AIQ
    (``aiq``, ``aiq_interval``), with how many resamples the intervals rest on."""
    if first.quality.shape != second.quality.shape:
        raise InvalidInputError(
            f"the two variants must have the same points and queries, got "
            f"{first.quality.shape} and {second.quality.shape}"
        )
    _check_queries({"first": first}, reference)
    if counts.ndim != 2 or counts.shape[1] != first.queries:
        raise InvalidInputError(f"counts must be (resamples, {first.queries}), got {counts.shape}")
    usable = _usable(counts, reference)

    def differences(a: list[Pairs], b: list[Pairs]) -> tuple[list[float], list[float]]:
        means = [
            float(np.mean([q for _, q in x]) - np.mean([q for _, q in y]))
            for x, y in zip(a, b, strict=True)
        ]
        aiqs = [aiq(x, *c_range) - aiq(y, *c_range) for x, y in zip(a, b, strict=True)]
        return means, aiqs

    (run_mean,), (run_aiq,) = differences(
        [_observed(first, reference)], [_observed(second, reference)]
    )
    means, aiqs = differences(
        _resampled(first, usable, reference), _resampled(second, usable, reference)
    )
    return {
        "resamples": len(usable),
        "mean_quality": run_mean,
        "mean_quality_interval": _interval(means),
        "aiq": run_aiq,
        "aiq_interval": _interval(aiqs),
    }
