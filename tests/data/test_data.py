"""mixllm.data: the RoutingDataset contract, the RouterBench loaders (CSV, pickle, hub), JSONL
round trips and errors, train/test splitting and token counting."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import pickle
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mixllm
from mixllm import data
from mixllm.data import DatasetUnavailableError, RoutingDataset, jsonl, tokens

GPT4 = "gpt-4-1106-preview"


def small(**changes: Any) -> RoutingDataset:
    """A 3-query, 2-model dataset with every optional field set."""
    fields: dict[str, Any] = {
        "prompts": ["a", "b b", "c c c"],
        "models": ["m1", "m2"],
        "quality": [[1.0, 0.0], [0.5, np.nan], [0.0, 1.0]],
        "cost_usd": [[1e-4, 2e-3], [1e-4, np.nan], [2e-4, 3e-3]],
        "prompt_tokens": [1.0, 2.0, 3.0],
        "output_tokens": [[10.0, 20.0], [5.0, np.nan], [7.0, 9.0]],
        "latency_s": [[0.5, 1.5], [0.25, np.nan], [0.75, 2.0]],
        "labels": ["x", "y", "x"],
        "split": ["train", "test", "train"],
        "ids": ["r0", "r1", "r2"],
        "tokens_counted": False,
    }
    fields.update(changes)
    return RoutingDataset(**fields)


# --- the local RouterBench subset --------------------------------------------------------------


def test_routerbench_subset_matches_its_readme(routerbench: RoutingDataset) -> None:
    ds = routerbench
    assert len(ds) == 3150
    assert len(ds.models) == 11 and GPT4 in ds.models
    assert ds.split is not None and ds.split.count("test") == 945
    assert ds.labels is not None and set(ds.labels) == {"arc-challenge", "mbpp", "winogrande"}
    assert not np.isnan(ds.quality).any()
    assert set(np.unique(ds.quality)) == {0.0, 1.0}
    assert (ds.cost_usd > 0).all()
    assert ds.tokens_counted
    assert (ds.prompt_tokens > 0).all()
    assert ds.output_tokens is not None and not np.isnan(ds.output_tokens).any()
    assert ds.latency_s is None
    assert len(set(ds.ids)) == len(ds)
    assert all(not p.startswith("['") for p in ds.prompts)


def test_gpt4_accuracy_on_the_test_split(routerbench: RoutingDataset) -> None:
    test = routerbench.test()
    assert len(test) == 945
    gpt4 = test.quality[:, test.models.index(GPT4)]
    assert gpt4.mean() == pytest.approx(0.879, abs=0.0005)


def test_train_and_test_are_disjoint_and_cover_everything(routerbench: RoutingDataset) -> None:
    train, test = routerbench.train(), routerbench.test()
    assert len(train) + len(test) == len(routerbench)
    assert not set(train.ids) & set(test.ids)
    assert set(train.split or []) == {"train"} and set(test.split or []) == {"test"}


def test_prompts_are_joined_list_parts(routerbench: RoutingDataset) -> None:
    first_mbpp = routerbench.ids.index("mbpp.dev.1")
    assert (
        routerbench.prompts[first_mbpp] == "Write a python function to identify non-prime numbers."
    )


# --- the dataset type ---------------------------------------------------------------------------


def test_arrays_are_float64_and_read_only() -> None:
    ds = small(prompt_tokens=[1, 2, 3])
    assert ds.prompt_tokens.dtype == np.float64
    with pytest.raises(ValueError, match="read-only"):
        ds.quality[0, 0] = 0.5


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"quality": [[1.0, 0.0]]}, r"quality has shape \(1, 2\), expected \(3, 2\)"),
        ({"cost_usd": [[1.0, np.inf]] * 3}, "cost_usd holds infinite values"),
        ({"output_tokens": [[-1.0, 0.0]] * 3}, "output_tokens holds negative values"),
        ({"prompt_tokens": [1.0, np.nan, 1.0]}, "prompt_tokens holds NaN"),
        ({"ids": ["r0", "r0", "r2"]}, "ids must be unique: 'r0'"),
        ({"split": ["train", "dev", "test"]}, r"'train' or 'test', found \['dev'\]"),
        ({"labels": ["x", "y"]}, "labels has 2 entries, expected 3"),
        ({"models": ["m1", "m1"]}, "models are not unique"),
        ({"models": [], "quality": np.zeros((3, 0))}, "models is empty"),
        ({"prompts": ["a", 2, "c"]}, r"prompts\[1\] is int"),
        ({"quality": [["x", 0.0]] * 3}, "quality must be numeric"),
    ],
)
def test_invalid_fields_raise_invalid_input(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(mixllm.InvalidInputError, match=message) as caught:
        small(**changes)
    assert isinstance(caught.value, mixllm.MixllmError) and isinstance(caught.value, ValueError)


def test_select_by_slice_positions_and_mask() -> None:
    ds = small()
    assert ds.select(slice(1, None)).ids == ["r1", "r2"]
    assert ds.select([2, 0]).ids == ["r2", "r0"]
    assert ds.select([-1]).ids == ["r2"]
    assert ds.select(np.array([True, False, True])).ids == ["r0", "r2"]
    assert len(ds.select([])) == 0
    picked = ds.select([2, 0])
    np.testing.assert_array_equal(picked.quality, ds.quality[[2, 0]])
    assert picked.output_tokens is not None and ds.output_tokens is not None
    np.testing.assert_array_equal(picked.output_tokens, ds.output_tokens[[2, 0]])
    assert picked.labels == ["x", "x"] and picked.split == ["train", "train"]
    assert picked.prompt_tokens.tolist() == [3.0, 1.0]


def test_select_rejects_bad_rows() -> None:
    ds = small()
    with pytest.raises(mixllm.InvalidInputError, match=r"mask must have shape \(3,\)"):
        ds.select(np.array([True, False]))
    with pytest.raises(mixllm.InvalidInputError, match="row positions must be in"):
        ds.select([3])
    with pytest.raises(mixllm.InvalidInputError, match="ids must be unique"):
        ds.select([0, 0])
    with pytest.raises(mixllm.InvalidInputError, match="rows must be"):
        ds.select([0.5])  # type: ignore[list-item]


def test_train_and_test_need_a_split() -> None:
    ds = small()
    assert ds.train().ids == ["r0", "r2"] and ds.test().ids == ["r1"]
    with pytest.raises(mixllm.InvalidInputError, match="split_train_test"):
        small(split=None).train()


def test_model_subsets() -> None:
    ds = small()
    only = ds.only_models(["m2"])
    assert only.models == ["m2"]
    np.testing.assert_array_equal(only.quality[:, 0], ds.quality[:, 1])
    assert ds.only_models(["m2", "m1"]).models == ["m2", "m1"]
    without = ds.without_models(["m2"])
    assert without.models == ["m1"] and without.cost_usd.shape == (3, 1)
    assert without.latency_s is not None and without.latency_s.shape == (3, 1)
    assert ds.without_models("m1").models == ["m2"]
    with pytest.raises(mixllm.UnknownModelError, match="nope"):
        ds.only_models(["nope"])
    with pytest.raises(mixllm.UnknownModelError, match="nope"):
        ds.without_models(["nope"])
    with pytest.raises(mixllm.InvalidInputError, match="models is empty"):
        ds.without_models(["m1", "m2"])


def test_real_model_subsets(routerbench: RoutingDataset) -> None:
    cheap = routerbench.without_models([GPT4, "claude-v1", "claude-v2"])
    assert len(cheap.models) == 8 and GPT4 not in cheap.models
    k = routerbench.models.index("mistralai/mistral-7b-chat")
    np.testing.assert_array_equal(
        cheap.quality[:, cheap.models.index("mistralai/mistral-7b-chat")],
        routerbench.quality[:, k],
    )


def test_equality_treats_nan_as_equal() -> None:
    assert small() == small()
    assert small() != small(ids=["r0", "r1", "r9"])
    assert small() != small(latency_s=None)


# --- splitting ----------------------------------------------------------------------------------


def test_split_train_test_is_stratified_and_deterministic(routerbench: RoutingDataset) -> None:
    unsplit = routerbench.select(slice(None))
    first = data.split_train_test(unsplit, test_fraction=0.2, seed=3)
    assert first.split == data.split_train_test(unsplit, test_fraction=0.2, seed=3).split
    assert first.split != data.split_train_test(unsplit, test_fraction=0.2, seed=4).split
    assert first.labels is not None and first.split is not None
    for label in set(first.labels):
        rows = [s for s, lab in zip(first.split, first.labels, strict=True) if lab == label]
        assert rows.count("test") == round(0.2 * len(rows))


def test_validation_split_reads_only_train_rows(routerbench: RoutingDataset) -> None:
    """The validation split is the train rows alone, a stratified quarter of them as "test":
    no real test row is in it, and it is the same for the same seed."""
    valid = data.validation_split(routerbench, seed=7)
    assert valid.split == data.validation_split(routerbench, seed=7).split
    assert valid.split != data.validation_split(routerbench, seed=8).split
    assert routerbench.split is not None and valid.split is not None and valid.labels is not None
    train_ids = [i for i, s in zip(routerbench.ids, routerbench.split, strict=True) if s == "train"]
    assert valid.ids == train_ids
    for label in set(valid.labels):
        rows = [s for s, lab in zip(valid.split, valid.labels, strict=True) if lab == label]
        assert rows.count("test") == round(0.25 * len(rows)) > 0
    # Without a split, the dataset is first split as `mixllm eval` would (20% test, always the
    # same seed): no validation seed reads those test rows.
    unsplit = dataclasses.replace(routerbench, split=None)
    expected = data.split_train_test(unsplit, 0.2, seed=data.TEST_SPLIT_SEED).train().ids
    for seed in (0, 7):
        assert data.validation_split(unsplit, seed=seed).ids == expected


def test_split_without_labels_and_bad_fractions() -> None:
    ds = data.split_train_test(small(labels=None, split=None), test_fraction=0.34)
    assert ds.split is not None and ds.split.count("test") == 1
    for fraction in (0.0, 1.0, -0.1):
        with pytest.raises(mixllm.InvalidInputError, match="test_fraction"):
            data.split_train_test(small(), test_fraction=fraction)


# --- token counting -----------------------------------------------------------------------------


def test_count_tokens_grows_with_length_and_never_truncates() -> None:
    counts = data.count_tokens(["", "hello", "hello " * 100, "hello " * 1000, "hello " * 5000])
    assert counts.dtype == np.float64
    assert counts.tolist() == [0.0, 1.0, 100.0, 1000.0, 5000.0]
    words = [" ".join(["routing"] * m) for m in range(0, 400, 7)]
    assert np.all(np.diff(data.count_tokens(words)) > 0)


def test_count_tokens_is_thread_safe() -> None:
    texts = [f"query number {i} " * (i % 50 + 1) for i in range(400)]
    expected = data.count_tokens(texts)
    results: list[np.ndarray] = []

    def work() -> None:
        results.append(data.count_tokens(texts))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 4
    for result in results:
        np.testing.assert_array_equal(result, expected)


def test_count_tokens_rejects_a_bare_string() -> None:
    with pytest.raises(mixllm.InvalidInputError, match="single string"):
        data.count_tokens("hello")
    assert data.count_tokens([]).shape == (0,)


# --- JSONL ---------------------------------------------------------------------------------------


def test_jsonl_round_trip_of_routerbench_rows(routerbench: RoutingDataset, tmp_path: Path) -> None:
    rows = routerbench.select(slice(0, 3150, 50))
    path = tmp_path / "rb.jsonl"
    data.save_jsonl(rows, path)
    first = json.loads(path.read_text().splitlines()[0])
    assert "prompt_tokens" not in first  # counted tokens are counted again on load
    assert set(first["outcomes"][GPT4]) == {"quality", "cost_usd", "output_tokens"}
    assert data.load_jsonl(path) == rows


def test_jsonl_example_in_the_docs_loads(tmp_path: Path) -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "data-format.md"
    block = doc.read_text().split("```jsonl\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "example.jsonl"
    path.write_text(block)
    ds = data.load_jsonl(path)
    assert len(ds) == 3 and ds.models == ["gpt-4-1106-preview", "mistralai/mistral-7b-chat"]
    assert math.isnan(ds.quality[2, 1])


names = st.text(min_size=1, max_size=12, alphabet=st.characters(exclude_categories=["Cs"]))
texts = st.text(max_size=40, alphabet=st.characters(exclude_categories=["Cs"]))
maybe = st.one_of(st.just(math.nan), st.floats(0, 1e6, allow_nan=False))


@st.composite
def datasets(draw: st.DrawFn) -> RoutingDataset:
    n = draw(st.integers(1, 5))
    models = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    k = len(models)

    def matrix() -> np.ndarray:
        return np.array(draw(st.lists(maybe, min_size=n * k, max_size=n * k))).reshape(n, k)

    quality = matrix()
    quality[0, :] = np.nan_to_num(quality[0, :], nan=0.5)  # every model observed once
    counted = draw(st.booleans())
    prompts = draw(st.lists(texts, min_size=n, max_size=n))
    return RoutingDataset(
        prompts=prompts,
        models=models,
        quality=quality,
        cost_usd=matrix(),
        prompt_tokens=data.count_tokens(prompts)
        if counted
        else draw(st.lists(st.floats(0, 1e5), min_size=n, max_size=n)),
        output_tokens=matrix() if draw(st.booleans()) else None,
        latency_s=matrix() if draw(st.booleans()) else None,
        labels=draw(st.one_of(st.none(), st.lists(texts, min_size=n, max_size=n))),
        split=draw(
            st.one_of(
                st.none(), st.lists(st.sampled_from(["train", "test"]), min_size=n, max_size=n)
            )
        ),
        ids=draw(st.lists(names, min_size=n, max_size=n, unique=True)),
        tokens_counted=counted,
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ds=datasets())
def test_jsonl_round_trip_property(ds: RoutingDataset, tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    data.save_jsonl(ds, path)
    back = data.load_jsonl(path)
    # An optional array whose every entry is NaN cannot be told apart from a missing one.
    for name in ("output_tokens", "latency_s"):
        array = getattr(ds, name)
        if array is not None and np.isnan(array).all():
            ds = dataclasses.replace(ds, **{name: None})
    assert back == ds


def test_save_refuses_models_with_no_outcome(tmp_path: Path) -> None:
    ds = small(
        quality=[[1.0, np.nan]] * 3,
        cost_usd=[[1.0, np.nan]] * 3,
        output_tokens=None,
        latency_s=None,
    )
    with pytest.raises(mixllm.InvalidInputError, match=r"\['m2'\] have no observed outcome"):
        data.save_jsonl(ds, tmp_path / "x.jsonl")
    assert not list(tmp_path.iterdir())


def write_lines(tmp_path: Path, *rows: Any) -> Path:
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


GOOD = {"id": "a", "query": "hi", "outcomes": {"m": {"quality": 1}}}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "line 2: not valid JSON"),
        ("[1, 2]", "line 2: expected a JSON object"),
        ({"id": "b", "outcomes": {"m": {"quality": 1}}}, "line 2: field 'query' must be a string"),
        ({"id": "b", "query": "q"}, "line 2: field 'outcomes' must be an object"),
        ({"id": None, "query": "q", "outcomes": {}}, "line 2: field 'id' must be"),
        ({"id": "a", "query": "q", "outcomes": {}}, "line 2: field 'id' 'a' repeats line 1"),
        (
            {"id": "b", "query": "q", "outcomes": {"m": {"quality": "high"}}},
            r"line 2: field 'outcomes.m.quality' must be a number",
        ),
        (
            {"id": "b", "query": "q", "outcomes": {"m": {"cost_usd": -1}}},
            r"line 2: field 'outcomes.m.cost_usd' must be >= 0",
        ),
        (
            {"id": "b", "query": "q", "outcomes": {"m": {"quality": 1, "tokens": 3}}},
            r"line 2: unknown field\(s\) \['tokens'\] in 'outcomes.m'",
        ),
        ({"id": "b", "query": "q", "outcomes": {"m": 1}}, "line 2: field 'outcomes.m' must be"),
        ({"id": "b", "query": "q", "outcomes": {}, "extra": 1}, r"line 2: unknown field\(s\)"),
        ({"id": "b", "query": "q", "outcomes": {}, "split": "dev"}, "line 2: field 'split'"),
        (
            {"id": "b", "query": "q", "outcomes": {}, "label": "x"},
            "line 1: field 'label' is missing",
        ),
        ({"id": "b", "query": "q", "outcomes": {}, "prompt_tokens": True}, "'prompt_tokens'"),
    ],
)
def test_jsonl_errors_name_the_line_and_field(tmp_path: Path, bad: Any, message: str) -> None:
    with pytest.raises(mixllm.InvalidInputError, match=message):
        data.load_jsonl(write_lines(tmp_path, GOOD, bad))


def test_jsonl_blank_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    path = write_lines(tmp_path, GOOD, "", "{broken")
    with pytest.raises(mixllm.InvalidInputError, match="line 3"):
        data.load_jsonl(path)


def test_jsonl_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailableError, match="cannot read"):
        data.load_jsonl(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(mixllm.InvalidInputError, match="holds no rows"):
        data.load_jsonl(tmp_path / "empty.jsonl")


def test_jsonl_fills_missing_models_and_counts_tokens(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path,
        {"id": 1, "query": "one two three", "outcomes": {"a": {"quality": 1, "output_tokens": 10}}},
        {"id": 2, "query": "four", "prompt_tokens": 9, "outcomes": {"b": {"quality": 0}}},
    )
    ds = data.load_jsonl(path)
    assert ds.ids == ["1", "2"] and ds.models == ["a", "b"]
    assert ds.tokens_counted and ds.prompt_tokens.tolist() == [3.0, 9.0]
    assert math.isnan(ds.quality[0, 1]) and math.isnan(ds.quality[1, 0])
    assert ds.latency_s is None and ds.labels is None and ds.split is None
    assert np.isnan(ds.cost_usd).all()


def test_jsonl_costs_from_prices(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path,
        {
            "id": "q",
            "query": "x",
            "prompt_tokens": 1000,
            "outcomes": {
                "a": {"quality": 1, "output_tokens": 500},
                "b": {"quality": 1, "output_tokens": 500, "cost_usd": 0.5},
                "c": {"quality": 0},
            },
        },
    )

    class Spec:
        price_in, price_out, fee = 2.0, 6.0, 0.001

    ds = data.load_jsonl(path, prices={"a": Spec(), "b": (1.0, 1.0), "c": (1.0, 1.0)})
    assert ds.cost_usd[0, 0] == pytest.approx((1000 * 2.0 + 500 * 6.0) / 1e6 + 0.001)
    assert ds.cost_usd[0, 1] == 0.5  # a logged cost wins
    assert math.isnan(ds.cost_usd[0, 2])  # no output tokens, no estimate


# --- RouterBench pickles and the hub ------------------------------------------------------------


@pytest.fixture(scope="session")
def routerbench_pickle(tmp_path_factory: pytest.TempPathFactory, routerbench_dir: Path) -> Path:
    """A pickled DataFrame in the published form, built from a few rows of the CSV files: the
    CSV's row index becomes the frame index, prompts and responses are real lists, and two
    arc rows share a sample_id (RouterBench's quirk) with one of them missing a score."""
    pd = pytest.importorskip("pandas")
    import ast

    parts = [
        pd.read_csv(routerbench_dir / f"{b}_test.csv").head(4) for b in ("arc_challenge", "mbpp")
    ]
    frame = pd.concat(parts).set_index("Unnamed: 0")
    for column in [c for c in frame.columns if c == "prompt" or c.endswith("|model_response")]:
        frame[column] = frame[column].map(ast.literal_eval)
    frame.loc[frame.index[1], "sample_id"] = frame["sample_id"].iloc[0]
    frame.loc[frame.index[2], "sample_id"] = frame["sample_id"].iloc[3]
    frame.loc[frame.index[3], GPT4] = np.nan
    path = tmp_path_factory.mktemp("hub") / "routerbench_0shot.pkl"
    frame.to_pickle(path)
    return path


def test_local_pickle_is_refused_without_opt_in(routerbench_pickle: Path) -> None:
    with pytest.raises(
        mixllm.InvalidInputError, match=r"refusing to unpickle .* allow_pickle=True"
    ):
        data.load_routerbench(routerbench_pickle)


def test_local_pickle_with_opt_in(routerbench_pickle: Path, routerbench: RoutingDataset) -> None:
    ds = data.load_routerbench(routerbench_pickle, allow_pickle=True)
    assert len(ds) == 7 and ds.split is None and ds.models == routerbench.models
    assert ds.labels == ["arc-challenge"] * 3 + ["mbpp"] * 4
    first, second = ds.ids[:2]
    assert first.startswith(second.split("@")[0]) and "@" in first and "@" in second
    # Rows match the CSV loader's, column for column.
    for row in range(3, 7):
        same = routerbench.select([routerbench.ids.index(ds.ids[row])])
        assert same.prompts[0] == ds.prompts[row]
        np.testing.assert_array_equal(same.quality[0], ds.quality[row])
        np.testing.assert_array_equal(same.cost_usd[0], ds.cost_usd[row])
        assert same.output_tokens is not None and ds.output_tokens is not None
        np.testing.assert_array_equal(same.output_tokens[0], ds.output_tokens[row])
        assert same.prompt_tokens[0] == ds.prompt_tokens[row]


def test_hub_download_is_read_and_cached_where_asked(
    routerbench_pickle: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    calls: list[dict[str, Any]] = []

    def fake_download(**kwargs: Any) -> str:
        calls.append(kwargs)
        return str(routerbench_pickle)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    ds = data.load_routerbench(
        "hub", filename="routerbench_5shot.pkl", cache_dir=tmp_path, allow_pickle=True
    )
    assert calls == [
        {
            "repo_id": "withmartian/routerbench",
            "filename": "routerbench_5shot.pkl",
            "repo_type": "dataset",
            "revision": None,
            "cache_dir": str(tmp_path),
        }
    ]
    assert len(ds) == 7 and ds.tokens_counted
    split = data.split_train_test(ds, test_fraction=0.5)
    assert split.split is not None and split.split.count("test") == 4  # round(1.5) + round(2)


def test_hub_unreachable_says_how_to_use_a_local_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def offline(**kwargs: Any) -> str:
        try:
            raise ConnectionError("[Errno -2] Name or service not known")
        except ConnectionError as err:
            raise huggingface_hub.errors.LocalEntryNotFoundError(
                "An error happened while trying to locate the file on the Hub.\nCheck it."
            ) from err

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(DatasetUnavailableError) as caught:
        data.load_routerbench(allow_pickle=True)
    message = str(caught.value)
    assert "\n" not in message
    assert "cannot reach the Hugging Face hub" in message
    assert "load_routerbench_csv(directory)" in message
    assert "allow_pickle=True" in message
    assert isinstance(caught.value, mixllm.MixllmError) and isinstance(caught.value, OSError)


def test_hub_other_failures_are_reported_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def missing(**kwargs: Any) -> str:
        raise ValueError("404 Client Error: entry not found\nmore detail")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", missing)
    with pytest.raises(DatasetUnavailableError, match=r"cannot download .*: 404 Client Error"):
        data.load_routerbench(filename="nope.pkl", allow_pickle=True)


def test_pickle_that_is_not_a_frame(tmp_path: Path) -> None:
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps({"prompt": []}))
    with pytest.raises(mixllm.InvalidInputError, match="expected a pandas DataFrame"):
        data.load_routerbench(path, allow_pickle=True)


def test_routerbench_sources_that_do_not_exist(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailableError, match="does not exist"):
        data.load_routerbench(tmp_path / "absent.pkl", allow_pickle=True)
    with pytest.raises(DatasetUnavailableError, match="not a directory"):
        data.load_routerbench_csv(tmp_path / "absent")
    with pytest.raises(DatasetUnavailableError, match="has no RouterBench CSV files"):
        data.load_routerbench(tmp_path)


def test_csv_directory_through_load_routerbench(tmp_path: Path, routerbench_dir: Path) -> None:
    csv.field_size_limit(1 << 24)
    with (routerbench_dir / "mbpp_test.csv").open(newline="") as handle:
        records = list(csv.reader(handle))[:3]
    with (tmp_path / "mbpp_train.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(records)
    (tmp_path / "notes.txt").write_text("ignored")
    ds = data.load_routerbench(tmp_path)
    assert ds.split == ["train", "train"] and ds.ids == [r[1] for r in records[1:]]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": 1, "query": "q", "prompt_tokens": 1' + "0" * 400 + ', "outcomes": {}}',
         "prompt_tokens' is too large"),
        ('{"id": 1, "query": "q", "prompt_tokens": 1' + "0" * 5000 + ', "outcomes": {}}',
         "not valid JSON"),
        ("[" * 100_000, "not valid JSON"),
        ('{"id": 1, "query": "\\ud800", "outcomes": {"m": {"quality": 1}}}',
         "field 'query' is not valid Unicode"),
        ('{"id": 1, "query": "q", "outcomes": {"\\udfff": {"quality": 1}}}',
         "a model name is not valid Unicode"),
        ('{"id": "\\ud800", "query": "q", "outcomes": {"m": {"quality": 1}}}',
         "field 'id' is not valid Unicode"),
        ('{"id": 1' + "0" * 200 + ', "query": "q", "outcomes": {"m": {"quality": 1}}}',
         "'id' is an integer of over 100 digits"),
    ],
)  # fmt: skip
def test_jsonl_hostile_lines_are_invalid_input(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "hostile.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(mixllm.InvalidInputError, match=message):
        data.load_jsonl(path)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from([*jsonl._ROW_FIELDS, "quality", "x"]) | st.text(), inner,
                      max_size=5),
    max_leaves=25,
)  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    content=st.one_of(
        st.binary(max_size=500),
        st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.lists(_JSON.map(json.dumps), min_size=1, max_size=4).map(
            lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")
        ),
        st.lists(st.sampled_from(['"\\ud800"', "1" + "0" * 400, "[" * 3000, "NaN", "-1"]),
                 min_size=1, max_size=3).map(
            lambda parts: (
                f'{{"id": 1, "query": {parts[0]}, "outcomes": {{"m": {{"quality": {parts[-1]}}}}}}}'
            ).encode()
        ),
    )
)  # fmt: skip
def test_jsonl_any_bytes_load_or_raise_a_documented_error(content: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "any.jsonl"
        path.write_bytes(content)
        with contextlib.suppress(mixllm.InvalidInputError, DatasetUnavailableError):
            data.load_jsonl(path)


def test_count_tokens_refuses_text_that_is_not_unicode() -> None:
    with pytest.raises(mixllm.InvalidInputError, match=r"texts\[1\] is not valid Unicode"):
        data.count_tokens(["fine", "\ud800"])


def test_estimate_tokens_is_exact_up_to_its_prefix_and_scales_beyond() -> None:
    text = "word " * 100
    assert data.estimate_tokens([text])[0] == data.count_tokens([text])[0]
    long = "word " * (tokens.EXACT_COUNT_CHARS // 5 * 3)
    head = data.count_tokens([long[: tokens.EXACT_COUNT_CHARS]])[0]
    assert data.estimate_tokens([long])[0] == round(head * len(long) / tokens.EXACT_COUNT_CHARS)
    assert data.estimate_tokens([long])[0] == pytest.approx(data.count_tokens([long])[0], rel=1e-3)


def test_hub_pickles_are_unpickled_only_when_trusted_or_pinned(
    routerbench_pickle: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A file planted in the hub's cache runs code when unpickled: without allow_pickle=True
    or a pinned sha256 nothing is downloaded or read, and a pinned hash must match."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    calls: list[dict[str, Any]] = []

    def fake_download(**kwargs: Any) -> str:
        calls.append(kwargs)
        return str(routerbench_pickle)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(mixllm.InvalidInputError, match=r"refusing to unpickle .* sha256="):
        data.load_routerbench()
    assert calls == []
    digest = __import__("hashlib").sha256(routerbench_pickle.read_bytes()).hexdigest()
    ds = data.load_routerbench(sha256=digest.upper(), revision="0123abc")
    assert len(ds) == 7 and calls[-1]["revision"] == "0123abc"
    other = "0" * 64
    with pytest.raises(mixllm.InvalidInputError, match=f"not the pinned {other}"):
        data.load_routerbench(sha256=other)
    with pytest.raises(mixllm.InvalidInputError, match="not the pinned"):
        data.load_routerbench(routerbench_pickle, sha256=other)
    assert len(data.load_routerbench(routerbench_pickle, sha256=digest)) == 7
    with pytest.raises(mixllm.InvalidInputError, match="64 hexadecimal digits"):
        data.load_routerbench(sha256="abc")
