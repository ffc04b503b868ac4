"""MABWiser's LinUCB on the same problem size: K = 11 arms, contexts of length d, each arm fitted
on as many random unit contexts as the mixllm pool learned from (200 + 20).

It decides on the UCB of the expected reward alone (no cost or latency terms), so it does less
per decision than mixllm; the comparison is of the per-decision cost of a LinUCB router that a
Python user would reach for, called the way a router calls it: one context at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from mabwiser.mab import MAB, LearningPolicy
from numpy.typing import NDArray

from workload import FIT_ROWS, MODELS, ONLINE_UPDATES, model_name, unit_rows


def fitted_linucb(dim: int, seed: int = 5) -> MAB:
    rng = np.random.default_rng(seed)
    arms = [model_name(m) for m in range(MODELS)]
    rows = FIT_ROWS + ONLINE_UPDATES
    decisions = np.repeat(arms, rows)
    rewards = rng.uniform(0.0, 1.0, len(decisions))
    contexts = unit_rows(rng, len(decisions), dim)
    mab = MAB(arms, LearningPolicy.LinUCB(alpha=0.01, l2_lambda=1.0), seed=seed)
    mab.fit(decisions, rewards, contexts)
    return mab


def predict_once(mab: MAB) -> Callable[[NDArray[np.float64]], object]:
    """One decision for one context; MABWiser takes contexts as a 2-D array."""

    def call(x: NDArray[np.float64]) -> object:
        return mab.predict(x.reshape(1, -1))

    return call
