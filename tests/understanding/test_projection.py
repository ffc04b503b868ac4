"""Tag-enhanced and PCA projections: the loss they solve, conditioning, contexts, files."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixllm.errors import ProjectionError
from mixllm.evaluation.frontier import cost_to_reach, quality_at_cost, routing_frontier
from mixllm.understanding.projection import (
    MAX_PROJECTION_BYTES,
    LinearProjection,
    PcaProjection,
    TagProjection,
    load_projection,
    projection_from_bytes,
)


def clustered(n: int = 300, dim: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three domains whose centroids differ along directions of LOW overall variance, with a
    large nuisance variance elsewhere: PCA misses the domains, the tag loss must find them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)
    x = rng.normal(size=(n, dim)) * 0.05
    x[:, :5] += rng.normal(size=(n, 5)) * 3.0  # nuisance, high variance
    x[:, 30] += np.array([-1.0, 0.0, 1.0])[labels]  # domain signal, low variance
    x[:, 31] += np.array([0.0, 1.0, 0.0])[labels]
    return x, labels


def pull_push_loss(p: np.ndarray, x: np.ndarray, y: np.ndarray, pull: float, push: float) -> float:
    """The loss of the module docs, computed directly from its definition."""
    mean = x.mean(axis=0)
    loss = 0.0
    for k in np.unique(y):
        members = x[y == k]
        centroid = members.mean(axis=0)
        loss += pull * float((((members - centroid) @ p.T) ** 2).sum())
        loss -= push * len(members) * float((((centroid - mean) @ p.T) ** 2).sum())
    centred = x - mean
    loss += float(((centred - centred @ p.T @ p) ** 2).sum())
    return loss


def test_rows_are_orthonormal() -> None:
    x, y = clustered()
    for projection in (TagProjection.fit(x, y, 8), PcaProjection.fit(x, 8)):
        np.testing.assert_allclose(projection.matrix @ projection.matrix.T, np.eye(8), atol=1e-10)
        assert np.linalg.cond(projection.matrix) == pytest.approx(1.0, abs=1e-8)


def test_tag_projection_minimises_its_loss() -> None:
    x, y = clustered()
    fitted = TagProjection.fit(x, y, 4, pull=0.5, push=4.0)
    best = pull_push_loss(fitted.matrix, x, y, 0.5, 4.0)
    rng = np.random.default_rng(1)
    for _ in range(30):  # random orthonormal competitors and small rotations of the optimum
        q, _ = np.linalg.qr(rng.normal(size=(x.shape[1], 4)))
        assert pull_push_loss(q.T, x, y, 0.5, 4.0) >= best - 1e-6
        nudged, _ = np.linalg.qr(fitted.matrix.T + 0.05 * rng.normal(size=(x.shape[1], 4)))
        assert pull_push_loss(nudged.T, x, y, 0.5, 4.0) >= best - 1e-6


def test_tag_projection_finds_domains_that_pca_misses() -> None:
    x, y = clustered()
    tag = TagProjection.fit(x, y, 2, pull=0.5, push=50.0).project(x)
    pca = PcaProjection.fit(x, 2).project(x)

    def separation(z: np.ndarray) -> float:
        centroids = np.stack([z[y == k].mean(axis=0) for k in range(3)])
        within = np.mean([z[y == k].var(axis=0).sum() for k in range(3)])
        return float(np.var(centroids, axis=0).sum() / within)

    assert separation(tag) > 10 * separation(pca)


def test_no_tag_weight_is_pca() -> None:
    x, y = clustered()
    tag = TagProjection.fit(x, y, 6, pull=0.0, push=0.0)
    pca = PcaProjection.fit(x, 6)
    np.testing.assert_allclose(np.abs(tag.matrix @ pca.matrix.T), np.eye(6), atol=1e-8)


def test_deterministic() -> None:
    x, y = clustered()
    first = TagProjection.fit(x, y, 8)
    again = TagProjection.fit(x.copy(), y.copy(), 8)
    np.testing.assert_array_equal(first.matrix, again.matrix)
    np.testing.assert_array_equal(PcaProjection.fit(x, 8).matrix, PcaProjection.fit(x, 8).matrix)


def test_context_is_unit_plus_bias_and_vectorised() -> None:
    x, y = clustered()
    projection = TagProjection.fit(x, y, 8)
    ctx = projection.context(x)
    assert ctx.shape == (len(x), 9) and ctx.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(ctx[:, :8], axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(ctx[:, 8], 1.0)
    np.testing.assert_allclose(projection.context(x[3]), ctx[3:4])
    np.testing.assert_allclose(projection.context(x[:5].astype(np.float32)), ctx[:5], atol=1e-6)
    zero = projection.context(projection.mean)  # a vector at the mean stays finite
    assert np.isfinite(zero).all() and zero[0, 8] == 1.0


def test_save_load_round_trip(tmp_path: Path) -> None:
    x, y = clustered()
    for projection in (TagProjection.fit(x, y, 8, pull=0.25, push=2.0), PcaProjection.fit(x, 5)):
        path = tmp_path / f"{projection.kind}.npz"
        projection.save(path)
        loaded = load_projection(path)
        assert type(loaded) is type(projection)
        assert loaded.params == projection.params
        np.testing.assert_array_equal(loaded.matrix, projection.matrix)
        np.testing.assert_array_equal(loaded.context(x), projection.context(x))
        assert type(projection).load(path).d == projection.d
    with pytest.raises(ProjectionError, match="not tag"):
        TagProjection.load(tmp_path / "pca.npz")
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []


def test_bad_files_are_rejected(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(ProjectionError, match="not a mixllm projection"):
        load_projection(garbage)
    x, y = clustered()
    good = tmp_path / "good.npz"
    TagProjection.fit(x, y, 4).save(good)
    data = dict(np.load(good))
    np.savez(tmp_path / "future.npz", **{**data, "format_version": np.int64(99)})
    with pytest.raises(ProjectionError, match="format 99"):
        load_projection(tmp_path / "future.npz")
    np.savez(tmp_path / "shape.npz", **{**data, "mean": np.zeros(3)})
    with pytest.raises(ProjectionError, match=r"\(d, D\)"):
        load_projection(tmp_path / "shape.npz")
    np.savez(tmp_path / "pickled.npz", **{**data, "kind": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ProjectionError, match=r"not a mixllm projection file.*pickle"):
        load_projection(tmp_path / "pickled.npz")


def test_bad_inputs() -> None:
    x, y = clustered()
    with pytest.raises(ProjectionError, match="labels must have shape"):
        TagProjection.fit(x, y[:-1])
    with pytest.raises(ProjectionError, match="integers"):
        TagProjection.fit(x, y.astype(float))
    with pytest.raises(ProjectionError, match="pull"):
        TagProjection.fit(x, y, 4, pull=1.0)
    with pytest.raises(ProjectionError, match="d must be"):
        PcaProjection.fit(x, 41)
    projection = PcaProjection.fit(x, 4)
    with pytest.raises(ProjectionError, match=r"\(n, 40\)"):
        projection.context(np.zeros((2, 39)))
    with pytest.raises(ProjectionError, match="NaN"):
        projection.context(np.full((1, 40), np.nan))
    with pytest.raises(ProjectionError):
        LinearProjection(np.zeros((5, 3)), np.zeros(3))


def test_frontier_on_a_toy_pool() -> None:
    # Two models: a cheap one right on domain 0 only, an expensive one always right; the
    # context is the one-hot domain, so the ridge heads can learn that exactly.
    _, y = clustered(400)
    ctx = np.eye(3)[y]
    quality = np.stack([(y == 0).astype(float), np.ones(len(y))], axis=1)
    cost = np.tile([1e-4, 1e-2], (len(y), 1))
    points = routing_frontier(ctx, quality, cost, ctx, quality, cost, reference=1, alpha=0.1)
    share0 = float((y == 0).mean())
    assert quality_at_cost(points, 100.0) == pytest.approx(100.0)
    best_cost = cost_to_reach(points, 100.0)
    assert best_cost == pytest.approx(100.0 * (1 - share0) + share0, abs=2.0)


def test_routerbench_contexts(routerbench_sample: tuple[list[str], list[str]]) -> None:
    from mixllm.encoders.embedding import Embedder
    from mixllm.understanding.tagging import DomainLabels

    texts, benchmarks = routerbench_sample
    vectors = Embedder(cache_size=0).embed(texts)
    _, ids = DomainLabels.from_labels(benchmarks)
    projection = TagProjection.fit(vectors, ids, d=8)
    ctx = projection.context(vectors)
    assert ctx.shape == (len(texts), 9)
    z = ctx[:, :8]
    centroids = np.stack([z[ids == k].mean(axis=0) for k in range(3)])
    # Each prompt is closer to its own benchmark's centroid than to the others.
    nearest = np.argmax(z @ centroids.T, axis=1)
    assert (nearest == ids).mean() > 0.95


def test_damaged_or_foreign_files_are_projection_errors(tmp_path: Path) -> None:
    projection = LinearProjection(np.eye(3, 5), np.zeros(5))
    good = projection.to_bytes()
    path = tmp_path / "p.npz"
    cases = [
        (good[: len(good) // 2], "not a mixllm projection file"),  # BadZipFile before
        (b"\x93NUMPY\x01\x00", "not a mixllm projection file"),
        (b"", "not a mixllm projection file"),
    ]
    buffer = io.BytesIO()
    np.savez(buffer, format_version=np.array(["x"]), kind=np.str_("linear"))
    cases.append((buffer.getvalue(), "format_version is <U1 of shape"))
    buffer = io.BytesIO()
    np.savez(buffer, format_version=np.int64(1), kind=np.str_("linear"),
             matrix=np.array([["a"]]), mean=np.array(["b"]),
             param_names=np.array([], dtype=np.str_), param_values=np.array([]))  # fmt: skip
    cases.append((buffer.getvalue(), "matrix holds <U1, not numbers"))
    for data, message in cases:
        path.write_bytes(data)
        with pytest.raises(ProjectionError, match=message):
            load_projection(path)


def test_a_small_file_that_unpacks_to_huge_arrays_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, matrix=np.zeros((MAX_PROJECTION_BYTES // 8 + 1,)))
    assert len(buffer.getvalue()) < 1 << 20
    with pytest.raises(ProjectionError, match="unpacks to"):
        projection_from_bytes(buffer.getvalue())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.integers(min_value=0, max_value=3000), st.binary(max_size=8))
def test_any_bytes_are_a_projection_or_a_projection_error(
    noise: bytes, at: int, patch: bytes
) -> None:
    good = LinearProjection(np.eye(2, 4), np.ones(4)).to_bytes()
    for data in (noise, good[:at] + patch + good[at + len(patch) :]):
        with contextlib.suppress(ProjectionError):
            projection_from_bytes(data)
