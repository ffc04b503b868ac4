"""Prices learned from logged costs: what a pool's models charge, when nobody wrote it down.

A log that records each call's dollar cost and its token counts says what the model charges:
``cost = (prompt_tokens * price_in + output_tokens * price_out) / 1e6``. `learn_prices` fits
the two prices per model by non-negative least squares over the rows where both are observed.
Without output tokens, the output side is priced at the model's prior answer length (what the
router predicts for it until it sees lengths), so the predicted cost per query still matches
the log on average.

`implied_prices` is the plain least-squares fit (prices may come out negative), which
`docs/model-catalog.md` uses to compare list prices with what a log implies.

The prices are in the data's token units: counted with the embedder's tokenizer when the data
gave no counts (``RoutingDataset.tokens_counted``), which is also what the router counts at
routing time, so the two agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mixllm._core import InvalidInputError
from mixllm.config import ModelConfig
from mixllm.cost import TOKENS_PER_PRICE_UNIT
from mixllm.data import RoutingDataset

__all__ = ["LearnedPrice", "implied_prices", "learn_prices", "priced_pool"]

# The fewest logged costs a price is learned from.
MIN_PRICED_ROWS = 2


@dataclass(frozen=True)
class LearnedPrice:
    """A model's prices in USD per million tokens, learned from ``rows`` logged costs.

    ``relative_error`` is the mean absolute error of the fitted cost per call over the rows,
    divided by their mean cost: near 0 when the log follows a per-token price list.
    ``from_output_tokens`` is False when the data had no output tokens for the model and
    ``price_out`` prices its prior answer length instead.
    """

    model: str
    price_in: float
    price_out: float
    rows: int
    relative_error: float
    from_output_tokens: bool


def _nonnegative_least_squares(
    design: NDArray[np.float64], target: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Argmin ||design @ x - target|| over x >= 0 for two columns: the unconstrained solution
    when it is non-negative, else the better of the two one-column fits (the optimum of a
    two-variable problem lies on a face of the orthant)."""
    solution = np.linalg.lstsq(design, target, rcond=None)[0]
    if (solution >= 0).all():
        return np.asarray(solution, dtype=np.float64)
    best = np.zeros(design.shape[1])
    best_error = float(np.sum(target**2))
    for column in range(design.shape[1]):
        x = design[:, column]
        norm = float(x @ x)
        if norm == 0.0:
            continue
        value = max(float(x @ target) / norm, 0.0)
        error = float(np.sum((target - value * x) ** 2))
        if error < best_error:
            best = np.zeros(design.shape[1])
            best[column] = value
            best_error = error
    return best


def learn_prices(
    dataset: RoutingDataset, *, prior_output_tokens: float = ModelConfig.prior_output_tokens
) -> dict[str, LearnedPrice]:
    """Per model with at least `MIN_PRICED_ROWS` logged costs, its learned prices (see the
    module's description). Models without enough logged costs are left out."""
    learned: dict[str, LearnedPrice] = {}
    for k, model in enumerate(dataset.models):
        cost = dataset.cost_usd[:, k]
        output = None if dataset.output_tokens is None else dataset.output_tokens[:, k]
        with_output = ~np.isnan(cost)
        if output is not None:
            with_output &= ~np.isnan(output)
        if output is not None and with_output.sum() >= MIN_PRICED_ROWS:
            rows = with_output
            outputs = output[rows]
            from_output = True
        else:
            rows = ~np.isnan(cost)
            outputs = np.full(int(rows.sum()), prior_output_tokens)
            from_output = False
        if rows.sum() < MIN_PRICED_ROWS:
            continue
        design = np.column_stack([dataset.prompt_tokens[rows], outputs]) / TOKENS_PER_PRICE_UNIT
        observed = cost[rows]
        price_in, price_out = _nonnegative_least_squares(design, observed)
        fitted = design @ np.array([price_in, price_out])
        mean_cost = float(observed.mean())
        error = float(np.abs(fitted - observed).mean())
        learned[model] = LearnedPrice(
            model=model,
            price_in=float(price_in),
            price_out=float(price_out),
            rows=int(rows.sum()),
            relative_error=error / mean_cost if mean_cost > 0 else 0.0,
            from_output_tokens=from_output,
        )
    return learned


def priced_pool(
    dataset: RoutingDataset, *, prior_output_tokens: float = ModelConfig.prior_output_tokens
) -> tuple[tuple[ModelConfig, ...], dict[str, LearnedPrice]]:
    """The data's models as a pool, each at prices learned from its logged costs and the
    default serving speeds (`mixllm.config.DEFAULT_TTFT_S` and the others), with the learned
    prices. Raises `InvalidInputError` naming every model whose costs the data does not log."""
    learned = learn_prices(dataset, prior_output_tokens=prior_output_tokens)
    unpriced = [name for name in dataset.models if name not in learned]
    if unpriced:
        raise InvalidInputError(
            f"the data logs fewer than {MIN_PRICED_ROWS} costs (cost_usd) for "
            f"{', '.join(unpriced)}, so no price can be learned: give the pool's prices in a "
            "configuration file ([[models]] with price_in and price_out)"
        )
    pool = tuple(
        ModelConfig(
            name,
            learned[name].price_in,
            learned[name].price_out,
            prior_output_tokens=prior_output_tokens,
        )
        for name in dataset.models
    )
    return pool, learned


def implied_prices(dataset: RoutingDataset) -> Mapping[str, tuple[float, float]]:
    """Per model, the (input, output) prices in USD per million tokens that best explain the
    dataset's costs: least squares of ``cost_usd`` on ``prompt_tokens`` and ``output_tokens``
    without intercept, over the rows where the model's cost and output tokens are observed.

    The prices are in the dataset's token units: with ``tokens_counted`` they are per million
    MiniLM tokens, which is how far a list price applied to MiniLM counts is off.
    """
    if dataset.output_tokens is None:
        raise InvalidInputError("implied prices need output_tokens in the dataset")
    fitted: dict[str, tuple[float, float]] = {}
    for k, model in enumerate(dataset.models):
        cost = dataset.cost_usd[:, k]
        output = dataset.output_tokens[:, k]
        rows = ~np.isnan(cost) & ~np.isnan(output)
        if rows.sum() < MIN_PRICED_ROWS:
            continue
        design = np.column_stack([dataset.prompt_tokens[rows], output[rows]])
        solution = np.linalg.lstsq(design, cost[rows] * TOKENS_PER_PRICE_UNIT, rcond=None)[0]
        fitted[model] = (float(solution[0]), float(solution[1]))
    return fitted
