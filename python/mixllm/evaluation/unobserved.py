"""Outcomes a routing file does not record, as the evaluation scores them.

A router that picks a model for a query whose outcome was never recorded must still be scored,
and the baselines (MLP, KNN, the oracle) learn from every cell of the train split. Such a cell
counts as a failed answer (quality 0) at the model's mean recorded cost, as the reference
routers score it; the answer's length is left unrecorded (the simulator takes the model's mean).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mixllm.data import RoutingDataset


def unobserved_count(dataset: RoutingDataset) -> int:
    """Cells whose quality or cost is not recorded."""
    return int((np.isnan(dataset.quality) | np.isnan(dataset.cost_usd)).sum())


def with_unobserved_filled(dataset: RoutingDataset) -> RoutingDataset:
    """``dataset`` with every unrecorded quality 0 and every unrecorded cost the model's mean
    recorded cost (0 for a model with none recorded)."""
    if unobserved_count(dataset) == 0:
        return dataset
    quality = np.where(np.isnan(dataset.quality), 0.0, dataset.quality)
    recorded = ~np.isnan(dataset.cost_usd)
    totals = np.where(recorded, dataset.cost_usd, 0.0).sum(axis=0)
    means = totals / np.maximum(recorded.sum(axis=0), 1)
    cost = np.where(recorded, dataset.cost_usd, means[None, :])
    return replace(dataset, quality=quality, cost_usd=cost)
