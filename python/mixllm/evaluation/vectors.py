"""Sentence vectors for an evaluation run, computed once and cached on disk.

Embedding is the expensive part of an evaluation (RouterBench's ARC prompts are long, and every
one runs through the encoder). Every router in a run shares one
matrix of vectors, and the matrix is cached as ``.npy`` under ``$MIXLLM_CACHE/eval-vectors``
(else ``$XDG_CACHE_HOME/mixllm``, else ``~/.cache/mixllm``), keyed by a sha256 over the texts,
the sha256 of the model file run and of its tokenizer file, and the token window and its
truncation, so a second run with the same data and encoder skips embedding.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from mixllm.encoders.embedding import Embedder

__all__ = ["cache_dir", "embed_cached", "encoder_fingerprint"]

F64 = NDArray[np.float64]


def cache_dir() -> Path:
    """Where evaluation vectors are cached."""
    root = os.environ.get("MIXLLM_CACHE")
    if root:
        return Path(root) / "eval-vectors"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "mixllm" / "eval-vectors"


def encoder_fingerprint(embedder: Embedder) -> tuple[str, ...]:
    """Everything an embedder's vectors depend on besides the texts: its model and tokenizer
    files and its token window. Part of every cache key of embedded vectors."""
    return (
        embedder.model_sha256,
        embedder.tokenizer_sha256,
        str(embedder.max_tokens),
        embedder.truncation,
    )


def _key(texts: Sequence[str], embedder: Embedder) -> str:
    digest = hashlib.sha256()
    encoder = encoder_fingerprint(embedder)
    for data in (*(field.encode() for field in encoder), *(t.encode("utf-8") for t in texts)):
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:32]


def embed_cached(
    texts: Sequence[str],
    embedder: Embedder,
    *,
    directory: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    chunk: int = 256,
) -> F64:
    """(n, dim) float64 vectors of ``texts``, read from the cache or embedded and stored."""
    folder = directory if directory is not None else cache_dir()
    path = folder / f"{_key(texts, embedder)}.npy"
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape == (len(texts), embedder.dim):
                return np.asarray(cached, dtype=np.float64)
        except (OSError, ValueError):
            pass
    out = np.empty((len(texts), embedder.dim), dtype=np.float64)
    for start in range(0, len(texts), chunk):
        part = list(texts[start : start + chunk])
        out[start : start + len(part)] = embedder.embed(part)
        if progress is not None:
            progress(start + len(part), len(texts))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".{path.stem}.{os.getpid()}.tmp.npy"
        np.save(temporary, out.astype(np.float32))
        os.replace(temporary, path)
    except OSError:
        pass  # a read-only cache only costs the next run the embedding time
    return out
