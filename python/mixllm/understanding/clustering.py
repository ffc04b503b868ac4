"""Domains for data without labels: the zero-shot taxonomy when it spreads the data, else
clusters learned from the data itself.

The tag-enhanced projection needs each query's domain. Without labels the zero-shot tagger
gives one from a fixed taxonomy, which may not fit the data: a set of math problems lands in
one or two of its domains, or is scattered over many along lines that do not follow the
data's own structure. `choose_domains` measures how much of the vectors' spread the tagger's
domains explain (the between-domain share of the total sum of squares) against k-means
clusters of the same count; when the taxonomy explains less than `SPREAD_RATIO` of what the
clusters do, the clusters are the domains.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mixllm._core import InvalidInputError

__all__ = ["SPREAD_RATIO", "DomainChoice", "choose_domains", "explained_share", "kmeans"]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

# The taxonomy is kept while its domains explain at least this fraction of the spread that
# learned clusters of the same count explain.
SPREAD_RATIO = 0.5
# The fewest queries per cluster: fewer, and clusters fit noise.
MIN_ROWS_PER_CLUSTER = 5
MAX_CLUSTERS = 20


@dataclass(frozen=True)
class DomainChoice:
    """The domain of each query, where it came from, and the spread each candidate explained
    (None when the taxonomy was kept without a comparison: too few queries to cluster)."""

    ids: I64
    source: str
    taxonomy_share: float | None
    cluster_share: float | None


def explained_share(vectors: F64, labels: I64) -> float:
    """The share of the vectors' total sum of squares that lies between the labels' groups
    (1: every group a single point; 0: every group centred on the overall mean)."""
    centred = vectors - vectors.mean(axis=0)
    total = float(np.sum(centred**2))
    if total == 0.0:
        return 0.0
    _, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse).astype(np.float64)
    sums = np.zeros((len(counts), vectors.shape[1]))
    np.add.at(sums, inverse, centred)
    between = float(np.sum(sums**2 / counts[:, None]))
    return between / total


def kmeans(vectors: F64, k: int, *, seed: int = 0, iterations: int = 50) -> I64:
    """Cluster ids of the rows (k-means++ start, then Lloyd's iterations until no row moves);
    deterministic for a given ``seed``."""
    n = vectors.shape[0]
    if not 1 <= k <= n:
        raise InvalidInputError(f"k must be in 1..{n}, got {k}")
    rng = np.random.default_rng(seed)
    centres = np.empty((k, vectors.shape[1]))
    centres[0] = vectors[rng.integers(n)]
    nearest = np.sum((vectors - centres[0]) ** 2, axis=1)
    for c in range(1, k):
        total = float(nearest.sum())
        pick = rng.choice(n, p=nearest / total) if total > 0 else rng.integers(n)
        centres[c] = vectors[pick]
        nearest = np.minimum(nearest, np.sum((vectors - centres[c]) ** 2, axis=1))
    labels = np.full(n, -1, dtype=np.int64)
    squared = np.sum(vectors**2, axis=1)[:, None]
    for _ in range(iterations):
        distances = squared - 2.0 * vectors @ centres.T + np.sum(centres**2, axis=1)[None, :]
        moved = np.argmin(distances, axis=1).astype(np.int64)
        if np.array_equal(moved, labels):
            break
        labels = moved
        for c in range(k):
            members = labels == c
            if members.any():
                centres[c] = vectors[members].mean(axis=0)
    return labels


def choose_domains(vectors: F64, taxonomy_ids: I64, *, seed: int = 0) -> DomainChoice:
    """The taxonomy's domains, or learned clusters when the taxonomy does not spread the data
    (see the module's description)."""
    n = vectors.shape[0]
    used = len(np.unique(taxonomy_ids))
    k = min(max(used, 2), MAX_CLUSTERS, n // MIN_ROWS_PER_CLUSTER)
    if k < 2:
        return DomainChoice(taxonomy_ids, "zero-shot tagger (the data has no labels)", None, None)
    taxonomy_share = explained_share(vectors, taxonomy_ids)
    clusters = kmeans(vectors, k, seed=seed)
    cluster_share = explained_share(vectors, clusters)
    if taxonomy_share >= SPREAD_RATIO * cluster_share:
        source = (
            f"zero-shot tagger (the data has no labels; its domains explain "
            f"{100 * taxonomy_share:.0f}% of the queries' spread, {k} learned clusters "
            f"{100 * cluster_share:.0f}%)"
        )
        return DomainChoice(taxonomy_ids, source, taxonomy_share, cluster_share)
    source = (
        f"learned clusters (the data has no labels, and the zero-shot taxonomy's {used} "
        f"domain(s) explain {100 * taxonomy_share:.0f}% of the queries' spread, {k} clusters "
        f"{100 * cluster_share:.0f}%)"
    )
    return DomainChoice(clusters, source, taxonomy_share, cluster_share)
