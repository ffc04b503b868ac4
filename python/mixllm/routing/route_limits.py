"""One query's limits on the models it may go to (`Router.route`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mixllm._core import InvalidInputError
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

    def arguments(self) -> dict[str, Any]:
        """The limits as `Policy.decide` takes them."""
        return {
            "models": None if self.models is None else sorted(self.models),
            "max_cost_usd": self.max_cost_usd,
            "max_latency_s": self.max_latency_s,
        }
