"""The cost of a call, as the Python layer computes it (`mixllm.cost`), is what the decision
core predicts with the same prices and lengths."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import mixllm
from mixllm.cost import call_cost_usd

prices = st.floats(min_value=0.0, max_value=1e3)


@settings(max_examples=50, deadline=None)
@given(price_in=prices, price_out=prices, fee=st.floats(0.0, 1.0), prompt=st.floats(0.0, 1e5))
def test_the_core_predicts_the_cost_this_formula_gives(
    price_in: float, price_out: float, fee: float, prompt: float
) -> None:
    policy = mixllm.Policy(5)
    policy.add_model(
        "m",
        price_in=price_in,
        price_out=price_out,
        fee=fee,
        ttft_s=0.1,
        tokens_per_s=50,
        concurrency=4,
    )
    x = np.array([0.1, -0.2, 0.3, 0.0, 1.0])
    decision = policy.decide(x, prompt_tokens=prompt, willingness_to_pay=1.0, now_s=0.0)
    expected = call_cost_usd(prompt, float(decision.output_tokens[0]), price_in, price_out, fee)
    np.testing.assert_allclose(decision.cost[0], expected, rtol=1e-12, atol=1e-15)


def test_numbers_and_arrays_alike() -> None:
    tokens = np.array([100.0, 2000.0])
    out = np.array([50.0, 10.0])
    costs = call_cost_usd(tokens, out, 2.5, 10.0, 0.001)
    assert costs.tolist() == [
        call_cost_usd(t, o, 2.5, 10.0, 0.001) for t, o in zip(tokens, out, strict=True)
    ]
    assert call_cost_usd(1e6, 0.0, 3.0, 0.0) == 3.0
