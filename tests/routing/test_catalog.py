"""mixllm.routing.catalog: the RouterBench model pool, its Policy profiles and its prices checked
against the costs in the local RouterBench subset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import mixllm
from mixllm import config
from mixllm.data import RoutingDataset
from mixllm.routing import catalog, pricing
from mixllm.routing.catalog import ROUTERBENCH_MODELS, ModelSpec

# Implied price / list price must fall in this band. On the subset, counted with MiniLM's
# tokenizer, input prices come out at 1.05x for every model and output prices at 0.90-0.95x
# (WordPiece splits code at every punctuation mark, so MBPP answers count more tokens than
# they were billed for). 15% leaves room for that tokenizer gap and nothing more: a list price
# a fifth off, or the input and output prices swapped, fails.
PRICE_BAND = (0.85, 1.15)


def test_catalog_names_match_the_data_columns(routerbench: RoutingDataset) -> None:
    assert catalog.names() == routerbench.models
    assert len(ROUTERBENCH_MODELS) == 11


def test_every_entry_has_sources_and_sane_values() -> None:
    for spec in ROUTERBENCH_MODELS:
        assert spec.price_source and spec.latency_source
        assert 0 < spec.price_in <= spec.price_out <= 30
        assert spec.fee == 0.0
        assert 0 < spec.ttft_s < 5 and 5 < spec.tokens_per_s < 500
        assert spec.concurrency == config.DEFAULT_CONCURRENCY


def test_list_prices_agree_with_the_costs_in_the_data(routerbench: RoutingDataset) -> None:
    implied = pricing.implied_prices(routerbench)
    low, high = PRICE_BAND
    for spec in ROUTERBENCH_MODELS:
        price_in, price_out = implied[spec.name]
        assert low < price_in / spec.price_in < high, spec.name
        assert low < price_out / spec.price_out < high, spec.name


def test_list_prices_reproduce_total_cost_per_model(routerbench: RoutingDataset) -> None:
    assert routerbench.output_tokens is not None
    for k, model in enumerate(routerbench.models):
        spec = catalog.by_name(model)
        predicted = (
            routerbench.prompt_tokens * spec.price_in
            + routerbench.output_tokens[:, k] * spec.price_out
        ) / 1e6
        actual = routerbench.cost_usd[:, k]
        assert actual.sum() / predicted.sum() == pytest.approx(1.03, abs=0.03), model
        r2 = 1 - ((actual - predicted) ** 2).sum() / ((actual - actual.mean()) ** 2).sum()
        assert r2 > 0.9, model


def test_add_to_policy_uses_the_catalog_profiles() -> None:
    policy = mixllm.Policy(4)
    catalog.add_to(policy)
    assert policy.models == catalog.names()
    gpt4 = policy.profile("gpt-4-1106-preview")
    assert gpt4["price_in"] == 10.0 and gpt4["price_out"] == 30.0
    assert gpt4["tokens_per_s"] == catalog.by_name("gpt-4-1106-preview").tokens_per_s
    assert gpt4["concurrency"] == config.DEFAULT_CONCURRENCY


def test_add_to_subsets_overrides_and_duplicates() -> None:
    policy = mixllm.Policy(4)
    catalog.add_to(policy, ["claude-v2", "mistralai/mistral-7b-chat"], concurrency=32)
    assert policy.models == ["claude-v2", "mistralai/mistral-7b-chat"]
    assert policy.profile("claude-v2")["concurrency"] == 32
    with pytest.raises(mixllm.DuplicateModelError, match="nothing was added"):
        catalog.add_to(policy)
    assert len(policy) == 2
    with pytest.raises(mixllm.UnknownModelError, match="gpt-5"):
        catalog.add_to(policy, ["gpt-5"])


def test_spec_validation_and_cost() -> None:
    spec = ModelSpec("m", price_in=2.0, price_out=6.0, ttft_s=0.5, tokens_per_s=50.0, fee=0.01)
    assert spec.cost_usd(1000, 500) == pytest.approx(0.002 + 0.003 + 0.01)
    with pytest.raises(mixllm.InvalidInputError, match="price_in"):
        ModelSpec("m", price_in=-1.0, price_out=1.0, ttft_s=0.5, tokens_per_s=50.0)
    with pytest.raises(mixllm.InvalidInputError, match="tokens_per_s"):
        ModelSpec("m", price_in=1.0, price_out=1.0, ttft_s=0.5, tokens_per_s=0.0)
    with pytest.raises(mixllm.InvalidInputError, match="concurrency"):
        ModelSpec("m", price_in=1.0, price_out=1.0, ttft_s=0.5, tokens_per_s=1.0, concurrency=0)


def test_prices_feed_jsonl_cost_estimates(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text(
        '{"id": "a", "query": "q", "prompt_tokens": 1000, '
        '"outcomes": {"gpt-4-1106-preview": {"quality": 1, "output_tokens": 100}}}\n'
    )
    ds = mixllm.load_jsonl(path, prices=catalog.prices())
    assert ds.cost_usd[0, 0] == pytest.approx((1000 * 10 + 100 * 30) / 1e6)


def test_implied_prices_recover_exact_prices() -> None:
    rng = np.random.default_rng(0)
    prompt, output = rng.uniform(10, 500, 50), rng.uniform(1, 300, (50, 1))
    ds = RoutingDataset(
        prompts=["q"] * 50,
        models=["m"],
        quality=np.ones((50, 1)),
        cost_usd=(prompt[:, None] * 3.0 + output * 7.0) / 1e6,
        prompt_tokens=prompt,
        output_tokens=output,
        latency_s=None,
        labels=None,
        split=None,
        ids=[str(i) for i in range(50)],
    )
    assert pricing.implied_prices(ds)["m"] == pytest.approx((3.0, 7.0))
