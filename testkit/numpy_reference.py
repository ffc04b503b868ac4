"""The decision rule (docs/design/how-it-decides.md) written in numpy, from a `Policy`'s
learned state.

For each model l, with no request in flight (so no queue wait):

    q̂ = prior_q + θ_q·x
    ô = expm1(clip(log1p(prior_tokens) + θ_len·x, 0, 13.8))
    ĉ = (prompt_tokens·price_in + ô·price_out) / 1e6 + fee
    u = sqrt(max(xᵀA⁻¹x, 0))
    L = ttft + ô / tokens_per_s
    s = q̂ - ĉ/λ + alpha·u - β·(exp(L/τ) - 1)

and the choice is the first best s among models with L ≤ τ, or the smallest L when there is none.

It is vectorised over the K models the way a numpy user would: both heads stacked into one
(2K, d) matrix, the K inverses into one (K·d, d) matrix, so a decision is two BLAS matrix-vector
products plus a few length-K elementwise operations. It serves as the oracle that `Policy.decide`
is checked against and as the speed baseline it is compared with.

Benchmarks call `single_threaded_blas` first: `Policy.decide` uses one core, and OpenBLAS
splitting a 704 x 64 product over two threads on a busy two-core machine makes a call wait for a
scheduler slice (milliseconds), which would measure the machine's load rather than numpy.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

import workload
from mixllm import Policy

MAX_LOG_LENGTH = 13.8


def single_threaded_blas() -> None:
    """Limits numpy's BLAS to one thread for the rest of the process."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


class NumpyPolicy:
    """A frozen copy of a `Policy`'s pool that decides with numpy."""

    def __init__(self, policy: Policy) -> None:
        self.models = policy.models
        self.alpha = policy.alpha
        self.beta = policy.beta
        self.tau_s = policy.tau_s
        arms = [policy.inspect(name) for name in self.models]
        self.k = len(arms)
        self.dim = policy.dim
        self.heads = np.ascontiguousarray(
            np.vstack(
                [
                    np.stack([a["theta_quality"] for a in arms]),
                    np.stack([a["theta_log_length"] for a in arms]),
                ]
            )
        )
        self.a_inv = np.ascontiguousarray(np.stack([a["a_inv"] for a in arms]))
        self.a_inv_rows = self.a_inv.reshape(self.k * self.dim, self.dim)
        self.prior_quality = np.array([a["prior_quality"] for a in arms])
        self.prior_log_length = np.log1p([a["prior_output_tokens"] for a in arms])
        profiles = [a["profile"] for a in arms]
        self.price_in = np.array([p["price_in"] for p in profiles])
        self.price_out = np.array([p["price_out"] for p in profiles])
        self.fee = np.array([p["fee"] for p in profiles])
        self.ttft_s = np.array([p["ttft_s"] for p in profiles])
        self.tokens_per_s = np.array([p["tokens_per_s"] for p in profiles])

    def assess(
        self, x: NDArray[np.float64], prompt_tokens: float, willingness_to_pay: float
    ) -> dict[str, NDArray[np.float64]]:
        """Every model's predictions and score for context `x`, named as on `Decision`."""
        k = self.k
        heads = self.heads @ x
        quality = self.prior_quality + heads[:k]
        log_length = np.clip(self.prior_log_length + heads[k:], 0.0, MAX_LOG_LENGTH)
        output_tokens = np.expm1(log_length)
        cost = (prompt_tokens * self.price_in + output_tokens * self.price_out) / 1e6 + self.fee
        quad = (self.a_inv_rows @ x).reshape(k, self.dim) @ x
        uncertainty = np.sqrt(np.maximum(quad, 0.0))
        latency = self.ttft_s + output_tokens / self.tokens_per_s
        penalty = np.expm1(latency / self.tau_s)
        score = quality - cost / willingness_to_pay + self.alpha * uncertainty - self.beta * penalty
        return {
            "quality": quality,
            "output_tokens": output_tokens,
            "cost": cost,
            "uncertainty": uncertainty,
            "latency": latency,
            "penalty": penalty,
            "score": score,
        }

    def decide(
        self, x: NDArray[np.float64], prompt_tokens: float, willingness_to_pay: float
    ) -> int:
        """Index of the chosen model, by the same rule as `Policy.decide`."""
        a = self.assess(x, prompt_tokens, willingness_to_pay)
        admissible = a["latency"] <= self.tau_s
        if not admissible.any():
            return int(np.argmin(a["latency"]))
        return int(np.argmax(np.where(admissible, a["score"], -np.inf)))


def disagreements(
    policy: Policy,
    reference: NumpyPolicy,
    xs: NDArray[np.float64],
    prompt_tokens: NDArray[np.float64],
    willingness_to_pay: NDArray[np.float64],
    tie_tolerance: float = 1e-9,
) -> tuple[int, int]:
    """(queries where the two choose different models, of which near-ties).

    A near-tie is a query whose two chosen models' reference scores differ by under
    `tie_tolerance`, where rounding order alone can decide.
    """
    differ = 0
    ties = 0
    for x, tokens, wtp in zip(xs, prompt_tokens, willingness_to_pay, strict=True):
        ours = policy.decide(x, prompt_tokens=float(tokens), willingness_to_pay=float(wtp)).index
        theirs = reference.decide(x, float(tokens), float(wtp))
        if ours != theirs:
            differ += 1
            score = reference.assess(x, float(tokens), float(wtp))["score"]
            ties += abs(score[ours] - score[theirs]) < tie_tolerance
    return differ, ties


def disagreements_on_random_queries(
    policy: Policy, reference: NumpyPolicy, count: int, seed: int
) -> tuple[int, int]:
    """`disagreements` over ``count`` random unit contexts, prompts of 10-4,000 tokens and
    willingness to pay from 1e-3 to 1e5 (log-uniform), drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    xs = workload.unit_rows(rng, count, policy.dim)
    return disagreements(
        policy,
        reference,
        xs,
        rng.uniform(10.0, 4000.0, count),
        10.0 ** rng.uniform(-3.0, 5.0, count),
    )
