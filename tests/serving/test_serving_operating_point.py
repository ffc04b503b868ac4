"""The per-request operating point over real HTTP: a willingness to pay given as the model's
suffix, a header or the body's ``mixllm`` field moves the choice between a cheap model and a
dear, better one; and when more than one is given, the body's field wins over the header, and
either over the suffix."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from gateway_harness import Harness, running_gateway

USER = [{"role": "user", "content": "Prove that there are infinitely many primes."}]
# "large" is a thousand times dearer and predicted much better: the price of quality decides.
DEAR_AND_BETTER = {
    "small": {"prior_quality": 0.2},
    "large": {"prior_quality": 0.9, "price_in": 1000.0, "price_out": 1000.0},
}
STINGY, LAVISH = "1e-9", "1e9"
CHOICE = {STINGY: "small", LAVISH: "large"}


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    with running_gateway(model_changes=DEAR_AND_BETTER) as running:
        yield running


def chosen(harness: Harness, model: str = "mixllm", **how: Any) -> str:
    client = openai.OpenAI(base_url=harness.url + "/v1", api_key="unused", max_retries=0)
    return client.chat.completions.create(model=model, messages=USER, **how).model


def by_suffix(wtp: str) -> dict[str, Any]:
    return {"model": f"mixllm:{wtp}"}


def by_header(wtp: str) -> dict[str, Any]:
    return {"extra_headers": {"x-mixllm-willingness-to-pay": wtp}}


def by_body(wtp: str) -> dict[str, Any]:
    return {"extra_body": {"mixllm": {"willingness_to_pay": float(wtp)}}}


@pytest.mark.parametrize("given", [by_suffix, by_header, by_body])
@pytest.mark.parametrize("wtp", [STINGY, LAVISH])
def test_the_willingness_to_pay_moves_the_choice(harness: Harness, given: Any, wtp: str) -> None:
    assert chosen(harness, **given(wtp)) == CHOICE[wtp]


@pytest.mark.parametrize(
    ("losing", "winning"),
    [(by_suffix, by_header), (by_suffix, by_body), (by_header, by_body)],
)
@pytest.mark.parametrize("wtp", [STINGY, LAVISH])
def test_the_more_explicit_value_wins(
    harness: Harness, losing: Any, winning: Any, wtp: str
) -> None:
    other = LAVISH if wtp == STINGY else STINGY
    assert chosen(harness, **{**losing(other), **winning(wtp)}) == CHOICE[wtp]
