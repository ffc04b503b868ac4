"""A Router that needs no encoder or data: a stand-in embedder that maps each text to a fixed
random unit vector, a small fixed projection and a pool of three models. For tests of the
Router's bookkeeping, persistence and limits, where what the vectors mean does not matter."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mixllm.config import ModelConfig, RouterConfig
from mixllm.data import RoutingDataset
from mixllm.routing.router import Router
from mixllm.understanding.projection import LinearProjection

INPUT_DIM = 32
DIM = 6


class HashEmbedder:
    """A stand-in sentence encoder of any width: each text's vector is drawn from a generator
    seeded by the text's digest (scaled to unit length when ``unit``), so the same text always
    gets the same vector and another text another one. It records the texts of every call."""

    def __init__(self, width: int = INPUT_DIM, *, unit: bool = True) -> None:
        self.dim = width
        self.unit = unit
        self.calls: list[list[str]] = []

    @property
    def batches(self) -> list[int]:
        """How many texts each call embedded."""
        return [len(call) for call in self.calls]

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        items = list(texts)
        self.calls.append(items)
        out = np.empty((len(items), self.dim), dtype=np.float32)
        for row, text in enumerate(items):
            seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
            vector = np.random.default_rng(seed).normal(size=self.dim)
            out[row] = vector / np.linalg.norm(vector) if self.unit else vector
        return out


def model(name: str, **changes: Any) -> ModelConfig:
    fields: dict[str, Any] = {
        "price_in": 1.0,
        "price_out": 2.0,
        "ttft_s": 0.2,
        "tokens_per_s": 50.0,
        "concurrency": 4,
    }
    fields.update(changes)
    return ModelConfig(name, **fields)


def light_router(
    *, clock: Callable[[], float] | None = None, embedder: Any = None, **changes: Any
) -> Router:
    config = RouterConfig(
        models=(model("small"), model("medium", price_out=5.0), model("large", price_out=20.0)),
        dim=DIM,
        **changes,
    )
    projection = LinearProjection(np.eye(DIM, INPUT_DIM), np.zeros(INPUT_DIM))
    return Router(
        config,
        embedder=embedder if embedder is not None else HashEmbedder(),
        projection=projection,
        clock=clock,
    )


def rows(n: int = 8) -> RoutingDataset:
    """``n`` rows of routing data for `light_router`'s pool, random qualities, even costs."""
    rng = np.random.default_rng(3)
    models = ["small", "medium", "large"]
    return RoutingDataset(
        prompts=[f"training query {i}" for i in range(n)],
        models=models,
        quality=rng.uniform(0, 1, (n, len(models))),
        cost_usd=np.full((n, len(models)), 1e-4),
        prompt_tokens=np.full(n, 10.0),
        output_tokens=np.full((n, len(models)), 50.0),
        latency_s=None,
        labels=["a", "b"] * (n // 2),
        split=None,
        ids=[str(i) for i in range(n)],
    )


class ManualClock:
    """A Router's clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now
