"""What one call costs under a per-token price list, written once for the Python layer.

Prices are in USD per million tokens, plus a fixed fee per call. The decision core computes
the same formula in Rust (`rust/mixllm-core/src/profile.rs`) for its predicted costs.
"""

from __future__ import annotations

from typing import overload

import numpy as np
from numpy.typing import NDArray

__all__ = ["TOKENS_PER_PRICE_UNIT", "call_cost_usd"]

# Prices are quoted per this many tokens.
TOKENS_PER_PRICE_UNIT = 1e6


@overload
def call_cost_usd(
    prompt_tokens: float,
    output_tokens: float,
    price_in: float,
    price_out: float,
    fee: float = 0.0,
) -> float: ...


@overload
def call_cost_usd(
    prompt_tokens: NDArray[np.float64],
    output_tokens: NDArray[np.float64],
    price_in: float,
    price_out: float,
    fee: float = 0.0,
) -> NDArray[np.float64]: ...


def call_cost_usd(
    prompt_tokens: float | NDArray[np.float64],
    output_tokens: float | NDArray[np.float64],
    price_in: float,
    price_out: float,
    fee: float = 0.0,
) -> float | NDArray[np.float64]:
    """USD for calls of ``prompt_tokens`` in and ``output_tokens`` out (numbers or arrays)."""
    return (prompt_tokens * price_in + output_tokens * price_out) / TOKENS_PER_PRICE_UNIT + fee
