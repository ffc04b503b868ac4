"""Agreement between two labelings of the same queries (purity and normalised mutual
information): how well zero-shot tags or learned clusters follow a benchmark's own labels."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["normalised_mutual_information", "purity"]

F64 = NDArray[np.float64]


def _contingency(a: ArrayLike, b: ArrayLike) -> F64:
    _, ia = np.unique(np.asarray(a), return_inverse=True)
    _, ib = np.unique(np.asarray(b), return_inverse=True)
    table = np.zeros((ia.max() + 1, ib.max() + 1))
    np.add.at(table, (ia, ib), 1.0)
    return table


def purity(predicted: ArrayLike, truth: ArrayLike) -> float:
    """Share of items whose predicted group's majority true label is their own label."""
    table = _contingency(predicted, truth)
    return float(table.max(axis=1).sum() / table.sum())


def normalised_mutual_information(a: ArrayLike, b: ArrayLike) -> float:
    """I(a; b) / sqrt(H(a) H(b)) in [0, 1] (1: each labeling determines the other)."""
    joint = _contingency(a, b) / len(np.asarray(a))
    pa, pb = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    mutual = float((joint[nz] * np.log(joint[nz] / np.outer(pa, pb)[nz])).sum())
    ha = float(-(pa[pa > 0] * np.log(pa[pa > 0])).sum())
    hb = float(-(pb[pb > 0] * np.log(pb[pb > 0])).sum())
    if ha == 0.0 or hb == 0.0:
        return 1.0 if ha == hb else 0.0
    return mutual / float(np.sqrt(ha * hb))
