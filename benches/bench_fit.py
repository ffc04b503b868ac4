"""pytest-benchmark of `Router.fit` with its cross-validation (ridges, calibration) on
ZeroEval's math routing data: 2,040 queries x 17 models, embeddings cached (the encoder's time
is not the fit's). Target: one fit in at most 60 s on the project's 2-core machine.

Run: ``MIXLLM_CACHE=DIR pytest benches/bench_fit.py --benchmark-only``; a first run embeds the
prompts once into DIR.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mixllm.cli import _train_config
from mixllm.config import EmbedderConfig
from mixllm.data import load_jsonl
from mixllm.evaluation.vectors import embed_cached
from mixllm.routing.router import Router

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "zeroeval_math_routing"


class CachedVectors:
    """Stands in for the Embedder: the data's vectors, computed once."""

    def __init__(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        self._rows = {text: i for i, text in enumerate(texts)}
        self._vectors = vectors.astype(np.float32)
        self.dim = vectors.shape[1]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._vectors[[self._rows[t] for t in texts]]


@pytest.mark.benchmark(group="Router.fit with cross-validation")
def test_fit_on_every_row(benchmark: Any, summary: list[str]) -> None:
    path = DATA / "routing.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is not here")
    dataset = load_jsonl(path)
    embedder = EmbedderConfig(intra_op_threads=2, cache_size=0).build()
    vectors = embed_cached(dataset.prompts, embedder)
    config, _ = _train_config(None, dataset)
    stand_in: Any = CachedVectors(dataset.prompts, vectors)

    def fit() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Router(config, embedder=stand_in).fit(dataset)

    benchmark.pedantic(fit, rounds=3, iterations=1)
    median = float(benchmark.stats.stats.median)
    summary.append(f"Router.fit, 2,040 x 17 with cross-validation: p50 {median:.1f} s")
