"""What a Router has learned of each model, for people and dashboards."""

from __future__ import annotations

import math
from typing import Any

from mixllm.routing.router_base import RouterBase


class Introspection(RouterBase):
    """The Router's `describe_models`."""

    def describe_models(self) -> list[dict[str, Any]]:
        """The pool with prices and speeds, and what the router has learned of each model: how
        many outcomes it has seen, their mean quality and (geometric) mean output length, and
        the live queue (requests in flight, the wait predicted now, how much longer than
        predicted its requests have been taking, and their mean service time)."""
        rows = []
        now = self._now()
        for model in self._config.models:
            if model.name not in self._policy:
                continue
            state = self._policy.inspect(model.name)
            # The context's last entry is the constant 1, so the last entry of b is the
            # weighted sum of the residuals over the prior: their mean is b[-1] / Σw. The length
            # head learns only from observed lengths; its Σw is A_len's last diagonal entry less
            # its ridge.
            seen = state["weight_sum"]
            mean_residual_q = state["b_quality"][-1] / seen if seen > 0 else 0.0
            seen_len = state["length_a"][-1, -1] - self._policy.length_ridge
            mean_residual_len = state["b_log_length"][-1] / seen_len if seen_len > 0 else 0.0
            log_length = math.log1p(state["prior_output_tokens"]) + mean_residual_len
            profile = model.policy_kwargs()
            rows.append(
                {
                    "name": model.name,
                    **{k: v for k, v in profile.items() if not k.startswith("prior")},
                    "observations": state["observations"],
                    "mean_quality": float(state["prior_quality"] + mean_residual_q),
                    "mean_output_tokens": float(math.expm1(log_length)),
                    "in_flight": state["in_flight"],
                    "predicted_wait_s": self._policy.predicted_wait_s(model.name, now_s=now),
                    "service_ratio": state["service_ratio"],
                    "mean_service_s": state["mean_service_s"],
                }
            )
        return rows
