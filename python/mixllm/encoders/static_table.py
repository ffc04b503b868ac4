"""The token table of the static encoder ``minilm-static``, distilled from the shipped
all-MiniLM-L6-v2 and built where it runs: nothing is downloaded.

A static encoder turns a text into a vector without a neural network at query time: the
vector is the L2-normalised sum of one precomputed row per token (`mixllm._core.StaticEncoder`
does the tokenizing, the look-up and the sum in Rust, with the GIL released). The table is
built from MiniLM itself:

1. every id of the tokenizer's vocabulary goes through the shipped ONNX model alone, as the
   text ``[CLS] token [SEP]``, and its sentence vector (mean-pooled and normalised, exactly as
   `mixllm.Embedder` computes one) becomes the token's vector; the vector of the empty text
   (``[CLS] [SEP]``) is kept for a text that has no token;
2. PCA, centred on the tokens' mean, keeps the first ``dim`` components: the mean is what every
   token shares, and would otherwise dominate every sum;
3. each row is scaled by a weight that falls with the token's frequency, ``a / (a + p)`` (the
   smooth inverse frequency of Arora et al.), with ``p`` estimated by Zipf's law from the
   token's rank in the vocabulary, which WordPiece orders roughly by frequency;
4. the rows of the special tokens the tokenizer adds around every text are zero.

``dim`` and ``a`` were chosen on training folds only (docs/results/static-encoder.md). The table
is cached as ``.npy`` under mixllm's cache directory, its name carrying the recipe and the
source model's sha256, with a ``.sha256`` file beside it that is checked on every load (a
damaged table is rebuilt). ``mixllm encoder fetch minilm-static`` builds it ahead of time;
otherwise the first `Embedder` that asks for it builds it.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from mixllm.encoders import model_files
from mixllm.errors import ModelFileError

__all__ = [
    "STATIC_DIM",
    "STATIC_ENCODER",
    "STATIC_SIF_A",
    "distil",
    "load_static_table",
    "static_table_path",
    "token_vectors",
]

STATIC_ENCODER = "minilm-static"
# Chosen on training folds (docs/results/static-encoder.md).
STATIC_DIM = 128
STATIC_SIF_A = 1e-3
# Bumped whenever the recipe changes, so stale cached tables are never reused.
_RECIPE = f"static-v1-pca{STATIC_DIM}-sif{STATIC_SIF_A:g}"
_BATCH = 512

F32 = NDArray[np.float32]
Progress = Callable[[int, int], None]


def token_vectors(
    *, threads: int = 1, progress: Progress | None = None
) -> tuple[F32, F32, list[int]]:
    """The shipped MiniLM's sentence vector of each vocabulary id alone (``[CLS] id [SEP]``),
    shape (vocabulary, 384); the empty text's vector; and the ids the tokenizer adds around
    every text."""
    from mixllm.encoders.embedding import Embedder

    embedder = Embedder(intra_op_threads=threads, cache_size=0)
    source = embedder.source
    template = embedder.token_ids([""])[0]
    if len(template) != 2:
        raise ModelFileError(
            f"{source.tokenizer} does not put one token before and one after a text "
            f"(the empty text is {template}): the static table cannot be built from it"
        )
    first, last = template
    vocabulary = embedder.vocab_size
    vectors = np.empty((vocabulary, embedder.dim), dtype=np.float32)
    for start in range(0, vocabulary, _BATCH):
        stop = min(start + _BATCH, vocabulary)
        vectors[start:stop] = embedder.embed_ids([[first, i, last] for i in range(start, stop)])
        if progress is not None:
            progress(stop, vocabulary)
    empty = embedder.embed_ids([template])[0]
    return vectors, empty, template


def distil(
    vectors: F32, empty: F32, special_ids: list[int], *, dim: int, sif_a: float | None
) -> F32:
    """The table from the tokens' vectors: PCA to ``dim`` components, rows scaled by
    ``sif_a / (sif_a + p(rank))`` (no weighting when ``sif_a`` is None), special tokens' rows
    zero, and the empty text's vector as a last row. Shape (vocabulary + 1, dim)."""
    if not 1 <= dim <= vectors.shape[1]:
        raise ValueError(f"dim must be in 1..{vectors.shape[1]}, got {dim}")
    data = vectors.astype(np.float64)
    mean = data.mean(axis=0)
    # The right singular vectors of the centred data are the principal axes.
    _, _, axes = np.linalg.svd(data - mean, full_matrices=False)
    basis = axes[:dim].T
    table = np.vstack([(data - mean) @ basis, (empty.astype(np.float64) - mean) @ basis])
    if sif_a is not None:
        if not sif_a > 0:
            raise ValueError(f"sif_a must be > 0, got {sif_a}")
        ranks = np.arange(1, len(vectors) + 1, dtype=np.float64)
        probability = 1.0 / (ranks * np.sum(1.0 / ranks))
        table[: len(vectors)] *= (sif_a / (sif_a + probability))[:, None]
    table[special_ids] = 0.0
    return table.astype(np.float32)


_build_lock = threading.Lock()


def static_table_path(
    directory: Path | None = None, *, rebuild: bool = False, progress: Progress | None = None
) -> Path:
    """The table of ``minilm-static``, built once and cached in ``directory`` (mixllm's cache
    by default). Building runs the shipped MiniLM once per vocabulary token;
    ``progress(done, total)`` follows it."""
    source = model_files.shipped_model()
    root = directory if directory is not None else model_files.cache_dir()
    target = root / f"minilm-{_RECIPE}-{source.model_sha256[:20]}.npy"
    stamp = target.with_suffix(".npy.sha256")
    with _build_lock:
        fresh = not rebuild and target.is_file() and stamp.is_file()
        if fresh and stamp.read_text().strip() == model_files.memo_sha256(target):
            return target
        root.mkdir(parents=True, exist_ok=True)
        vectors, empty, special = token_vectors(
            threads=min(2, os.cpu_count() or 1), progress=progress
        )
        table = distil(vectors, empty, special, dim=STATIC_DIM, sif_a=STATIC_SIF_A)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=target.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, table)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        model_files.write_text_atomically(stamp, model_files.memo_sha256(target) + "\n")
    return target


def load_static_table(path: Path) -> F32:
    """A table written by :func:`static_table_path`, as a float32 matrix."""
    try:
        table = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ModelFileError(f"cannot read the token table {path}: {err}") from err
    if table.dtype != np.float32 or table.ndim != 2:
        raise ModelFileError(
            f"{path} is not a token table: {table.dtype} array of shape {table.shape}"
        )
    return np.ascontiguousarray(table)
