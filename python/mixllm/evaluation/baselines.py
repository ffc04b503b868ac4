"""The routers an evaluation compares, behind one interface: ``run(stream, λ)``.

* :class:`ScoreRouter`: precomputed per-(query, model) quality and cost estimates, route to
  argmax q̂ - ĉ/λ; blind to queues. The oracle (true quality and cost), RouterBench's KNN and
  MLP routers (:func:`knn_quality`, :func:`mlp_quality`) are score routers.
* :class:`FixedRouter`: a choice per query that ignores λ (each single model; random).
* :class:`PolicyRouter`: a `mixllm.Policy` deciding query by query on live queue state and
  learning from each finished request (refined or binary feedback, or none): mixllm itself,
  its ablations, and a plain LinUCB on raw embeddings (MetaLLM-style).

λ (willingness to pay) is in USD per quality point everywhere, as in the Policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from mixllm._core import InvalidInputError, Policy
from mixllm.evaluation.frontier import fit_ridge
from mixllm.evaluation.simulator import (
    ServerProfile,
    SimulationResult,
    Stream,
    StreamConfig,
    simulate,
    simulate_fixed,
)
from mixllm.routing.ledger import PendingDecision

__all__ = [
    "FeedbackMode",
    "FixedRouter",
    "PolicyRouter",
    "ScoreRouter",
    "SweepRouter",
    "knn_quality",
    "mlp_quality",
    "ridge_predict",
]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
FeedbackMode = Literal["none", "refined", "binary"]


class SweepRouter(Protocol):
    name: str
    sweeps: bool  # False: one point whatever λ

    def run(self, stream: Stream, willingness_to_pay: float) -> SimulationResult: ...


def _argmax_score(q_hat: F64, c_hat: F64, willingness_to_pay: float) -> I64:
    if np.isinf(willingness_to_pay):
        return np.asarray(np.argmax(q_hat, axis=1), dtype=np.int64)
    return np.asarray(np.argmax(q_hat - c_hat / willingness_to_pay, axis=1), dtype=np.int64)


@dataclass
class ScoreRouter:
    """Routes each query to argmax q̂ - ĉ/λ of fixed estimates (n, K)."""

    name: str
    quality: F64
    cost: F64
    servers: Sequence[ServerProfile]
    sweeps: bool = True

    def run(self, stream: Stream, willingness_to_pay: float) -> SimulationResult:
        choice = _argmax_score(self.quality, self.cost, willingness_to_pay)
        return simulate_fixed(stream, choice, self.servers)


@dataclass
class FixedRouter:
    """Sends query i to model ``choice[i]`` whatever λ."""

    name: str
    choice: I64
    servers: Sequence[ServerProfile]
    sweeps: bool = False

    def run(self, stream: Stream, willingness_to_pay: float) -> SimulationResult:
        return simulate_fixed(stream, self.choice, self.servers)


class _PolicyListener:
    def __init__(
        self,
        policy: Policy,
        contexts: F64,
        prompt_tokens: F64,
        output_tokens: F64,
        stream: Stream,
        columns: list[int],
        willingness_to_pay: float,
        feedback: FeedbackMode,
        config: StreamConfig,
        binary_weight: float,
    ) -> None:
        self.policy = policy
        self.names = policy.models
        self.contexts = contexts
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.stream = stream
        self.columns = columns  # policy model index -> stream column
        self.wtp = willingness_to_pay
        self.feedback = feedback
        self.config = config
        self.binary_weight = binary_weight
        self.by_column = {c: i for i, c in enumerate(columns)}
        # Per query in flight: its decision's handshake with the policy, ended when served.
        self.in_flight: dict[int, PendingDecision] = {}

    def choose(self, query: int, now: float) -> int:
        decision = self.policy.decide(
            self.contexts[query],
            prompt_tokens=float(self.prompt_tokens[query]),
            willingness_to_pay=self.wtp,
            now_s=now,
        )
        self.in_flight[query] = PendingDecision.begin(
            self.policy, decision.model, decision.chosen_service_s, self.contexts[query], now
        )
        return self.columns[decision.index]

    def finished(
        self, query: int, model: int, waiting_s: float, service_s: float, now: float
    ) -> None:
        name = self.names[self.by_column[model]]
        # The service time (first token + generation), not the queue wait: the policy
        # predicts the wait itself from requests in flight and service times.
        self.in_flight.pop(query).end(self.policy, service_s, now)
        if self.feedback == "none":
            return
        quality = float(self.stream.quality[query, model])
        tokens = float(self.output_tokens[query, model])
        if self.feedback == "refined":
            self.policy.update(name, self.contexts[query], quality=quality, output_tokens=tokens)
            return
        satisfied = (
            quality > self.config.satisfied_quality and waiting_s < self.config.satisfied_wait_s
        )
        self.policy.update(
            name,
            self.contexts[query],
            quality=1.0 if satisfied else 0.0,
            output_tokens=tokens,
            weight=self.binary_weight,
        )


@dataclass
class PolicyRouter:
    """A fitted Policy deciding on live state; each run starts from a copy of it.

    ``columns`` maps the policy's models (in its order) to the stream's columns.
    """

    name: str
    policy: Policy
    contexts: F64
    prompt_tokens: F64
    output_tokens: F64
    columns: list[int]
    servers: Sequence[ServerProfile]
    config: StreamConfig
    feedback: FeedbackMode = "refined"
    binary_weight: float = 0.5
    sweeps: bool = True

    def run(self, stream: Stream, willingness_to_pay: float) -> SimulationResult:
        policy = Policy.from_bytes(self.policy.to_bytes())
        listener = _PolicyListener(
            policy,
            self.contexts,
            self.prompt_tokens,
            self.output_tokens,
            stream,
            self.columns,
            willingness_to_pay,
            self.feedback,
            self.config,
            self.binary_weight,
        )
        return simulate(stream, listener, self.servers)


def ridge_predict(x_train: F64, y_train: F64, x_test: F64, alpha: float = 1.0) -> F64:
    """Ridge regression (with an intercept column appended) of every column of ``y_train``."""
    ones_train = np.column_stack([x_train, np.ones(len(x_train))])
    ones_test = np.column_stack([x_test, np.ones(len(x_test))])
    prediction: F64 = ones_test @ fit_ridge(ones_train, y_train, alpha)
    return prediction


def knn_quality(
    train: F64, quality: F64, test: F64, k: int = 40, *, exclude_self: bool = False
) -> F64:
    """RouterBench's KNN router: each model's mean quality over the ``k`` training queries
    nearest by cosine (the vectors are L2-normalised sentence embeddings). With fewer
    training queries than ``k`` (besides the query itself, with ``exclude_self``), all of
    them."""
    available = len(train) - int(exclude_self)
    if available < 1:
        raise InvalidInputError("KNN needs at least one training query besides the query itself")
    k = min(k, available)
    a = train / np.maximum(np.linalg.norm(train, axis=1, keepdims=True), 1e-12)
    b = test / np.maximum(np.linalg.norm(test, axis=1, keepdims=True), 1e-12)
    similarity = b @ a.T
    if exclude_self:
        np.fill_diagonal(similarity, -np.inf)
    # kth = k keeps the partition (and so the ties among identical vectors) of every k below
    # the row count; k equal to it takes every row.
    nearest = np.argpartition(-similarity, min(k, len(train) - 1), axis=1)[:, :k]
    predicted: F64 = quality[nearest].mean(axis=1)
    return predicted


def mlp_quality(train: F64, quality: F64, test: F64, seed: int = 0) -> F64:
    """RouterBench's MLP router: a small multilayer perceptron (one hidden layer of 100 ReLU
    units, scikit-learn's ``MLPRegressor``) predicting every model's quality at once."""
    from sklearn.neural_network import MLPRegressor  # type: ignore[import-untyped]

    model = MLPRegressor(
        hidden_layer_sizes=(100,),
        alpha=1e-3,
        max_iter=300,
        early_stopping=True,
        random_state=seed,
    )
    model.fit(train, quality)
    predicted: F64 = np.asarray(model.predict(test), dtype=np.float64)
    return predicted
