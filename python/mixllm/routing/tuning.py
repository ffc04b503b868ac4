"""Choosing the heads' ridges by k-fold cross-validation on the rows a Router is fitted on.

How much a model's quality head should be shrunk depends on the data: a few hundred graded
answers want a stronger ridge than thousands of 0/1 ones. Both choosers split the rows into
folds and fit every model's heads on all folds but one exactly as `mixllm.Policy.fit` does
(ridge regression of the outcome less the model's prior on the context, the constant entry
included), then score the held-out fold:

- `choose_ridge` by the mean squared error over every held-out (query, model) outcome: quality,
  or log output length for ``length_ridge``;
- `choose_ridge_by_routing` by what routing the held-out queries gives: the area under the
  quality-cost frontier as λ is swept (`routing_auc`). That is what the heads are for, and the
  two disagree: the ridge of least quality error leaves the heads' differences noisy, and the
  router, which picks the largest predicted quality net of cost, follows that noise.

The contexts come from the projection fitted on all the rows, which reads the prompts and their
domains only, never an outcome.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mixllm._core import InvalidInputError, Policy

__all__ = [
    "AUC",
    "FOLDS",
    "MIN_ROUTING_ROWS",
    "MSE",
    "RIDGES",
    "KnobChoice",
    "choose_ridge",
    "choose_ridge_by_routing",
    "column_means_filled",
    "fold_ids",
    "routing_auc",
]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

FOLDS = 5
# Candidates spaced by about 3x: the held-out error changes little between neighbours.
RIDGES = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
# The fewest rows cross-validation is run on: fewer, and each fold is too small to score.
MIN_ROWS = 2 * FOLDS
# The fewest rows the quality ridge is chosen by routing on: a fold of fewer queries traces
# a frontier too coarse to rank the ridges (its scores jump between neighbouring ridges), and
# the squared error, smoother, chooses instead.
MIN_ROUTING_ROWS = 50 * FOLDS
# What a choice's fold scores measure.
MSE = "held-out squared error"
AUC = "held-out routing AUC"
# λ from "cost decides" to "cost is ignored", 8 points per decade: the frontier's area needs
# its points closer than the calibration table's.
ROUTING_LAMBDAS = (*(float(v) for v in np.logspace(-9, 6, 121)), math.inf)


@dataclass(frozen=True)
class KnobChoice:
    """A knob's value chosen by cross-validation: every candidate's held-out score per fold
    (``fold_scores[candidate]``, one entry per fold) and over all the folds (`mean_scores`).
    ``criterion`` says what the scores are: `MSE` (the least wins) or `AUC` (the largest
    wins)."""

    knob: str
    chosen: float
    candidates: tuple[float, ...]
    fold_scores: dict[float, tuple[float, ...]]
    criterion: str = MSE
    # Each candidate's score over all the folds when it is not the mean of the folds' (the
    # routing AUC of every held-out query's frontier).
    overall: dict[float, float] | None = None

    @property
    def mean_scores(self) -> dict[float, float]:
        """Each candidate's score over all the folds (what the choice compares)."""
        if self.overall is not None:
            return dict(self.overall)
        return {c: float(np.mean(s)) for c, s in self.fold_scores.items()}

    def to_dict(self) -> dict[str, object]:
        return {
            "knob": self.knob,
            "chosen": self.chosen,
            "criterion": self.criterion,
            "mean_scores": {str(c): s for c, s in self.mean_scores.items()},
            "fold_scores": {str(c): list(s) for c, s in self.fold_scores.items()},
        }


def fold_ids(n: int, folds: int = FOLDS, seed: int = 0) -> I64:
    """Each row's fold, 0..folds-1, as even as can be, at random (deterministic for a seed)."""
    order = np.random.default_rng(seed).permutation(n)
    ids = np.empty(n, dtype=np.int64)
    ids[order] = np.arange(n) % folds
    return ids


def choose_ridge(
    knob: str,
    contexts: F64,
    targets: Sequence[F64],
    *,
    candidates: Sequence[float] = RIDGES,
    folds: int = FOLDS,
    seed: int = 0,
) -> KnobChoice:
    """The candidate ridge of least held-out squared error of ridge regressions of each of
    ``targets`` (one (n,) vector per model, the outcome less the model's prior, NaN where
    unobserved) on ``contexts`` (n, d + 1). Ties go to the larger ridge (the simpler head)."""
    n, dim = contexts.shape
    assignment = fold_ids(n, folds, seed)
    errors = {float(c): [0.0] * folds for c in candidates}
    counts = [0] * folds
    # Targets observed on the same rows share every fold's Gram matrix and its
    # eigendecomposition (with every outcome logged, all of them do).
    groups: dict[bytes, list[F64]] = {}
    for target in targets:
        groups.setdefault(np.packbits(~np.isnan(target)).tobytes(), []).append(target)
    for members in groups.values():
        stacked = np.column_stack(members)
        seen = ~np.isnan(stacked[:, 0])
        for fold in range(folds):
            train = seen & (assignment != fold)
            held = seen & (assignment == fold)
            if not held.any():
                continue
            x = contexts[train]
            # One eigendecomposition serves every candidate: (G + rI)^-1 = V (S + r)^-1 Vᵀ.
            values, vectors = np.linalg.eigh(x.T @ x)
            rotated = vectors.T @ (x.T @ stacked[train])
            held_x = contexts[held] @ vectors
            for candidate in candidates:
                theta = rotated / (np.maximum(values, 0.0) + candidate)[:, None]
                residual = held_x @ theta - stacked[held]
                errors[float(candidate)][fold] += float(np.sum(residual**2))
            counts[fold] += int(held.sum()) * stacked.shape[1]
    if dim and sum(counts) == 0:
        raise InvalidInputError("no observed outcome to cross-validate on")
    fold_scores = {
        c: tuple(e / k if k else math.nan for e, k in zip(per_fold, counts, strict=True))
        for c, per_fold in errors.items()
    }
    totals = {c: sum(per_fold) / sum(counts) for c, per_fold in errors.items()}
    chosen = min(totals, key=lambda c: (totals[c], -c))
    return KnobChoice(knob, chosen, tuple(float(c) for c in candidates), fold_scores, MSE)


def routing_auc(quality_pct: F64, cost_pct: F64) -> float:
    """The area under a frontier, as the reference routers compute it: the mean, over cost %
    in [0, 100], of the best quality % reached at that cost or less (0 below the cheapest
    point), from the points (``cost_pct[i]``, ``quality_pct[i]``)."""
    grid = np.linspace(0.0, 100.0, 401)
    order = np.argsort(cost_pct, kind="stable")
    best_so_far = np.maximum.accumulate(quality_pct[order])
    # The last point at or below each cost of the grid.
    reached = np.searchsorted(cost_pct[order], grid, side="right") - 1
    heights = np.where(reached >= 0, best_so_far[np.maximum(reached, 0)], 0.0)
    return float(np.trapezoid(heights, grid) / 100.0)


def choose_ridge_by_routing(
    new_policy: Callable[[float], Policy],
    names: Sequence[str],
    contexts: F64,
    quality: F64,
    cost: F64,
    output_tokens: F64 | None,
    prompt_tokens: F64,
    *,
    candidates: Sequence[float] = RIDGES,
    lambdas: Sequence[float] = ROUTING_LAMBDAS,
    folds: int = FOLDS,
    seed: int = 0,
    pooled: bool = False,
) -> KnobChoice:
    """The quality ridge whose heads route held-out queries best. For each candidate and fold,
    ``new_policy(ridge)`` (an empty policy holding ``names``) learns every model's heads from
    the other folds (``quality``, ``cost`` and ``output_tokens`` are (n, models), NaN where
    unobserved), then routes the fold's queries at every λ of ``lambdas``. A fold's score is
    the `routing_auc` of its points, quality and cost in % of the reference's on the fold (the
    model of best mean quality on all the rows), and a candidate's the mean of its folds'
    (with ``pooled``, the frontier of every fold's queries together, as one held-out set: the
    two rules were even in nested cross-validation, ``studies/quality_features.py
    --selection``). An outcome not observed counts as the model's mean. Ties go to the larger
    ridge (the simpler head)."""
    n = contexts.shape[0]
    if quality.shape != (n, len(names)) or cost.shape != quality.shape:
        raise InvalidInputError(
            f"quality and cost must be ({n}, {len(names)}), got {quality.shape} and {cost.shape}"
        )
    filled_quality = column_means_filled(quality)
    filled_cost = column_means_filled(cost)
    reference = int(np.argmax(filled_quality.mean(axis=0)))
    assignment = fold_ids(n, folds, seed)
    # totals[candidate][fold] = (quality, cost) routed at each λ, and the reference's.
    totals: dict[float, list[tuple[F64, float, float]]] = {float(c): [] for c in candidates}
    for fold in range(folds):
        held = assignment == fold
        if not held.any() or held.all():
            continue
        rows = np.flatnonzero(held)
        ref_totals = (
            float(filled_quality[rows, reference].sum()),
            float(filled_cost[rows, reference].sum()),
        )
        for candidate in candidates:
            policy = new_policy(float(candidate))
            for j, name in enumerate(names):
                seen = ~held & ~np.isnan(quality[:, j])
                if seen.any():
                    lengths = None if output_tokens is None else output_tokens[seen, j]
                    policy.fit(name, contexts[seen], quality[seen, j], lengths)
            routed = _routed_totals(
                policy, contexts[rows], prompt_tokens[rows], lambdas, filled_quality[rows],
                filled_cost[rows],
            )  # fmt: skip
            totals[float(candidate)].append((routed, *ref_totals))
    if not any(totals.values()):
        raise InvalidInputError("too few rows to cross-validate routing on")
    fold_scores = {c: tuple(_area([part]) for part in parts) for c, parts in totals.items()}
    if pooled:
        scores = {c: _area(parts) for c, parts in totals.items()}
    else:
        scores = {c: float(np.mean(s)) for c, s in fold_scores.items()}
    chosen_ridge = max(scores, key=lambda c: (scores[c], c))
    return KnobChoice(
        "ridge",
        chosen_ridge,
        tuple(float(c) for c in candidates),
        fold_scores,
        criterion=AUC,
        overall=scores,
    )


def _routed_totals(
    policy: Policy,
    contexts: F64,
    prompt_tokens: F64,
    lambdas: Sequence[float],
    quality: F64,
    cost: F64,
) -> F64:
    """(len(lambdas), 2): the total quality and cost of the queries routed at each λ."""
    routed = np.empty((len(lambdas), 2))
    for i, lam in enumerate(lambdas):
        chosen = policy.decide_batch(
            contexts, prompt_tokens=prompt_tokens, willingness_to_pay=lam, now_s=0.0, threads=1
        )
        rows = np.arange(len(chosen))
        routed[i] = quality[rows, chosen].sum(), cost[rows, chosen].sum()
    return routed


def _area(parts: Sequence[tuple[F64, float, float]]) -> float:
    """The `routing_auc` of folds' routed totals (each with its reference's quality and cost)
    taken as one held-out set."""
    routed = np.sum([p[0] for p in parts], axis=0)
    ref_quality = sum(p[1] for p in parts)
    ref_cost = sum(p[2] for p in parts)
    return routing_auc(
        100.0 * routed[:, 0] / max(ref_quality, 1e-12),
        100.0 * routed[:, 1] / max(ref_cost, 1e-300),
    )


def column_means_filled(values: F64) -> F64:
    """``values`` with each NaN replaced by its column's mean (0 for a column of NaN only)."""
    seen = ~np.isnan(values)
    counts = seen.sum(axis=0)
    means = np.where(seen, values, 0.0).sum(axis=0) / np.maximum(counts, 1)
    return np.where(seen, values, means[None, :])
