"""Projections of sentence vectors to the routing context the decision core consumes.

The routing context of a query vector e is ``x = [normalise(P · (e - μ)), 1]`` (length d + 1,
float64): a dxD matrix P with orthonormal rows, applied after subtracting the training mean μ
[ours: centring keeps the context from being dominated by the direction every MiniLM vector
shares; the paper writes P·e], L2-normalised, plus a constant 1 for the heads' intercept. With
d = 64 every per-model matrix in the decision core is 64x64, which is what makes a decision take
microseconds.

Two ways to learn P, with the same interface:

:class:`TagProjection` (the tag-enhanced embedding of the MixLLM paper). The paper
fine-tunes BERT with a loss that pulls each query towards its domain's centroid and pushes the
domain centroids apart. Here the same loss shapes a linear map, with a regulariser that keeps
the map informative and well conditioned: minimise over P with P Pᵀ = I

    L(P) = pull · Σ_i ‖P(e_i - c_{y_i})‖² - push · Σ_k n_k ‖P(c_k - c̄)‖² + ‖E_c - E_c Pᵀ P‖²

(c_k domain centroids, c̄ the overall mean, E_c the centred vectors). The last term is the
reconstruction error of the projection; without it, a domain-only loss would throw away
everything inside a domain (all that tells an easy maths question from a hard one) and, with
fewer domains than dimensions, leave most of P undetermined. Written with the scatter matrices
S_w (within domains), S_b (between domains) and S_t = S_w + S_b, L(P) is constant -
tr(P M Pᵀ) with M = (1 - pull)·S_w + (1 + push)·S_b, so the exact minimiser is the top-d
eigenvectors of M: no gradient descent, no learning rate, no seed, the same P on every run (each
row's sign is fixed so that its largest entry is positive). pull ∈ [0, 1) and push ≥ 0;
pull = push = 0 gives PCA, and only the ratio (1 + push)/(1 - pull) matters: it is the factor
by which between-domain variance counts more than within-domain variance.

:class:`PcaProjection`: the top-d principal directions, the baseline.

Both save to and load from an ``.npz`` file (``allow_pickle=False``) carrying a format
version, the kind, the shapes and the fitting weights, so a router can keep P with its state.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mixllm.errors import ProjectionError

__all__ = [
    "MAX_PROJECTION_BYTES",
    "LinearProjection",
    "PcaProjection",
    "TagProjection",
    "load_projection",
    "projection_from_bytes",
]

FORMAT_VERSION = 1
# The largest projection file read: d <= 384 rows of an input dimension up to 4,096 in
# float64 is 12.6 MB, so this leaves room and still refuses anything absurd.
MAX_PROJECTION_BYTES = 64 << 20
# The loss weights `TagProjection.fit` uses unless told (`TaggerConfig` takes them from here).
DEFAULT_PULL = 0.5
DEFAULT_PUSH = 4.0
F64 = NDArray[np.float64]


def _as_matrix(vectors: ArrayLike, dim: int | None = None, check_finite: bool = True) -> F64:
    matrix = np.asarray(vectors, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or (dim is not None and matrix.shape[1] != dim):
        want = f"(n, {dim})" if dim is not None else "(n, D)"
        raise ProjectionError(f"vectors must have shape {want}, got {np.shape(vectors)}")
    if check_finite and not np.isfinite(matrix).all():
        raise ProjectionError("vectors contain NaN or infinity")
    return matrix


def _top_eigenvectors(matrix: F64, d: int) -> F64:
    """The d leading eigenvectors of a symmetric matrix as rows, signs fixed."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    rows = vectors[:, np.argsort(values)[::-1][:d]].T
    signs = np.sign(rows[np.arange(d), np.argmax(np.abs(rows), axis=1)])
    top: F64 = rows * signs[:, None]
    return top


class LinearProjection:
    """An affine map e ↦ P(e - μ) with orthonormal rows, and the routing context built on it."""

    kind: ClassVar[str] = "linear"

    def __init__(self, matrix: ArrayLike, mean: ArrayLike, params: dict[str, float] | None = None):
        p = np.array(matrix, dtype=np.float64)
        mu = np.array(mean, dtype=np.float64)
        if p.ndim != 2 or mu.shape != (p.shape[1],):
            raise ProjectionError(
                f"matrix must be (d, D) and mean (D,), got {p.shape} and {mu.shape}"
            )
        if p.shape[0] > p.shape[1]:
            raise ProjectionError(f"d = {p.shape[0]} exceeds the input dimension {p.shape[1]}")
        if not (np.isfinite(p).all() and np.isfinite(mu).all()):
            raise ProjectionError("matrix or mean contains NaN or infinity")
        p.flags.writeable = False
        mu.flags.writeable = False
        self.matrix: F64 = p
        self.mean: F64 = mu
        # P(e - μ) = e Pᵀ - μ Pᵀ: the offset is precomputed so a query pays one d-sized subtract.
        self._matrix_t = np.ascontiguousarray(p.T)
        self._offset = mu @ self._matrix_t
        self.params: dict[str, float] = dict(params or {})

    @property
    def d(self) -> int:
        """Output dimension (the context has d + 1 entries)."""
        return int(self.matrix.shape[0])

    @property
    def input_dim(self) -> int:
        return int(self.matrix.shape[1])

    def project(self, vectors: ArrayLike) -> F64:
        """(n, d) P(e - μ) for vectors (n, D) or one vector (D,)."""
        projected: F64 = _as_matrix(vectors, self.input_dim, check_finite=False) @ self._matrix_t
        projected -= self._offset
        # A NaN or infinity in the input always reaches the output, so checking the (n, d)
        # result is enough and costs a sixth of checking the (n, D) input.
        if not np.isfinite(projected).all():
            raise ProjectionError("vectors contain NaN or infinity (or overflow when projected)")
        return projected

    def context(self, vectors: ArrayLike) -> F64:
        """(n, d + 1) float64 routing contexts [normalise(P(e - μ)), 1], one row per vector."""
        z = self.project(vectors)
        norms = np.sqrt(np.einsum("ij,ij->i", z, z))
        out = np.empty((z.shape[0], self.d + 1), dtype=np.float64)
        np.divide(z, np.maximum(norms, 1e-12)[:, None], out=out[:, : self.d])
        out[:, self.d] = 1.0
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write to an ``.npz`` file (atomically: a temporary file renamed into place)."""
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp.npz")
        tmp.write_bytes(self.to_bytes())
        os.replace(tmp, target)

    def to_bytes(self) -> bytes:
        """The ``.npz`` file :meth:`save` writes, as bytes (`projection_from_bytes` reads it)."""
        names = sorted(self.params)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            format_version=np.int64(FORMAT_VERSION),
            kind=np.str_(self.kind),
            matrix=self.matrix,
            mean=self.mean,
            param_names=np.array(names, dtype=np.str_),
            param_values=np.array([self.params[n] for n in names], dtype=np.float64),
        )
        return buffer.getvalue()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LinearProjection:
        """Read a file written by :meth:`save`; the kind must match the class called."""
        projection = load_projection(path)
        if cls is not LinearProjection and not isinstance(projection, cls):
            raise ProjectionError(f"{path} holds a {projection.kind} projection, not {cls.kind}")
        return projection

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v:g}" for k, v in sorted(self.params.items()))
        return f"{type(self).__name__}(d={self.d}, input_dim={self.input_dim}, {params})"


class PcaProjection(LinearProjection):
    """The top-d principal directions of the training vectors (the baseline)."""

    kind: ClassVar[str] = "pca"

    @classmethod
    def fit(cls, vectors: ArrayLike, d: int = 64) -> PcaProjection:
        e = _as_matrix(vectors)
        if not 1 <= d <= e.shape[1]:
            raise ProjectionError(f"d must be in 1..{e.shape[1]}, got {d}")
        if e.shape[0] < 2:
            raise ProjectionError("fitting needs at least two vectors")
        mean = e.mean(axis=0)
        centred = e - mean
        return cls(_top_eigenvectors(centred.T @ centred / e.shape[0], d), mean, {"d": d})


class TagProjection(LinearProjection):
    """Tag-enhanced projection: pull queries to their domain centroid, push centroids apart,
    keep the rest of the variance (see the module docs for the loss and its closed form)."""

    kind: ClassVar[str] = "tag"

    @classmethod
    def fit(
        cls,
        vectors: ArrayLike,
        labels: ArrayLike,
        d: int = 64,
        *,
        pull: float = DEFAULT_PULL,
        push: float = DEFAULT_PUSH,
    ) -> TagProjection:
        """Learn P from vectors (n, D) and integer domain labels (n,).

        Defaults: pull = 0.5, push = 4.0, so between-domain variance counts 10x more than
        within-domain variance: domain directions lead P while the within-domain variance
        that quality prediction needs is kept. On the RouterBench subset every weight tried
        (10x to 100x) gave the same frontier as PCA (docs/query-understanding.md).
        """
        e = _as_matrix(vectors)
        y = np.asarray(labels)
        if y.shape != (e.shape[0],):
            raise ProjectionError(f"labels must have shape ({e.shape[0]},), got {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise ProjectionError(f"labels must be integers, got dtype {y.dtype}")
        if not 1 <= d <= e.shape[1]:
            raise ProjectionError(f"d must be in 1..{e.shape[1]}, got {d}")
        if not 0.0 <= pull < 1.0:
            raise ProjectionError(f"pull must be in [0, 1), got {pull}")
        if push < 0.0:
            raise ProjectionError(f"push must be >= 0, got {push}")
        if e.shape[0] < 2:
            raise ProjectionError("fitting needs at least two vectors")
        n = e.shape[0]
        mean = e.mean(axis=0)
        domains, inverse = np.unique(y, return_inverse=True)
        centroids = np.zeros((len(domains), e.shape[1]))
        np.add.at(centroids, inverse, e)
        counts = np.bincount(inverse).astype(np.float64)
        centroids /= counts[:, None]
        within = e - centroids[inverse]
        between = (centroids - mean) * np.sqrt(counts)[:, None]
        s_w = within.T @ within / n
        s_b = between.T @ between / n
        m = (1.0 - pull) * s_w + (1.0 + push) * s_b
        params = {"d": d, "pull": pull, "push": push, "domains": len(domains)}
        return cls(_top_eigenvectors(m, d), mean, params)


_KINDS: dict[str, type[LinearProjection]] = {
    c.kind: c for c in (LinearProjection, PcaProjection, TagProjection)
}


def load_projection(path: str | os.PathLike[str]) -> LinearProjection:
    """Read any projection written by :meth:`LinearProjection.save` (at most
    ``MAX_PROJECTION_BYTES``, checked before reading)."""
    source = Path(path)
    try:
        size = source.stat().st_size
        if size > MAX_PROJECTION_BYTES:
            raise ProjectionError(
                f"{source} is {size} bytes, more than a projection file holds "
                f"({MAX_PROJECTION_BYTES})"
            )
        data = source.read_bytes()
    except OSError as err:
        raise ProjectionError(f"cannot read projection file {source}: {err}") from err
    return projection_from_bytes(data, str(source))


def projection_from_bytes(data: bytes, source: str = "projection") -> LinearProjection:
    """A projection from the bytes of an ``.npz`` file :meth:`LinearProjection.save` wrote;
    ``source`` names it in errors. Anything else raises `ProjectionError`, never more memory
    than ``MAX_PROJECTION_BYTES`` of arrays."""
    if len(data) > MAX_PROJECTION_BYTES:
        raise ProjectionError(f"{source} is more than {MAX_PROJECTION_BYTES} bytes")
    try:
        # The members' sizes once unpacked, before numpy unpacks any: a small compressed
        # archive may hold huge arrays.
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
        if unpacked > MAX_PROJECTION_BYTES:
            raise ProjectionError(
                f"{source} unpacks to {unpacked} bytes, more than {MAX_PROJECTION_BYTES}"
            )
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            version = _scalar_int(arrays["format_version"])
            if version != FORMAT_VERSION:
                raise ProjectionError(
                    f"{source}: projection file format {version}, this mixllm reads "
                    f"{FORMAT_VERSION}"
                )
            kind = _scalar_str(arrays["kind"])
            matrix, mean = arrays["matrix"], arrays["mean"]
            names = [str(n) for n in _vector(arrays["param_names"], "U")]
            values = [float(v) for v in _vector(arrays["param_values"], "f")]
    except ProjectionError:
        raise
    except (
        OSError,
        KeyError,
        ValueError,
        TypeError,
        EOFError,
        OverflowError,
        # zipfile's answer to an archive that claims encryption or an unknown method or
        # version (NotImplementedError is a RuntimeError).
        RuntimeError,
        struct.error,
        zlib.error,
        zipfile.BadZipFile,
    ) as err:
        raise ProjectionError(f"{source} is not a mixllm projection file: {err}") from err
    if kind not in _KINDS:
        raise ProjectionError(f"{source}: unknown projection kind {kind!r}")
    if len(names) != len(values):
        raise ProjectionError(f"{source}: parameter names and values differ in length")
    for name, array in (("matrix", matrix), ("mean", mean)):
        if array.dtype.kind not in "fiu":
            raise ProjectionError(f"{source}: {name} holds {array.dtype}, not numbers")
    return _KINDS[kind](matrix, mean, dict(zip(names, values, strict=True)))


def _scalar_int(array: NDArray[Any]) -> int:
    if array.shape != () or array.dtype.kind not in "iu":
        raise ProjectionError(f"format_version is {array.dtype} of shape {array.shape}")
    return int(array)


def _scalar_str(array: NDArray[Any]) -> str:
    if array.shape != () or array.dtype.kind != "U":
        raise ProjectionError(f"kind is {array.dtype} of shape {array.shape}")
    return str(array)


def _vector(array: NDArray[Any], kinds: str) -> NDArray[Any]:
    if array.ndim != 1 or array.dtype.kind not in kinds:
        raise ProjectionError(f"a parameter array is {array.dtype} of shape {array.shape}")
    return array
