"""Graph rewrites: the shipped export gets fewer nodes and the same vectors; other graphs are
left alone; a rewrite that changed the outputs would be refused."""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import numpy as np
import pytest

from mixllm.encoders import graph_rewrites, model_files
from mixllm.encoders.embedding import Embedder

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

TEXTS = [
    "hi",
    "What is the capital of France?",
    "Prove that there are infinitely many primes, then say which step fails for twin primes. " * 20,
    "Write a SQL query that returns the top five customers by revenue.",
]
ALL_REWRITES = [
    "key transposes collapsed",
    "GELU fused",
    "query/key/value projections merged",
]


@pytest.fixture(scope="module")
def folded() -> onnx.ModelProto:
    """The shipped export with its weight-only int8 folded into float weights."""
    model = onnx.load(str(model_files.shipped_model().model))
    model_files._fold_weight_dequantisation(model)
    return model


def _ops(model: onnx.ModelProto) -> collections.Counter[str]:
    return collections.Counter(node.op_type for node in model.graph.node)


def test_every_rewrite_applies_to_the_shipped_export(folded: onnx.ModelProto) -> None:
    rewritten, applied = graph_rewrites.simplify_checked(folded)
    assert applied == ALL_REWRITES
    before, after = _ops(folded), _ops(rewritten)
    assert before["IsNaN"] == after["IsNaN"] == 6  # kept: a row may have every key masked
    assert before["Erf"] == 6 and after["Erf"] == 0 and after["Gelu"] == 6
    assert after["Split"] == 6 and after["MatMul"] == before["MatMul"] - 12
    assert sum(after.values()) < sum(before.values()) - 60
    assert _ops(folded) == before  # the original is not touched


def _embedder_without_rewrites(directory: Path) -> Embedder:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(graph_rewrites, "simplify_checked", lambda model: (model, []))
        return Embedder(quantized=True, int8_cache_dir=directory, cache_size=0)


def test_the_int8_model_gives_the_vectors_of_the_unrewritten_one(tmp_path: Path) -> None:
    rewritten = Embedder(quantized=True, int8_cache_dir=tmp_path / "rewritten", cache_size=0)
    plain = _embedder_without_rewrites(tmp_path / "plain")
    ops = _ops(onnx.load(str(rewritten.model_path)))
    assert ops["Gelu"] == 6 and ops["MatMulInteger"] == 24  # rewritten, then quantised
    assert _ops(onnx.load(str(plain.model_path)))["MatMulInteger"] == 36
    # One at a time (as a service embeds) and as one padded batch.
    alone = np.stack([rewritten.embed([t])[0] for t in TEXTS])
    np.testing.assert_allclose(alone, np.stack([plain.embed([t])[0] for t in TEXTS]), atol=1e-5)
    np.testing.assert_allclose(rewritten.embed(TEXTS), plain.embed(TEXTS), atol=1e-5)


def _gelu_graph(divisor: float) -> onnx.ModelProto:
    """y = x * 0.5 * (1 + erf(x / divisor)), the export's spelling of GELU when divisor = √2."""
    const = [
        numpy_helper.from_array(np.array(v, dtype=np.float32), name)
        for name, v in (("d", divisor), ("one", 1.0), ("half", 0.5))
    ]
    nodes = [
        helper.make_node("Div", ["x", "d"], ["s"]),
        helper.make_node("Erf", ["s"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["a"]),
        helper.make_node("Mul", ["half", "a"], ["h"]),
        helper.make_node("Mul", ["x", "h"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "gelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        const,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_graph_that_only_resembles_a_pattern_is_left_alone() -> None:
    model = _gelu_graph(divisor=2.0)  # not GELU: erf(x / 2)
    before = model.SerializeToString()
    assert graph_rewrites.simplify(model) == []
    assert model.SerializeToString() == before


def test_gelu_is_fused_where_it_is_gelu() -> None:
    model = _gelu_graph(divisor=2.0**0.5)
    assert graph_rewrites.simplify(model) == ["GELU fused"]
    assert _ops(model) == {"Gelu": 1}
    assert any(o.domain == "com.microsoft" for o in model.opset_import)


def test_two_projections_of_one_input_are_not_merged() -> None:
    assert graph_rewrites.simplify(_projections(2, opset=17)) == []


def test_a_rewrite_that_changes_the_outputs_is_refused(
    folded: onnx.ModelProto, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def scale_a_layer_norm(graph: graph_rewrites._Graph) -> bool:
        weight = next(t for t in graph.graph.initializer if t.name.endswith("LayerNorm.weight"))
        weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.01, weight.name))
        return True

    monkeypatch.setattr(graph_rewrites, "_REWRITES", {"a wrong rewrite": scale_a_layer_norm})
    with caplog.at_level(logging.WARNING, logger="mixllm.encoders.graph_rewrites"):
        kept, applied = graph_rewrites.simplify_checked(folded)
    assert kept is folded and applied == []
    assert "a wrong rewrite" in caplog.text and "kept the graph as it was" in caplog.text


def _projections(count: int, opset: int) -> onnx.ModelProto:
    """MatMul + bias projections of one input (three: a BERT layer's query, key and value)."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    for k in range(count):
        inits += [
            numpy_helper.from_array(rng.normal(size=(4, 4)).astype(np.float32), f"w{k}"),
            numpy_helper.from_array(rng.normal(size=4).astype(np.float32), f"b{k}"),
        ]
        nodes += [
            helper.make_node("MatMul", ["x", f"w{k}"], [f"m{k}"]),
            helper.make_node("Add", [f"m{k}", f"b{k}"], [f"y{k}"]),
        ]
    outputs = [
        helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT, [2, 4]) for k in range(count)
    ]
    graph = helper.make_graph(
        nodes,
        "qkv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        outputs,
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_projections_merge_only_where_split_takes_its_sizes_as_an_input() -> None:
    assert graph_rewrites.simplify(_projections(3, opset=13)) == [
        "query/key/value projections merged"
    ]
    assert graph_rewrites.simplify(_projections(3, opset=12)) == []


def test_a_graph_the_probe_cannot_run_is_kept_as_it_was(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = _projections(3, opset=13)  # its input is "x", not token ids: the probe cannot feed it
    with caplog.at_level(logging.WARNING, logger="mixllm.encoders.graph_rewrites"):
        kept, applied = graph_rewrites.simplify_checked(model)
    assert kept is model and applied == []
    assert "graph rewrites failed" in caplog.text


def test_pruning_keeps_what_a_subgraph_reads() -> None:
    inner = helper.make_graph(
        [helper.make_node("Identity", ["shared"], ["z"])],
        "branch",
        [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])],
    )
    nodes = [
        helper.make_node("Neg", ["x"], ["shared"]),
        helper.make_node("If", ["c"], ["out"], then_branch=inner, else_branch=inner),
    ]
    graph = helper.make_graph(
        nodes,
        "with-if",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rewrites = graph_rewrites._Graph(model)
    rewrites.prune()
    assert [n.op_type for n in model.graph.node] == ["Neg", "If"]
