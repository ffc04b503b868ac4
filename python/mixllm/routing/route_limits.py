"""One query's limits on the models it may go to (`Router.route`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mixllm._core import Decision, InvalidInputError, UnknownModelError
from mixllm.validation import optional_bounded


@dataclass(frozen=True)
class RouteLimits:
    """One query's limits on the models it may go to (`Router.route`)."""

    models: frozenset[str] | None
    max_cost_usd: float
    max_latency_s: float

    @classmethod
    def of(
        cls,
        models: Sequence[str] | None,
        max_cost_usd: float | None,
        max_latency_s: float | None,
    ) -> RouteLimits | None:
        """The limits checked, or None when there are none."""
        if models is None and max_cost_usd is None and max_latency_s is None:
            return None
        allowed = None
        if models is not None:
            if isinstance(models, str) or not all(isinstance(m, str) for m in models):
                raise InvalidInputError(f"models must be a sequence of model names, got {models!r}")
            if not models:
                raise InvalidInputError("models must name at least one model")
            allowed = frozenset(models)
        optional_bounded("max_cost_usd", max_cost_usd)
        optional_bounded("max_latency_s", max_latency_s)
        if max_latency_s is not None and max_latency_s <= 0:
            raise InvalidInputError(f"max_latency_s must be > 0, got {max_latency_s}")
        return cls(
            allowed,
            math.inf if max_cost_usd is None else float(max_cost_usd),
            math.inf if max_latency_s is None else float(max_latency_s),
        )

    def choose(self, detail: Decision) -> int:
        """Index of the model chosen within the limits from a decision's assessments."""
        names = detail.models
        allowed = np.array([self.models is None or n in self.models for n in names])
        if not allowed.any():
            raise UnknownModelError(
                f"none of the models {sorted(self.models or ())} is in the pool ({names})"
            )
        cost, latency = detail.cost, detail.latency
        within_cost = allowed & (cost <= self.max_cost_usd)
        within = within_cost & (latency <= self.max_latency_s)
        admissible = within & ~detail.excluded
        if admissible.any():
            return int(np.flatnonzero(admissible)[np.argmax(detail.score[admissible])])
        for candidates in (within, within_cost):
            if candidates.any():
                return int(np.flatnonzero(candidates)[np.argmin(latency[candidates])])
        return int(np.flatnonzero(allowed)[np.argmin(cost[allowed])])
