"""Domains for data without labels: the taxonomy when it spreads the data, else clusters."""

from __future__ import annotations

import numpy as np
import pytest

from mixllm.understanding.clustering import choose_domains, explained_share, kmeans


def blobs(sizes: tuple[int, ...], *, spread: float = 0.05, seed: int = 0) -> np.ndarray:
    """Rows around well-separated centres, one group per size."""
    rng = np.random.default_rng(seed)
    centres = 3.0 * np.eye(len(sizes), 8)
    return np.vstack(
        [centres[g] + spread * rng.standard_normal((size, 8)) for g, size in enumerate(sizes)]
    )


def groups(sizes: tuple[int, ...]) -> np.ndarray:
    return np.repeat(np.arange(len(sizes)), sizes).astype(np.int64)


def test_kmeans_finds_separated_groups() -> None:
    sizes = (30, 20, 25)
    found = kmeans(blobs(sizes), 3, seed=1)
    truth = groups(sizes)
    # The same partition, whatever the cluster numbering.
    pairs = {(int(t), int(f)) for t, f in zip(truth, found, strict=True)}
    assert len(pairs) == 3 and len({f for _, f in pairs}) == 3
    np.testing.assert_array_equal(kmeans(blobs(sizes), 3, seed=1), found)
    with pytest.raises(ValueError, match=r"k must be in 1\.\.75"):
        kmeans(blobs(sizes), 0)


def test_explained_share_is_the_between_groups_part() -> None:
    sizes = (30, 30)
    vectors = blobs(sizes)
    assert explained_share(vectors, groups(sizes)) > 0.99
    assert explained_share(vectors, np.zeros(60, dtype=np.int64)) == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(0)
    assert explained_share(vectors, rng.integers(0, 2, 60)) < 0.2


def test_a_taxonomy_that_spreads_the_data_is_kept() -> None:
    sizes = (30, 20, 25)
    choice = choose_domains(blobs(sizes), groups(sizes))
    np.testing.assert_array_equal(choice.ids, groups(sizes))
    assert choice.source.startswith("zero-shot tagger (the data has no labels")


def test_a_taxonomy_that_puts_everything_in_one_domain_gives_way_to_clusters() -> None:
    sizes = (30, 30)
    choice = choose_domains(blobs(sizes), np.zeros(60, dtype=np.int64))
    assert choice.source.startswith("learned clusters")
    assert len(np.unique(choice.ids)) == 2
    assert explained_share(blobs(sizes), choice.ids) > 0.99


def test_domains_that_cut_across_the_data_give_way_to_clusters() -> None:
    # Two real groups, tagged at random into two domains: the tags explain nothing of them.
    sizes = (40, 40)
    scattered = np.random.default_rng(3).integers(0, 2, 80).astype(np.int64)
    choice = choose_domains(blobs(sizes), scattered)
    assert choice.source.startswith("learned clusters")
    assert choice.taxonomy_share is not None and choice.cluster_share is not None
    assert choice.taxonomy_share < 0.5 * choice.cluster_share


def test_too_few_queries_to_cluster_keep_the_taxonomy() -> None:
    vectors = blobs((4, 4))
    choice = choose_domains(vectors, np.zeros(8, dtype=np.int64))
    assert choice.taxonomy_share is None and choice.source.startswith("zero-shot tagger")
