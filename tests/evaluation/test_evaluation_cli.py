"""``mixllm eval`` end to end on a small slice of the real RouterBench subset, and its message
when the hub cannot be reached."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from mixllm.cli import main
from mixllm.data import load_routerbench_csv, validation_split
from mixllm.evaluation.metrics import shortfall

ROWS_PER_FILE = 30

pytest.importorskip("matplotlib")


@pytest.fixture()
def data_slice(tmp_path: Path, routerbench_slice: Callable[[Path, int], Path]) -> Path:
    """The first rows of each CSV of the subset, copied at test time into a temp folder."""
    return routerbench_slice(tmp_path / "slice", ROWS_PER_FILE)


@pytest.mark.slow
def test_eval_writes_json_plots_and_html(
    data_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("MIXLLM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    code = main(["eval", "--data", str(data_slice), "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "mixllm" in printed and "AIQ" in printed
    results = json.loads((out / "results.json").read_text())
    for key in ("no_time_constraint", "time_constraint"):
        routers = results["frontier"][key]["routers"]
        assert {"mixllm", "oracle", "random", "MLP", "LinUCB raw 384-d"} <= set(routers)
        points = routers["mixllm"]["points"]
        assert len(points) > 10
        assert {"willingness_to_pay", "quality_pct", "cost_pct", "violations"} <= set(points[0])
        assert routers["oracle"]["aiq"] >= max(r["aiq"] for r in routers.values()) - 1e-9
        # Every baseline's shortfall (not mixllm's variants, not the oracle), as the metric
        # gives it, each stretch printed.
        shortfalls = results["frontier"][key]["mixllm_shortfall"]
        variants = {"mixllm", "mixllm β=0", "mixllm no tags (PCA)"}
        assert set(shortfalls) == set(routers) - variants - {"oracle"}
        mine = [(p["cost_pct"], p["quality_pct"]) for p in points]
        c_max = results["frontier"][key]["aiq_cost_range_pct"][1]
        for name, found in shortfalls.items():
            theirs = [(p["cost_pct"], p["quality_pct"]) for p in routers[name]["points"]]
            expected = shortfall(mine, theirs, c_max)
            # As the metric gives it, each stretch with its resampled gap beside it.
            assert {k: found[k] for k in ("from_pct", "to_pct")} == {
                k: expected[k] for k in ("from_pct", "to_pct")
            }
            assert found["cheapest_pct"] == min(c for c, _ in theirs)
            assert [
                {k: b[k] for k in ("from_pct", "to_pct", "max_gap", "max_gap_at_pct")}
                for b in found["behind"]
            ] == expected["behind"]
            # The run's own lead (from the same queries' outcomes), inside its interval.
            lead = routers["mixllm"]["aiq"] - routers[name]["aiq"]
            assert found["aiq_lead"] == pytest.approx(lead, abs=1e-9)
            low, high = found["aiq_lead_interval"]
            assert low - 1e-9 <= lead <= high + 1e-9
            assert found["resamples"] == 1000
            for stretch in found["behind"]:
                assert len(stretch["gap_interval"]) == 2
                assert f"{stretch['from_pct']:.2f}-{stretch['to_pct']:.2f}% (by up to" in printed
    assert printed.count("mixllm's frontier from its cheapest point") == 2
    assert printed.count("mixllm against the learned baselines, in this run and over") == 2
    assert results["settings"]["resamples"] == 1000
    assert set(results["continual"]) == {"80:20", "50:50", "30:70", "1:99"}
    # 1% of the slice's train rows is less than a fit needs: it is fitted on the fewest it takes.
    assert results["continual"]["1:99"]["offline_rows"] == 2
    for section in results["continual"].values():
        differences = section["differences"]
        assert set(differences) == {"refined - none", "binary - none", "refined - binary"}
        for pair, found in differences.items():
            # The run's difference, from the scored rows' outcomes against the same reference
            # rows as the table's means, inside its interval.
            first, second = pair.split(" - ")
            run = section[first]["mean_quality"] - section[second]["mean_quality"]
            assert found["mean_quality"] == pytest.approx(run, abs=1e-9)
            low, high = found["mean_quality_interval"]
            assert low - 1e-9 <= run <= high + 1e-9
    assert "Continual training, differences in mean Q %" in printed
    assert results["new-models"]["variants"]
    assert set(results["out-of-domain"]) == {"arc-challenge", "mbpp", "winogrande"}
    for name in ("frontier_no_time_constraint.png", "frontier_time_constraint.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    assert page.count("mixllm&#x27;s frontier from its cheapest point") == 2


@pytest.mark.slow
def test_eval_embeds_with_the_requested_truncation(
    data_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("MIXLLM_CACHE", str(tmp_path / "cache"))
    args = ["eval", "--data", str(data_slice), "--experiment", "frontier", "--quiet"]
    args += ["--resamples", "0"]
    assert main([*args, "--out", str(tmp_path / "head")]) == 0
    assert main([*args, "--out", str(tmp_path / "tail"), "--truncation", "tail"]) == 0
    head = json.loads((tmp_path / "head" / "results.json").read_text())
    tail = json.loads((tmp_path / "tail" / "results.json").read_text())
    truncations = (
        head["settings"]["embedder"]["truncation"],
        tail["settings"]["embedder"]["truncation"],
    )
    assert truncations == ("head", "tail")
    # Two vector caches: the runs did not share vectors embedded the other way.
    assert len(list((tmp_path / "cache" / "eval-vectors").glob("*.npy"))) == 2

    # The few-shot ARC and Winogrande prompts differ only after their first 256 tokens, so the
    # routers see different vectors and route differently.
    def mixllm_points(results: dict) -> list:
        return results["frontier"]["no_time_constraint"]["routers"]["mixllm"]["points"]

    assert mixllm_points(head) != mixllm_points(tail)
    # Without resamples, the comparisons are the metric's alone.
    for section in head["frontier"].values():
        assert all("aiq_lead" not in s for s in section["mixllm_shortfall"].values())
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "x"), "--resamples", "-1"])
    assert "--resamples: must be 0 or more" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "x"), "--max-tokens", "1000"])
    assert "--max-tokens: must be in 3..512" in capsys.readouterr().err
    for bad, message in (
        ("50:60", "50:60 must be percentages adding up to 100"),
        ("0:100", "0:100 must be percentages adding up to 100, with at least 1 offline"),
        ("30:70,thirty", "expected offline:online percentages such as 30:70, got 'thirty'"),
        ("30:70,30:70", "30:70 is given twice"),
    ):
        with pytest.raises(SystemExit):
            main([*args, "--out", str(tmp_path / "x"), "--continual-splits", bad])
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_eval_runs_the_continual_splits_it_is_given(
    data_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIXLLM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    args = ["eval", "--data", str(data_slice), "--out", str(out), "--quiet"]
    args += ["--experiment", "continual", "--resamples", "0", "--continual-splits", "90:10,50:50"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["continual"]) == ["90:10", "50:50"]
    assert results["settings"]["continual_splits"] == [[90, 10], [50, 50]]
    train = results["data"]["train"]
    assert [s["offline_rows"] for s in results["continual"].values()] == [
        round(train * 0.9),
        round(train * 0.5),
    ]


@pytest.mark.slow
def test_eval_shuffles_the_arrivals_unless_told_the_data_order(
    data_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The same queries either way, in another order; the run says which."""
    monkeypatch.setenv("MIXLLM_CACHE", str(tmp_path / "cache"))
    args = ["eval", "--data", str(data_slice), "--quiet", "--resamples", "0"]
    args += ["--experiment", "frontier", "--experiment", "new-models"]
    assert main([*args, "--out", str(tmp_path / "shuffled")]) == 0
    assert "Queries arrive in a shuffled order (seed 0)." in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "data"), "--arrivals", "data"]) == 0
    assert "Queries arrive in the data's order." in capsys.readouterr().out
    assert "the data&#x27;s order" in (tmp_path / "data" / "report.html").read_text()
    in_order = json.loads((tmp_path / "data" / "results.json").read_text())
    shuffled = json.loads((tmp_path / "shuffled" / "results.json").read_text())
    assert (in_order["settings"]["arrivals"], shuffled["settings"]["arrivals"]) == (
        "data",
        "shuffled",
    )
    # The same test queries: GPT-4's totals over them, the 100% of every point, are the same.
    reference = [r["frontier"]["no_time_constraint"]["reference"] for r in (in_order, shuffled)]
    for key in ("quality", "cost_usd"):
        assert reference[0][key] == pytest.approx(reference[1][key])
    # In another order: the stream's second half holds other queries (in the data's order,
    # the end of MBPP and all of Winogrande).
    second_half = [
        r["new-models"]["variants"]["never added"][0]["second_half_cost_pct"]
        for r in (in_order, shuffled)
    ]
    assert second_half[0] != pytest.approx(second_half[1])
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "bad"), "--arrivals", "sorted"])
    assert "invalid choice: 'sorted'" in capsys.readouterr().err


CONFIG = """
[router]
ridge = 10.0
dim = 16

[embedder]
quantized = true
truncation = "tail"
max_tokens = 128

[[models]]
name = "gpt-3.5-turbo-1106"
price_in = 0.5
price_out = 1.5
ttft_s = 0.4
tokens_per_s = 80.0
concurrency = 16
"""


@pytest.mark.slow
def test_eval_with_another_encoder_names_its_width(
    data_slice: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    token_table_encoder: Callable[[Path, int], object],
) -> None:
    """A configuration's own encoder (here an 80-wide stand-in, unquantised) embeds the data
    for every router, and the raw-embedding LinUCB is named after that width."""
    monkeypatch.setenv("MIXLLM_CACHE", str(tmp_path / "cache"))
    token_table_encoder(tmp_path / "encoder", 80)
    config = tmp_path / "router.toml"
    config.write_text(
        f'[embedder]\nmodel_dir = "{(tmp_path / "encoder").as_posix()}"\nquantized = false\n',
        encoding="utf-8",
    )
    args = ["eval", "--data", str(data_slice), "--experiment", "frontier", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "out"), "--config", str(config)]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["settings"]["embedder"]["quantized"] is False
    for key in ("no_time_constraint", "time_constraint"):
        routers = results["frontier"][key]["routers"]
        assert "LinUCB raw 80-d" in routers and "LinUCB raw 384-d" not in routers


@pytest.mark.slow
def test_eval_validate_runs_on_a_split_of_train(
    data_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """--validate evaluates on the train rows alone, a quarter of each benchmark's as test."""
    monkeypatch.setenv("MIXLLM_CACHE", str(tmp_path / "cache"))
    args = ["eval", "--data", str(data_slice), "--experiment", "frontier", "--quiet"]
    args += ["--reference", "gpt-4-1106-preview"]
    assert main([*args, "--out", str(tmp_path / "val"), "--validate"]) == 0
    assert "Validation run" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    val = json.loads((tmp_path / "val" / "results.json").read_text())
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    assert val["settings"]["validation"] is True and plain["settings"]["validation"] is False
    expected = validation_split(load_routerbench_csv(data_slice), seed=0)
    assert val["data"]["queries"] == plain["data"]["train"] == len(expected)
    assert expected.split is not None
    assert val["data"]["test"] == expected.split.count("test") > 0
    assert "Validation run" in (tmp_path / "val" / "report.html").read_text()
    # Another seed, another validation split of the same size.
    assert main([*args, "--out", str(tmp_path / "val2"), "--validate", "--seed", "2"]) == 0
    val2 = json.loads((tmp_path / "val2" / "results.json").read_text())
    other = validation_split(load_routerbench_csv(data_slice), seed=2)
    assert other.split is not None and other.split != expected.split
    assert val2["settings"]["seed"] == 2
    # The reference is GPT-4 over the rows playing test: the seed's quarter, not seed 0's.
    gpt4 = other.models.index("gpt-4-1106-preview")

    def gpt4_quality(split: list[str]) -> float:
        return float(other.quality[[i for i, s in enumerate(split) if s == "test"], gpt4].sum())

    assert gpt4_quality(other.split) != gpt4_quality(expected.split)  # the check can tell
    for split, run in ((other.split, val2), (expected.split, val)):
        reference = run["frontier"]["no_time_constraint"]["reference"]["quality"]
        assert reference == pytest.approx(gpt4_quality(split))
    assert sum(s == "test" for s in other.split) == val2["data"]["test"]


@pytest.mark.slow
def test_eval_evaluates_a_configuration_file(
    data_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("MIXLLM_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "router.toml"
    config.write_text(CONFIG, encoding="utf-8")
    args = ["eval", "--data", str(data_slice), "--experiment", "frontier", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "out"), "--config", str(config)]) == 0
    settings = json.loads((tmp_path / "out" / "results.json").read_text())["settings"]
    assert settings["router"]["router"]["ridge"] == 10.0
    assert settings["router"]["router"]["dim"] == 16
    assert settings["router"]["models"][0]["price_in"] == 0.5
    assert (settings["embedder"]["truncation"], settings["embedder"]["max_tokens"]) == ("tail", 128)

    # A flag overrides the file.
    flagged = [*args, "--out", str(tmp_path / "flag"), "--config", str(config)]
    assert main([*flagged, "--truncation", "head"]) == 0
    settings = json.loads((tmp_path / "flag" / "results.json").read_text())["settings"]
    assert settings["embedder"]["truncation"] == "head"

    # A file of settings alone lists no pool (the run prices the data's models itself) and
    # runs the encoder as a deployed Router does, float32. Its knobs reach the mixllm routers
    # and nothing else: against a run without the file (same vectors), mixllm routes
    # differently and the baselines do not.
    config.write_text("[router]\nridge = 30.0\n", encoding="utf-8")
    assert main([*args, "--out", str(tmp_path / "knobs"), "--config", str(config)]) == 0
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    knobs = json.loads((tmp_path / "knobs" / "results.json").read_text())
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    assert knobs["settings"]["router"]["router"]["ridge"] == 30.0
    assert knobs["settings"]["router"]["models"] == []
    assert knobs["settings"]["embedder"] == plain["settings"]["embedder"]
    assert knobs["settings"]["embedder"]["quantized"] is False

    def points(results: dict, router: str) -> list:
        return results["frontier"]["no_time_constraint"]["routers"][router]["points"]

    assert points(knobs, "mixllm") != points(plain, "mixllm")
    assert points(knobs, "LinUCB raw 384-d") == points(plain, "LinUCB raw 384-d")

    # A model the data has no outcomes for is an error naming it, not silently dropped.
    config.write_text(CONFIG.replace("gpt-3.5-turbo-1106", "my-own-llm"), encoding="utf-8")
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "bad"), "--config", str(config)]) == 1
    assert "my-own-llm" in capsys.readouterr().err


def test_eval_without_data_says_the_hub_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    hub = pytest.importorskip("huggingface_hub")

    def offline(*args: object, **kwargs: object) -> str:
        raise ConnectionError("Failed to establish a new connection: network is unreachable")

    monkeypatch.setattr(hub, "hf_hub_download", offline)
    code = main(["eval", "--out", str(tmp_path / "out"), "--allow-pickle"])
    err = capsys.readouterr().err
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "cannot reach the Hugging Face hub" in lines[0]
    assert "mixllm eval --data PATH" in lines[0]
    # Without --allow-pickle the hub's pickle is neither downloaded nor unpickled.
    assert main(["eval", "--out", str(tmp_path / "out")]) != 0
    assert "refusing to unpickle" in capsys.readouterr().err
