"""Router.fit chooses its ridges by k-fold cross-validation on the rows it is given, reports
the choice with every fold's score, and keeps the values a user pinned."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from mixllm.config import ModelConfig, RouterConfig, load_config
from mixllm.data import RoutingDataset
from mixllm.routing.router import Router
from mixllm.routing.tuning import RIDGES, choose_ridge, fold_ids


def contexts(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.column_stack([x, np.ones(n)])


def test_fold_scores_are_those_of_exact_ridge_fits() -> None:
    x = contexts(40, 4)
    rng = np.random.default_rng(1)
    target = x @ rng.standard_normal(5) + 0.1 * rng.standard_normal(40)
    target[[3, 7]] = np.nan  # unobserved outcomes are left out
    choice = choose_ridge("ridge", x, [target], candidates=(0.5, 5.0), folds=4)
    folds = fold_ids(40, 4)
    for ridge in (0.5, 5.0):
        for fold in range(4):
            train = (folds != fold) & ~np.isnan(target)
            held = (folds == fold) & ~np.isnan(target)
            theta = np.linalg.solve(
                x[train].T @ x[train] + ridge * np.eye(5), x[train].T @ target[train]
            )
            mse = float(np.mean((x[held] @ theta - target[held]) ** 2))
            assert choice.fold_scores[ridge][fold] == pytest.approx(mse, rel=1e-9)


def test_noise_asks_for_a_strong_ridge_and_signal_for_a_weak_one() -> None:
    x = contexts(400, 16)
    rng = np.random.default_rng(2)
    signal = x @ rng.standard_normal(17)
    clean = choose_ridge("ridge", x, [signal + 0.01 * rng.standard_normal(400)])
    noisy = choose_ridge("ridge", x, [0.01 * signal + rng.standard_normal(400)])
    assert clean.chosen == min(RIDGES)
    assert noisy.chosen >= 100.0
    assert set(noisy.mean_scores) == set(RIDGES)
    assert all(len(scores) == 5 for scores in noisy.fold_scores.values())


def dataset(n: int = 60) -> RoutingDataset:
    """Two models whose quality is noise around their means: a strong ridge predicts best."""
    rng = np.random.default_rng(3)
    quality = np.column_stack([rng.random(n) < 0.8, rng.random(n) < 0.3]).astype(float)
    return RoutingDataset(
        prompts=[f"question number {i} about {'maths' if i % 2 else 'poems'}" for i in range(n)],
        models=["a", "b"],
        quality=quality,
        cost_usd=np.full((n, 2), 1e-4),
        prompt_tokens=np.full(n, 10.0),
        output_tokens=rng.integers(5, 500, (n, 2)).astype(float),
        latency_s=None,
        labels=["maths" if i % 2 else "poems" for i in range(n)],
        split=None,
        ids=[str(i) for i in range(n)],
    )


POOL = (ModelConfig("a", 1.0, 1.0), ModelConfig("b", 0.1, 0.1))


def test_fit_chooses_the_ridges_and_reports_them(tmp_path: Path) -> None:
    router = Router(RouterConfig(models=POOL, dim=8))
    assert router.config.ridge == 1.0  # until a fit chooses
    report = router.fit(dataset())
    chosen = {choice.knob: choice.chosen for choice in report.tuning}
    assert set(chosen) == {"ridge", "length_ridge"}
    assert router.config.ridge == chosen["ridge"] == router.policy.ridge
    assert router.config.length_ridge == chosen["length_ridge"] == router.policy.length_ridge
    assert chosen["ridge"] > 1.0  # noise around the means: shrink hard
    back = Router.load(router.save(tmp_path / "state").parent)
    assert (back.config.ridge, back.config.length_ridge) == (
        chosen["ridge"],
        chosen["length_ridge"],
    )
    # Fitted again on other rows, it chooses again.
    again = router.fit(dataset(30))
    assert {c.knob for c in again.tuning} == {"ridge", "length_ridge"}


def test_fit_keeps_a_pinned_ridge(tmp_path: Path) -> None:
    router = Router(RouterConfig(models=POOL, dim=8, ridge=0.5))
    report = router.fit(dataset())
    assert [c.knob for c in report.tuning] == ["length_ridge"]
    assert router.config.ridge == 0.5 == router.policy.ridge
    config_file = tmp_path / "pool.toml"
    config_file.write_text(
        '[router]\nlength_ridge = 2.0\n\n[[models]]\nname = "a"\nprice_in = 1.0\nprice_out = 1.0\n',
        encoding="utf-8",
    )
    pinned = load_config(config_file)
    assert pinned.ridge is None and pinned.length_ridge == 2.0
    assert "ridge" not in pinned.to_dict()["router"]


def test_too_few_rows_keep_the_defaults() -> None:
    router = Router(RouterConfig(models=POOL, dim=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = router.fit(dataset(6))
    assert report.tuning == ()
    assert router.config.ridge == 1.0


def test_train_prints_the_choice_and_the_fold_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mixllm.cli import main
    from mixllm.data import save_jsonl

    save_jsonl(dataset(), tmp_path / "d.jsonl")
    assert main(["train", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "s")]) == 0
    printed = capsys.readouterr().out
    assert "ridge: " in printed and "chosen by 5-fold cross-validation" in printed
    assert "per fold" in printed and "candidates: 0.1: " in printed
    saved = json.loads(next((tmp_path / "s").glob("state-*/config.json")).read_text())
    assert saved["router"]["ridge"] == Router.load(tmp_path / "s").config.ridge
