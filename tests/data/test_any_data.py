"""The router on data nobody tuned it for: a user's own pool in JSON Lines, without labels,
latencies or prices, trained with no configuration, then loaded and routed."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mixllm
from mixllm.cli import main
from mixllm.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_TOKENS_PER_S,
    DEFAULT_TTFT_S,
    ModelConfig,
    RouterConfig,
    load_config,
)
from mixllm.data import count_tokens, load_jsonl
from mixllm.routing.pricing import learn_prices, priced_pool
from mixllm.routing.router import Router

# The user's own pool: names no catalog knows, prices per million tokens.
PRICES = {"gpt-4o-mini": (0.15, 0.6), "claude-3-5-sonnet": (3.0, 15.0)}
TOPICS = (
    "Write a Python function that {} a list of integers.",
    "What is the capital city of the country famous for {}?",
)
WORDS = ("sorts", "reverses", "sums", "filters", "tulips", "pyramids", "fjords", "maple syrup")


def own_rows(n: int = 24, *, responses: bool = True) -> list[dict[str, Any]]:
    """Rows of a user's log: no labels, no latencies, costs per call, the answers' text (or
    their token counts). The cheap model fails the coding questions, the dear one never does."""
    rows = []
    for i in range(n):
        topic = i % 2
        query = TOPICS[topic].format(WORDS[i % len(WORDS)]) + f" Case {i}."
        outcomes = {}
        for model, (price_in, price_out) in PRICES.items():
            length = 5 + 3 * (i % 4) + (20 if model.startswith("claude") else 0)
            answer = " ".join(["word"] * length)
            tokens = len(answer.split())
            prompt = 20 + i
            outcome: dict[str, Any] = {
                "quality": 1.0 if (model.startswith("claude") or topic == 1) else 0.0,
                "cost_usd": (prompt * price_in + tokens * price_out) / 1e6,
            }
            if responses:
                outcome["response"] = answer
            else:
                outcome["output_tokens"] = tokens
            outcomes[model] = outcome
        rows.append({"id": f"q{i}", "query": query, "prompt_tokens": 20 + i, "outcomes": outcomes})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- configuration: no latencies needed, τ can be off -------------------------------------------


def test_a_model_needs_no_speeds_and_tau_can_be_off(tmp_path: Path) -> None:
    config_file = tmp_path / "pool.toml"
    config_file.write_text(
        '[router]\ntau_s = inf\n\n[[models]]\nname = "mine"\nprice_in = 1.0\nprice_out = 2.0\n',
        encoding="utf-8",
    )
    config = load_config(config_file)
    model = config.models[0]
    assert (model.ttft_s, model.tokens_per_s, model.concurrency) == (
        DEFAULT_TTFT_S,
        DEFAULT_TOKENS_PER_S,
        DEFAULT_CONCURRENCY,
    )
    assert math.isinf(config.tau_s)
    # The decision core runs with a finite stand-in that never excludes nor penalises.
    policy = config.new_policy()
    assert math.isfinite(policy.tau_s) and policy.tau_s > 1e9


def test_a_router_with_tau_off_never_calls_a_slow_model_too_slow(tmp_path: Path) -> None:
    slow = ModelConfig("slow", 0.0, 0.0, ttft_s=1e4, tokens_per_s=0.001, concurrency=1)
    config = RouterConfig(models=(slow,), tau_s=math.inf, dim=4)
    ds = load_jsonl(write_jsonl(tmp_path / "d.jsonl", own_rows(6, responses=False)))
    router = Router(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mixllm.UnusedDataWarning)
        router.fit(ds)
    decision = router.route("Write a Python function that sorts a list.")
    row = decision.explain()["slow"]
    assert row["excluded"] is False
    assert row["penalty"] < 1e-6
    # Saved and loaded, τ stays off.
    back = Router.load(router.save(tmp_path / "state").parent)
    assert math.isinf(back.config.tau_s)


# --- data: response texts count as output tokens -----------------------------------------------


def test_outcomes_may_carry_response_text_whose_tokens_are_counted(tmp_path: Path) -> None:
    rows = own_rows(4)
    # One outcome gives its own count as well: the count given wins.
    rows[0]["outcomes"]["gpt-4o-mini"]["output_tokens"] = 3
    ds = load_jsonl(write_jsonl(tmp_path / "r.jsonl", rows))
    assert ds.output_tokens_counted and not ds.tokens_counted
    assert ds.output_tokens is not None
    k = ds.models.index("claude-3-5-sonnet")
    expected = count_tokens([r["outcomes"]["claude-3-5-sonnet"]["response"] for r in rows])
    np.testing.assert_array_equal(ds.output_tokens[:, k], expected)
    assert ds.output_tokens[0, ds.models.index("gpt-4o-mini")] == 3.0

    given = load_jsonl(write_jsonl(tmp_path / "t.jsonl", own_rows(4, responses=False)))
    assert not given.output_tokens_counted


def test_a_response_that_is_not_text_is_refused_naming_it(tmp_path: Path) -> None:
    rows = own_rows(2)
    rows[1]["outcomes"]["gpt-4o-mini"]["response"] = 42
    with pytest.raises(mixllm.InvalidInputError, match=r"line 2: .*gpt-4o-mini\.response"):
        load_jsonl(write_jsonl(tmp_path / "bad.jsonl", rows))


# --- prices learned from logged costs -----------------------------------------------------------


def test_prices_are_learned_from_logged_costs_and_token_counts(tmp_path: Path) -> None:
    ds = load_jsonl(write_jsonl(tmp_path / "p.jsonl", own_rows(12, responses=False)))
    learned = learn_prices(ds)
    for model, (price_in, price_out) in PRICES.items():
        assert learned[model].price_in == pytest.approx(price_in, rel=1e-6)
        assert learned[model].price_out == pytest.approx(price_out, rel=1e-6)
        assert learned[model].rows == 12 and learned[model].relative_error < 1e-9
        assert learned[model].from_output_tokens


def test_prices_never_go_negative() -> None:
    # Costs that fall as prompts grow: the best non-negative fit prices the prompt at 0.
    n = 8
    prompt = np.arange(1.0, n + 1) * 100
    output = np.full(n, 50.0)
    cost = (1000 - prompt) * 1e-6
    ds = mixllm.RoutingDataset(
        prompts=[f"p{i}" for i in range(n)],
        models=["m"],
        quality=np.ones((n, 1)),
        cost_usd=cost[:, None],
        prompt_tokens=prompt,
        output_tokens=output[:, None],
        latency_s=None,
        labels=None,
        split=None,
        ids=[str(i) for i in range(n)],
    )
    price = learn_prices(ds)["m"]
    assert price.price_in == 0.0 and price.price_out > 0.0


def test_a_model_without_logged_costs_cannot_be_priced(tmp_path: Path) -> None:
    rows = own_rows(4)
    for row in rows:
        del row["outcomes"]["claude-3-5-sonnet"]["cost_usd"]
    ds = load_jsonl(write_jsonl(tmp_path / "c.jsonl", rows))
    with pytest.raises(mixllm.InvalidInputError, match="claude-3-5-sonnet") as err:
        priced_pool(ds)
    assert "gpt-4o-mini" not in str(err.value)


# --- the pool: the data's models, none dropped silently ------------------------------------------


def test_fit_warns_naming_the_data_models_it_ignores(tmp_path: Path) -> None:
    ds = load_jsonl(write_jsonl(tmp_path / "w.jsonl", own_rows(6)))
    config = RouterConfig(models=(ModelConfig("gpt-4o-mini", 0.15, 0.6),), dim=4)
    with pytest.warns(mixllm.UnusedDataWarning, match="claude-3-5-sonnet"):
        report = Router(config).fit(ds)
    assert report.models_not_in_pool == ("claude-3-5-sonnet",)
    assert report.output_tokens_counted and not report.tokens_counted


def test_train_without_a_config_routes_among_the_data_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_jsonl(tmp_path / "own.jsonl", own_rows())
    rows = own_rows()
    for row in rows:
        del row["prompt_tokens"]
    uncounted = write_jsonl(tmp_path / "uncounted.jsonl", rows)
    state = tmp_path / "state"
    assert main(["train", "--data", str(data), "--out", str(state)]) == 0
    printed = capsys.readouterr().out
    assert "output tokens: counted from the responses" in printed
    assert "prompt tokens" not in printed  # the data gave them
    assert "prices: learned from the data's logged costs" in printed
    assert "time constraint: off" in printed
    # No labels: the tag source says so, and whether the taxonomy or learned clusters serve.
    assert "the data has no labels" in printed
    assert "from zero-shot tagger (" in printed or "from learned clusters (" in printed
    for model in PRICES:
        assert f"  {model}: 24 outcomes" in printed

    router = Router.load(state)
    assert router.models == list(PRICES)
    assert math.isinf(router.config.tau_s)
    priced = {m.name: (m.price_in, m.price_out) for m in router.config.models}
    for model, prices in PRICES.items():
        assert priced[model] == pytest.approx(prices, rel=1e-6)
    assert router.route("Write a Python function that sorts a list.").model in PRICES

    assert main(["train", "--data", str(uncounted), "--out", str(tmp_path / "s2")]) == 0
    assert "prompt tokens: the data has none; counted" in capsys.readouterr().out


def test_train_says_which_data_models_a_config_leaves_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_jsonl(tmp_path / "own.jsonl", own_rows(8))
    config = tmp_path / "pool.toml"
    config.write_text(
        '[[models]]\nname = "gpt-4o-mini"\nprice_in = 0.15\nprice_out = 0.6\n', encoding="utf-8"
    )
    args = ["train", "--data", str(data), "--out", str(tmp_path / "s"), "--config", str(config)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "claude-3-5-sonnet: in the data but not in the configuration's pool, ignored" in printed

    # A file of settings alone: the data's pool, at learned prices, with the file's knobs.
    config.write_text("[router]\nridge = 3.0\n", encoding="utf-8")
    settings_only = ["train", "--data", str(data), "--out", str(tmp_path / "s2")]
    assert main([*settings_only, "--config", str(config)]) == 0
    router = Router.load(tmp_path / "s2")
    assert router.models == list(PRICES) and router.config.ridge == 3.0


def test_train_refuses_data_it_cannot_price_naming_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = own_rows(4)
    for row in rows:
        del row["outcomes"]["gpt-4o-mini"]["cost_usd"]
    data = write_jsonl(tmp_path / "own.jsonl", rows)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mixllm train: ") and "gpt-4o-mini" in err
    assert not (tmp_path / "s").exists()


# --- the evaluation on the user's data ---------------------------------------------------------


def test_the_reference_is_the_best_single_model_on_train(tmp_path: Path) -> None:
    from mixllm.evaluation.experiments import best_single_model

    ds = load_jsonl(write_jsonl(tmp_path / "own.jsonl", own_rows(8)))
    assert best_single_model(ds) == "claude-3-5-sonnet"
    # Equal quality: the cheaper one.
    tied = ds.only_models(["gpt-4o-mini"]).select([1, 3, 5])
    assert best_single_model(tied) == "gpt-4o-mini"


def test_eval_runs_on_a_pool_and_data_it_was_not_tuned_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No RouterBench model, no labels (the out-of-domain table has no rows), no latencies."""
    monkeypatch.setenv("MIXLLM_CACHE", str(tmp_path / "cache"))
    data = write_jsonl(tmp_path / "own.jsonl", own_rows(40))
    args = ["eval", "--data", str(data), "--quiet", "--resamples", "0"]
    args += ["--experiment", "frontier", "--experiment", "out-of-domain"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "% of claude-3-5-sonnet" in printed
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["reference_model"] == "claude-3-5-sonnet"
    assert results["out-of-domain"] == {}
    assert results["settings"]["embedder"]["quantized"] is False

    # The reference named: recorded as such (the label-less out-of-domain run is quick).
    args = ["eval", "--data", str(data), "--quiet", "--experiment", "out-of-domain"]
    chosen = [*args, "--out", str(tmp_path / "mini"), "--reference", "gpt-4o-mini"]
    assert main(chosen) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "mini" / "results.json").read_text())["reference_model"] == (
        "gpt-4o-mini"
    )
    assert main([*args, "--out", str(tmp_path / "bad"), "--reference", "gpt-4"]) == 1
    err = capsys.readouterr().err
    assert "'gpt-4' is not in the data" in err and "gpt-4o-mini" in err


def test_the_shipped_router_is_what_make_default_state_trains() -> None:
    """Without a file `mixllm train` would learn prices and turn τ off; the shipped router's
    pool and knobs are the file `make default-state` passes."""
    from mixllm.routing.catalog import ROUTERBENCH_MODELS

    file = load_config(Path(__file__).resolve().parents[2] / "configs" / "routerbench.toml")
    shipped = Router.default().config
    assert file.models == shipped.models
    assert file.models == tuple(spec.model_config() for spec in ROUTERBENCH_MODELS)
    for knob in ("ridge", "length_ridge", "tau_s", "willingness_to_pay", "dim", "alpha", "beta"):
        assert getattr(file, knob) == getattr(shipped, knob), knob


def test_train_shows_its_progress_unless_quiet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_jsonl(tmp_path / "own.jsonl", own_rows())
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "s")]) == 0
    shown = capsys.readouterr().err
    stages = [
        "embedding the prompts",
        "projection and domains",
        "choosing the ridges",
        "calibrating the operating points",
        "fitting every model's heads",
        "fitted",
    ]
    positions = [shown.find(stage) for stage in stages]
    assert -1 not in positions and positions == sorted(positions), shown
    assert f"{len(own_rows())}/{len(own_rows())} embedding the prompts" in shown
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "q"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
