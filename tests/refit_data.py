"""A two-model pool and rows of routing data for tests that fit, refit and give feedback: half
the queries easy (the cheap model gets them right), half hard (only the big one does)."""

from __future__ import annotations

import numpy as np

from mixllm.config import ModelConfig
from mixllm.data import RoutingDataset

POOL = (ModelConfig("small", 0.1, 0.1), ModelConfig("big", 1.0, 9.9))


def dataset(n: int, offset: int = 0) -> RoutingDataset:
    easy = (np.arange(n) + offset) % 2 == 0
    return RoutingDataset(
        prompts=[
            f"{'What is two plus two' if e else 'Prove the Riemann hypothesis'}, case {i + offset}?"
            for i, e in enumerate(easy)
        ],
        models=["small", "big"],
        quality=np.column_stack([easy.astype(float), np.ones(n)]),
        cost_usd=np.column_stack([np.full(n, 1e-5), np.full(n, 1e-3)]),
        prompt_tokens=np.full(n, 10.0),
        output_tokens=np.full((n, 2), 100.0),
        latency_s=None,
        labels=None,
        split=None,
        ids=[str(i + offset) for i in range(n)],
    )
