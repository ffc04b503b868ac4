"""The operating point in the user's words: λ calibrated on held-out folds at fit time, kept
in the state, shown by `mixllm models`, taken by `route`, the CLI and the configuration."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import mixllm
from mixllm.cli import main
from mixllm.config import ModelConfig, RouterConfig, load_config
from mixllm.data import RoutingDataset, save_jsonl
from mixllm.routing.calibration import Calibration, CalibrationPoint, calibrate
from mixllm.routing.router import Router

TABLE = Calibration(
    reference="big",
    rows=100,
    folds=5,
    points=(
        CalibrationPoint(1e-6, 80.0, 5.0, 0.5),
        CalibrationPoint(1e-4, 92.0, 20.0, 2.0),
        CalibrationPoint(1e-2, 99.0, 60.0, 6.0),
        CalibrationPoint(math.inf, 101.0, 150.0, 15.0),
    ),
)


def test_a_target_picks_the_lambda_that_meets_it() -> None:
    assert TABLE.for_quality(90.0) == 1e-4
    assert TABLE.for_quality(99.0) == 1e-2
    assert TABLE.for_quality(120.0) == math.inf  # unreachable: the best there is
    assert TABLE.for_cost(25.0) == 1e-4
    assert TABLE.for_cost(1.0) == 1e-6  # below every point: the cheapest
    assert TABLE.for_budget(6.0) == 1e-2
    with pytest.raises(mixllm.InvalidInputError, match="quality_pct must be > 0"):
        TABLE.for_quality(-5.0)
    assert Calibration.from_dict(json.loads(json.dumps(TABLE.to_dict()))) == TABLE


def dataset(n: int = 80) -> RoutingDataset:
    """A cheap model right on the easy half, a dear one right everywhere."""
    easy = np.arange(n) % 2 == 0
    quality = np.column_stack([easy.astype(float), np.ones(n)])
    return RoutingDataset(
        prompts=[
            f"{'What is two plus two' if e else 'Prove the Riemann hypothesis'}, case {i}?"
            for i, e in enumerate(easy)
        ],
        models=["small", "big"],
        quality=quality,
        cost_usd=np.column_stack([np.full(n, 1e-5), np.full(n, 1e-3)]),
        prompt_tokens=np.full(n, 10.0),
        output_tokens=np.full((n, 2), 100.0),
        latency_s=None,
        labels=["easy" if e else "hard" for e in easy],
        split=None,
        ids=[str(i) for i in range(n)],
    )


POOL = (ModelConfig("small", 0.1, 0.1), ModelConfig("big", 1.0, 9.9))


@pytest.fixture(scope="module")
def fitted() -> Router:
    router = Router(RouterConfig(models=POOL, dim=8, tau_s=math.inf))
    report = router.fit(dataset())
    assert report.calibration is router.calibration is not None
    return router


def test_fit_calibrates_on_held_out_folds(fitted: Router) -> None:
    calibration = fitted.calibration
    assert calibration is not None
    assert (calibration.reference, calibration.rows, calibration.folds) == ("big", 80, 5)
    cheapest, dearest = calibration.points[0], calibration.points[-1]
    assert math.isinf(dearest.willingness_to_pay)
    # Cost ignored: full quality (the easy half may still go to either model).
    assert dearest.quality_pct == pytest.approx(100.0) and dearest.cost_pct <= 100.0
    assert cheapest.cost_pct < 5.0 and cheapest.quality_pct == pytest.approx(50.0)
    # Somewhere between, the easy half goes to the small model: full quality at about half
    # the cost.
    assert any(p.quality_pct >= 99.9 and p.cost_pct < 60.0 for p in calibration.points)


def with_a_model_without_data(data: RoutingDataset) -> RoutingDataset:
    """``data`` with a third model, "new", that holds no outcome on any row."""
    empty = np.full((len(data), 1), np.nan)
    assert data.output_tokens is not None
    return replace(
        data,
        models=[*data.models, "new"],
        quality=np.hstack([data.quality, empty]),
        cost_usd=np.hstack([data.cost_usd, empty]),
        output_tokens=np.hstack([data.output_tokens, empty]),
    )


def test_a_pool_model_without_data_is_left_out_of_the_calibration() -> None:
    data = dataset()
    config = RouterConfig(models=POOL, dim=8, tau_s=math.inf)
    contexts = np.random.default_rng(0).normal(size=(len(data), 8))
    wider = replace(config, models=(*POOL, ModelConfig("new", 0.01, 0.01)))
    with warnings.catch_warnings():
        # Not a mean of nothing ("Mean of empty slice") for the model without outcomes.
        warnings.simplefilter("error")
        table = calibrate(wider, contexts, with_a_model_without_data(data))
    # Never chosen for a held-out query it has no outcome for: the table is the pool's without it.
    assert table == calibrate(config, contexts, data)
    assert table.reference == "big"


def test_a_fit_with_a_model_without_data_warns_of_nothing_empty() -> None:
    pool = (*POOL, ModelConfig("new", 0.01, 0.01))
    router = Router(RouterConfig(models=pool, dim=8, tau_s=math.inf))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        report = router.fit(with_a_model_without_data(dataset()))
    assert report.models_without_data == ("new",)
    assert router.calibration is not None and router.calibration.reference == "big"


def test_route_takes_the_operating_point_in_either_form(fitted: Router) -> None:
    calibration = fitted.calibration
    assert calibration is not None
    decision = fitted.route("Prove the Riemann hypothesis, case 999?", target_quality_pct=99.0)
    assert decision.willingness_to_pay == calibration.for_quality(99.0)
    cheap = fitted.route("What is two plus two, case 999?", max_cost_pct=3.0)
    assert cheap.willingness_to_pay == calibration.for_cost(3.0) and cheap.model == "small"
    batch = fitted.route_batch(["What is two plus two?"], budget_per_1000_usd=0.01)
    assert batch[0].willingness_to_pay == calibration.for_budget(0.01)
    with pytest.raises(mixllm.InvalidInputError, match="willingness_to_pay, max_cost_pct"):
        fitted.route("hi", willingness_to_pay=0.1, max_cost_pct=3.0)
    # The configuration's operating point, and a new one replacing it.
    configured = fitted.with_config(target_quality_pct=99.0)
    assert configured.route("hi").willingness_to_pay == calibration.for_quality(99.0)
    assert configured.with_config(willingness_to_pay=0.2).route("hi").willingness_to_pay == 0.2


def test_a_router_without_calibration_says_so() -> None:
    router = Router(RouterConfig(models=POOL, dim=4))
    router.fit(dataset(6))  # too few rows to hold any out
    assert router.calibration is None
    with pytest.raises(mixllm.NotFittedError, match="target_quality_pct needs the calibration"):
        router.route("hi", target_quality_pct=95.0)
    # The shipped state predates calibration and loads without one.
    assert Router.default().calibration is None


def test_the_state_keeps_the_table(fitted: Router, tmp_path: Path) -> None:
    folder = fitted.save(tmp_path / "state")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "calibration.json" in manifest["files"]
    assert Router.load(tmp_path / "state").calibration == fitted.calibration
    (folder / "calibration.json").write_text("{}", encoding="utf-8")
    with pytest.raises(mixllm.StateFileError, match=r"calibration\.json"):
        Router.load(tmp_path / "state")


def test_the_configuration_takes_one_operating_point(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    models = '[[models]]\nname = "big"\nprice_in = 1.0\nprice_out = 1.0\n'
    path.write_text(f"[router]\nmax_cost_pct = 20\n\n{models}", encoding="utf-8")
    assert load_config(path).operating_point() == {"max_cost_pct": 20}
    path.write_text(
        f"[router]\nmax_cost_pct = 20\ntarget_quality_pct = 95\n\n{models}", encoding="utf-8"
    )
    with pytest.raises(mixllm.ConfigError, match="give one of target_quality_pct"):
        load_config(path)
    path.write_text(f"[router]\nbudget_per_1000_usd = 0\n\n{models}", encoding="utf-8")
    with pytest.raises(mixllm.ConfigError, match="budget_per_1000_usd must be > 0"):
        load_config(path)


def test_the_cli_shows_the_table_and_routes_to_a_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_jsonl(dataset(), tmp_path / "d.jsonl")
    state = str(tmp_path / "s")
    assert main(["train", "--data", str(tmp_path / "d.jsonl"), "--out", state]) == 0
    assert "operating points: calibrated on held-out folds, % of big" in capsys.readouterr().out
    assert main(["models", "--state", state]) == 0
    assert "operating points (held-out folds of 80 training queries; % of big)" in (
        capsys.readouterr().out
    )
    args = ["route", "Prove the Riemann hypothesis?", "--state", state, "--json"]
    assert main([*args, "--target-quality-pct", "99"]) == 0
    routed = json.loads(capsys.readouterr().out)
    assert routed["willingness_to_pay"] == Router.load(state).calibration.for_quality(99.0)
