"""Choosing the heads' ridges by k-fold cross-validation on the rows a Router is fitted on.

How much a model's quality head should be shrunk depends on the data: a few hundred graded
answers want a stronger ridge than thousands of 0/1 ones. `choose_ridges` splits the rows into
folds, fits every model's heads on all folds but one exactly as `mixllm.Policy.fit` does
(ridge regression of the outcome less the model's prior on the context, the constant entry
included), scores the held-out fold, and picks the ridge of least mean squared error over
every held-out (query, model) outcome: quality for ``ridge``, log output length for
``length_ridge``. The contexts come from the projection fitted on all the rows, which reads
the prompts and their domains only, never an outcome.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mixllm._core import InvalidInputError

__all__ = ["FOLDS", "RIDGES", "KnobChoice", "choose_ridge", "fold_ids"]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

FOLDS = 5
# Candidates spaced by about 3x: the held-out error changes little between neighbours.
RIDGES = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
# The fewest rows cross-validation is run on: fewer, and each fold is too small to score.
MIN_ROWS = 2 * FOLDS


@dataclass(frozen=True)
class KnobChoice:
    """A knob's value chosen by cross-validation: every candidate's held-out mean squared
    error per fold (``fold_scores[candidate]``, one entry per fold) and their means."""

    knob: str
    chosen: float
    candidates: tuple[float, ...]
    fold_scores: dict[float, tuple[float, ...]]

    @property
    def mean_scores(self) -> dict[float, float]:
        return {c: float(np.mean(s)) for c, s in self.fold_scores.items()}

    def to_dict(self) -> dict[str, object]:
        return {
            "knob": self.knob,
            "chosen": self.chosen,
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
    return KnobChoice(knob, chosen, tuple(float(c) for c in candidates), fold_scores)
