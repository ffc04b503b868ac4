"""Shared pieces of the tests: a numpy oracle of one `mixllm.Policy` arm, a standard model
profile, a small sample of the local RouterBench subset (when it is beside the repo), and a
stand-in sentence encoder of any width.

They are handed out as session fixtures because the test modules are imported by path
(`--import-mode=importlib`) and cannot import each other. The helper modules beside them
(`tiny_mpnet`; `light_router`, whose `HashEmbedder` stands in for the encoder everywhere;
`gateway_harness`, `store_replica`) and those shared with the benchmarks in `testkit/`
(`numpy_reference`, `workload`, `reference_bert`, `reference_mpnet`, `fake_upstream`,
`redis_server`) import by name (`pythonpath`).
"""

from __future__ import annotations

import ast
import csv
import gc
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mixllm.data import RoutingDataset, load_routerbench_csv
from redis_server import RedisServer

# Many ONNX Runtime sessions live in one test process (every encoder, thread count and variant
# the tests build), and each session's memory arena would keep its largest batch's buffers for
# good: the tests run without it, as do the CLI processes they start (they inherit this).
os.environ.setdefault("MIXLLM_ORT_ARENA", "0")

PROFILE: dict[str, Any] = {
    "price_in": 1.0,
    "price_out": 3.0,
    "ttft_s": 0.4,
    "tokens_per_s": 60.0,
    "concurrency": 4,
}


class ArmOracle:
    """One arm's exact ridge statistics, accumulated in numpy from the same observations.

    Quality head: A = ridge·I + Σ w·x·xᵀ, b_q = Σ w·(q - prior_q)·x over every observation.
    Length head: A_len = length_ridge·I + Σ w·x·xᵀ, b_len = Σ w·(log1p(t) - log1p(prior_t))·x
    over the observations with output tokens only.
    """

    def __init__(
        self,
        dim: int,
        ridge: float,
        prior_quality: float = 0.5,
        prior_output_tokens: float = 256.0,
        *,
        length_ridge: float,
    ) -> None:
        self.ridge = ridge
        self.prior_quality = prior_quality
        self.prior_log_length = float(np.log1p(prior_output_tokens))
        self.a = ridge * np.eye(dim)
        self.b_quality = np.zeros(dim)
        self.length_a = length_ridge * np.eye(dim)
        self.b_log_length = np.zeros(dim)
        self.observations = 0
        self.weight_sum = 0.0

    def update(
        self,
        x: np.ndarray,
        quality: float,
        output_tokens: float | None = None,
        weight: float = 1.0,
    ) -> None:
        x = np.asarray(x, dtype=np.float64)
        self.a += weight * np.outer(x, x)
        self.b_quality += weight * (quality - self.prior_quality) * x
        if output_tokens is not None:
            residual_log_length = float(np.log1p(output_tokens)) - self.prior_log_length
            self.length_a += weight * np.outer(x, x)
            self.b_log_length += weight * residual_log_length * x
        self.observations += 1
        self.weight_sum += weight

    @property
    def a_inv(self) -> np.ndarray:
        return np.linalg.inv(self.a)

    @property
    def theta_quality(self) -> np.ndarray:
        return np.linalg.solve(self.a, self.b_quality)

    @property
    def length_a_inv(self) -> np.ndarray:
        return np.linalg.inv(self.length_a)

    @property
    def theta_log_length(self) -> np.ndarray:
        return np.linalg.solve(self.length_a, self.b_log_length)

    def assert_matches(self, state: dict[str, Any], rtol: float = 1e-8) -> None:
        """Checks `Policy.inspect` output against the oracle, relative to each array's scale
        (plus 1e-300, so values that underflow to subnormals compare at the precision left)."""
        for key, expected in [
            ("a", self.a),
            ("a_inv", self.a_inv),
            ("theta_quality", self.theta_quality),
            ("theta_log_length", self.theta_log_length),
            ("b_quality", self.b_quality),
            ("length_a", self.length_a),
            ("length_a_inv", self.length_a_inv),
            ("b_log_length", self.b_log_length),
        ]:
            scale = float(np.abs(expected).max()) if expected.size else 0.0
            np.testing.assert_allclose(
                state[key], expected, rtol=rtol, atol=rtol * scale + 1e-300, err_msg=key
            )
        assert state["observations"] == self.observations
        assert state["weight_sum"] == pytest.approx(self.weight_sum, rel=1e-12)


@pytest.fixture(autouse=True, scope="module")
def _release_encoder_sessions() -> Iterator[None]:
    """After each test module, the process-wide cache of ONNX Runtime sessions lets go of what
    it holds: the sessions still in use stay with their encoders, and the models only that
    module loaded are freed instead of adding up over the run."""
    yield
    from mixllm.encoders import embedding

    embedding._sessions.clear()
    gc.collect()


@pytest.fixture(scope="session")
def arm_oracle() -> type[ArmOracle]:
    return ArmOracle


@pytest.fixture(scope="session")
def profile() -> dict[str, Any]:
    return dict(PROFILE)


ROUTERBENCH = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "routerbench_subset_routerdc"
)


@pytest.fixture(scope="session")
def routerbench_dir() -> Path:
    """The local RouterBench subset's folder; the test is skipped where it is not beside the
    repo (`.ci/run` fails before the tests if it is missing there)."""
    if not ROUTERBENCH.is_dir():
        pytest.skip(f"RouterBench subset not found at {ROUTERBENCH} (expected beside the repo)")
    return ROUTERBENCH


@pytest.fixture(scope="session")
def routerbench(routerbench_dir: Path) -> RoutingDataset:
    """The whole subset, loaded once for every test module that needs it."""
    return load_routerbench_csv(routerbench_dir)


@pytest.fixture(scope="session")
def routerbench_slice(routerbench_dir: Path) -> Callable[[Path, int], Path]:
    """Writes the first ``rows`` rows of each CSV of the subset into ``folder`` (created),
    for commands that take a data folder; returns the folder."""

    def write(folder: Path, rows: int) -> Path:
        folder.mkdir(parents=True)
        csv.field_size_limit(1 << 24)
        for source in sorted(routerbench_dir.glob("*.csv")):
            with source.open(newline="", encoding="utf-8") as handle:
                reader = csv.reader(handle)
                kept = [row for _, row in zip(range(rows + 1), reader, strict=False)]
            with (folder / source.name).open("w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerows(kept)
        return folder

    return write


@pytest.fixture(scope="session")
def routerbench_sample(routerbench_dir: Path) -> tuple[list[str], list[str]]:
    """12 test-split prompts (joined text) from each benchmark, with their ``eval_name``."""
    texts: list[str] = []
    labels: list[str] = []
    csv.field_size_limit(1 << 24)
    for name in ("arc_challenge_test.csv", "mbpp_test.csv", "winograde_test.csv"):
        with (routerbench_dir / name).open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows[:12]:
            texts.append("\n".join(ast.literal_eval(row["prompt"])))
            labels.append(row["eval_name"])
    return texts, labels


def _token_table_onnx(path: Path, table: np.ndarray) -> None:
    """An ONNX encoder with MPNet's interface (input_ids and attention_mask, no token_type_ids)
    whose per-token output is row ``input_ids`` of ``table``. Like a transformer's, its output
    at padded positions is not zero (the mask is taken but not applied): only the Embedder's
    masked mean keeps padding out of the vectors."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["last_hidden_state"])],
        "token_table",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info(
                "attention_mask", TensorProto.INT64, ["batch", "sequence"]
            ),
        ],
        [
            helper.make_tensor_value_info(
                "last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", table.shape[1]]
            )
        ],
        initializer=[numpy_helper.from_array(table.astype(np.float32), "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="session")
def token_table_encoder() -> Callable[[Path, int], np.ndarray]:
    """Writes a stand-in encoder of the given width into ``folder`` (``model.onnx`` and the
    shipped ``tokenizer.json``, for ``Embedder(folder)``); returns its (vocab, width) table."""

    def write(folder: Path, width: int) -> np.ndarray:
        import tokenizers

        from mixllm.encoders import model_files

        tokenizer = model_files.shipped_model().tokenizer
        vocab = tokenizers.Tokenizer.from_file(str(tokenizer)).get_vocab_size()
        table = np.random.default_rng(width).normal(size=(vocab, width))
        folder.mkdir(parents=True, exist_ok=True)
        _token_table_onnx(folder / "model.onnx", table)
        shutil.copyfile(tokenizer, folder / "tokenizer.json")
        return table

    return write


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, on a free loopback port, stopped afterwards."""
    with RedisServer(tmp_path) as running:
        yield running
