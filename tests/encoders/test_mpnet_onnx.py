"""The ONNX graph built from MPNet weights against a numpy forward pass of the architecture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import reference_mpnet
import tiny_mpnet
from mixllm import Embedder
from mixllm.encoders.mpnet_onnx import (
    MpnetConfig,
    build_mpnet_onnx,
    read_safetensors,
    relative_position_buckets,
)
from mixllm.errors import ModelFileError


def _built(folder: Path) -> object:
    """The checked ONNX model of the upstream files in ``folder``."""
    import onnx

    model = build_mpnet_onnx(
        read_safetensors(folder / "model.safetensors"), MpnetConfig.read(folder / "config.json")
    )
    onnx.checker.check_model(model)
    return model


def _session(folder: Path) -> object:
    import onnxruntime

    return onnxruntime.InferenceSession(
        _built(folder).SerializeToString(),  # type: ignore[attr-defined]
        providers=["CPUExecutionProvider"],
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("tiny-mpnet")
    return folder, tiny_mpnet.write_folder(folder)


@pytest.fixture(scope="module")
def model_dir(
    tiny: tuple[Path, dict[str, np.ndarray]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A model directory as the Embedder takes it: the built model.onnx and tokenizer.json."""
    import onnx

    folder = tmp_path_factory.mktemp("tiny-mpnet-onnx")
    onnx.save(_built(tiny[0]), str(folder / "model.onnx"))
    (folder / "tokenizer.json").write_bytes((tiny[0] / "tokenizer.json").read_bytes())
    return folder


def test_buckets_follow_the_rule_pair_by_pair() -> None:
    length = 300  # past max_distance, so the clamped last buckets are covered too
    table = relative_position_buckets(length)
    expected = np.array(
        [[reference_mpnet.bucket(i, j) for j in range(length)] for i in range(length)]
    )
    np.testing.assert_array_equal(table, expected)
    # A few by hand: same token; the key one after / before the query; far apart both ways.
    assert table[5, 5] == 0
    assert table[0, 1] == 17 and table[1, 0] == 1
    assert table[0, 7] == 23 and table[7, 0] == 7  # the exact range ends at 8
    assert table[299, 0] == 15 and table[0, 299] == 31


def test_graph_matches_the_numpy_forward_pass_with_padding(
    tiny: tuple[Path, dict[str, np.ndarray]],
) -> None:
    folder, weights = tiny
    session = _session(folder)
    rng = np.random.default_rng(3)
    lengths = [tiny_mpnet.MAX_TOKENS, 37, 9, 1]  # the longest sequence the positions allow
    width = max(lengths)
    ids = np.full((len(lengths), width), tiny_mpnet.CONFIG["pad_token_id"], dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(3, 30000, size=n)
        mask[row, :n] = 1
    got = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]  # type: ignore[attr-defined]
    want = reference_mpnet.hidden_states(
        weights, tiny_mpnet.CONFIG, ids, pad_id=tiny_mpnet.CONFIG["pad_token_id"]
    )
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=2e-4, rtol=1e-4)
    # Each padded row's real tokens are exactly what the row gives alone.
    alone = session.run(  # type: ignore[attr-defined]
        None, {"input_ids": ids[2:3, :9], "attention_mask": mask[2:3, :9]}
    )[0]
    np.testing.assert_allclose(got[2, :9], alone[0], atol=1e-5)


def test_padding_id_does_not_matter(tiny: tuple[Path, dict[str, np.ndarray]]) -> None:
    """The Embedder pads with 0; positions come from the mask, so the real tokens' states are
    the same whatever fills the padding."""
    session = _session(tiny[0])
    ids = np.array([[101, 2023, 2003, 1037, 102], [101, 7592, 102, 1, 1]], dtype=np.int64)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=np.int64)
    with_pad = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]  # type: ignore[attr-defined]
    ids[1, 3:] = 0
    with_zero = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]  # type: ignore[attr-defined]
    np.testing.assert_allclose(with_pad[1, :3], with_zero[1, :3], atol=1e-6)


def test_embedder_runs_a_built_model_directory(
    tiny: tuple[Path, dict[str, np.ndarray]], model_dir: Path
) -> None:
    weights = tiny[1]
    texts = ["What is the capital of France?", "hi", "a longer sentence " * 5]
    embedder = Embedder(model_dir, cache_size=0, max_tokens=tiny_mpnet.MAX_TOKENS)
    assert embedder.dim == tiny_mpnet.CONFIG["hidden_size"]
    got = embedder.embed(texts)
    for text, vector in zip(texts, got, strict=True):
        ids = embedder._tokenizer.encode_batch([text])[0]
        want = reference_mpnet.sentence_vector(weights, tiny_mpnet.CONFIG, ids)
        np.testing.assert_allclose(vector, want, atol=2e-5)


def test_the_embedder_refuses_a_window_longer_than_the_positions(model_dir: Path) -> None:
    limit = tiny_mpnet.MAX_TOKENS
    with pytest.raises(ModelFileError, match=f"takes at most {limit} tokens per text; max_tokens"):
        Embedder(model_dir, cache_size=0, max_tokens=limit + 1)
    assert Embedder(model_dir, cache_size=0, max_tokens=limit).max_tokens == limit


def test_missing_or_misshapen_weight_is_named(tiny: tuple[Path, dict[str, np.ndarray]]) -> None:
    folder, weights = tiny
    config = MpnetConfig.read(folder / "config.json")
    missing = {k: v for k, v in weights.items() if k != "encoder.layer.1.attention.attn.v.bias"}
    with pytest.raises(ModelFileError, match=r"encoder\.layer\.1\.attention\.attn\.v\.bias"):
        build_mpnet_onnx(missing, config)
    misshapen = dict(weights)
    misshapen["encoder.relative_attention_bias.weight"] = np.zeros((16, 4), dtype=np.float32)
    with pytest.raises(ModelFileError, match=r"relative_attention_bias.*\(16, 4\).*\(32, 4\)"):
        build_mpnet_onnx(misshapen, config)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "bert"}, "model_type is 'bert'"),
        ({"hidden_act": "relu"}, "hidden_act 'relu'"),
        ({"hidden_size": 18}, "not a multiple of num_attention_heads"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
        ({"layer_norm_eps": -1}, "layer_norm_eps"),
        ({"pad_token_id": 0}, "pad_token_id 0 .* must be 1 and 32"),
        ({"relative_attention_num_buckets": 64}, "relative_attention_num_buckets 64 must be"),
    ],
)
def test_config_errors_name_the_field(change: dict[str, object], message: str) -> None:
    with pytest.raises(ModelFileError, match=message):
        MpnetConfig({**tiny_mpnet.CONFIG, **change})


def test_unreadable_safetensors_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x05\x00")
    with pytest.raises(ModelFileError, match="too short"):
        read_safetensors(path)
    path.write_bytes((10**6).to_bytes(8, "little") + b"{}")
    with pytest.raises(ModelFileError, match="exceeds the file"):
        read_safetensors(path)
    tiny_mpnet.write_safetensors(path, {"x": np.zeros((2, 3), dtype=np.float32)})
    truncated = path.read_bytes()[:-4]
    path.write_bytes(truncated)
    with pytest.raises(ModelFileError, match="tensor x has a byte range"):
        read_safetensors(path)
    header = json.dumps({"x": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\x00\x00")
    with pytest.raises(ModelFileError, match="unsupported dtype BF16"):
        read_safetensors(path)
