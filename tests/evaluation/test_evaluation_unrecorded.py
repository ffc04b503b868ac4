"""``mixllm eval`` on data with outcomes it does not record (a model never answered a query):
every router, the baselines included, is scored, each missing cell as quality 0 at the model's
mean recorded cost."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mixllm.cli import main
from mixllm.data import RoutingDataset
from mixllm.evaluation import format_table
from mixllm.evaluation.unobserved import unobserved_count, with_unobserved_filled

pytest.importorskip("sklearn")

MODELS = ("cheap", "mid", "dear")


def test_unrecorded_cells_are_quality_zero_at_the_models_mean_cost() -> None:
    nan = np.nan
    dataset = RoutingDataset(
        prompts=["a", "b", "c"],
        models=["m", "n"],
        quality=[[1.0, nan], [0.5, 1.0], [0.0, 0.0]],
        cost_usd=[[1.0, nan], [2.0, 4.0], [3.0, 8.0]],
        prompt_tokens=[1.0, 1.0, 1.0],
        output_tokens=None,
        latency_s=None,
        labels=None,
        split=None,
        ids=["1", "2", "3"],
    )
    assert unobserved_count(dataset) == 1
    filled = with_unobserved_filled(dataset)
    np.testing.assert_array_equal(filled.quality, [[1.0, 0.0], [0.5, 1.0], [0.0, 0.0]])
    np.testing.assert_array_equal(filled.cost_usd, [[1.0, 6.0], [2.0, 4.0], [3.0, 8.0]])
    assert with_unobserved_filled(filled) is filled


def routing_file(path: Path, rows: int) -> Path:
    rng = np.random.default_rng(0)
    topics = ["arithmetic", "poetry", "history", "chemistry"]
    with path.open("w", encoding="utf-8") as handle:
        for i in range(rows):
            outcomes = {
                name: {
                    "quality": float(rng.random() * (k + 1) / 3),
                    "cost_usd": 1e-4 * 10**k,
                    "output_tokens": int(rng.integers(10, 200)),
                }
                for k, name in enumerate(MODELS)
            }
            if i == 3:
                del outcomes["mid"]  # a model that never answered this (train) query
            record = {
                "id": str(i),
                "query": f"A question about {topics[i % 4]}, number {i}?",
                "split": "test" if i % 4 == 0 else "train",
                "prompt_tokens": 12,
                "outcomes": outcomes,
            }
            handle.write(json.dumps(record) + "\n")
    return path


@pytest.mark.slow
def test_eval_scores_every_router_on_data_with_unrecorded_outcomes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("MIXLLM_CACHE", str(tmp_path / "cache"))
    data = routing_file(tmp_path / "routing.jsonl", 48)
    out = tmp_path / "out"
    args = ["eval", "--data", str(data), "--out", str(out), "--experiment", "frontier"]
    code = main([*args, "--resamples", "0", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0
    assert "1 outcome(s) not recorded in the data" in captured.err
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["unrecorded_outcomes"] == 1
    # Models the catalog does not know, with no --config: their speeds are placeholders.
    assert results["data"]["assumed_speeds"] == list(MODELS)
    assert "Speeds assumed for 3 of 3 models (cheap, mid, dear)" in format_table(results)
    routers = results["frontier"]["no_time_constraint"]["routers"]
    assert {"mixllm", "MLP", "oracle"} <= set(routers)
    for name in ("mixllm", "MLP", "oracle", *MODELS):
        points = routers[name]["points"]
        assert all(np.isfinite(p["quality_pct"]) and np.isfinite(p["cost_pct"]) for p in points)
