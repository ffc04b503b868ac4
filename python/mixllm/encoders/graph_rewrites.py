"""Exact rewrites of a BERT encoder's ONNX graph that leave fewer, larger operators to run.

The MiniLM export spends much of a short query's forward pass outside the matrix products:
ONNX Runtime runs every node at a fixed cost, and the export's attention carries nodes that
compute nothing a valid input needs. Each rewrite below recognises one such pattern exactly,
replaces it by operators ONNX Runtime has a single kernel for, and leaves any graph where the
pattern is not found as it is. They run on the float graph before dynamic quantisation, so the
quantiser sees the same matrix products (the merged query/key/value weights are quantised per
output channel, hence channel for channel as before).

* **The NaN guard after each softmax** (``Where(IsNaN(p), 0, p)``): a softmax row is NaN only
  when every key is masked out, and the tokenizer always emits ``[CLS]`` and ``[SEP]``, which
  the attention mask keeps.
* **The keys' transpose**: ``Transpose → Reshape(3-D) → Transpose → Reshape(4-D)`` with shape
  arithmetic feeding both reshapes, which is one ``Transpose(perm=[0, 2, 3, 1])``.
* **GELU** spelled out as ``x · 0.5 · (1 + erf(x / √2))`` becomes ONNX Runtime's ``Gelu``.
* **Query, key and value projections** of one input: three ``MatMul`` + bias ``Add`` become one
  of each on the concatenated weights, and a ``Split``.

``simplify`` returns the names of the rewrites that found something. ``simplify_checked`` runs
them on a copy and keeps the copy only if ONNX Runtime gives it the original's outputs on a
padded probe batch, so a graph that merely resembles a pattern is never changed in meaning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

__all__ = ["simplify", "simplify_checked"]

_log = logging.getLogger(__name__)

_MICROSOFT_DOMAIN = "com.microsoft"


class _Graph:
    """Producers and consumers of a graph's tensors, and removal of the nodes left unused."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.producer = {out: node for node in self.graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.initializers = {t.name: t for t in self.graph.initializer}

    def only_consumer(self, name: str, op_type: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        if len(users) == 1 and users[0].op_type == op_type:
            return users[0]
        return None

    def redirect(self, old: str, new: str) -> bool:
        """Makes every reader of tensor ``old`` read ``new`` instead; refuses (``False``) when
        ``old`` is an output of the graph, whose name must stay."""
        if any(o.name == old for o in self.graph.output):
            return False
        for node in self.consumers.get(old, []):
            for k, name in enumerate(node.input):
                if name == old:
                    node.input[k] = new
        return True

    def replace(self, replaced: list[onnx.NodeProto], nodes: list[onnx.NodeProto]) -> None:
        """Puts ``nodes``, which produce the tensors ``replaced`` did under the same names,
        where the earliest of ``replaced`` was; the rest of a replaced chain is pruned later."""
        at = min(list(self.graph.node).index(node) for node in replaced)
        for node in replaced:
            self.graph.node.remove(node)
        for offset, node in enumerate(nodes):
            self.graph.node.insert(at + offset, node)

    def prune(self) -> None:
        """Removes nodes whose outputs nothing reads, and initializers no node reads."""
        outputs = {o.name for o in self.graph.output}
        while True:
            read = {name for node in self.graph.node for name in node.input} | outputs
            kept = [n for n in self.graph.node if any(out in read for out in n.output)]
            if len(kept) == len(self.graph.node):
                break
            del self.graph.node[:]
            self.graph.node.extend(kept)
        read = {name for node in self.graph.node for name in node.input}
        inits = [t for t in self.graph.initializer if t.name in read]
        del self.graph.initializer[:]
        self.graph.initializer.extend(inits)


def _drop_softmax_nan_guards(g: _Graph) -> bool:
    found = False
    for softmax in [n for n in g.graph.node if n.op_type == "Softmax"]:
        users = g.consumers.get(softmax.output[0], [])
        isnan = [n for n in users if n.op_type == "IsNaN"]
        where = [n for n in users if n.op_type == "Where"]
        if len(users) != 2 or len(isnan) != 1 or len(where) != 1:
            continue
        guard = where[0]
        if guard.input[0] != isnan[0].output[0] or guard.input[2] != softmax.output[0]:
            continue
        found = g.redirect(guard.output[0], softmax.output[0]) or found
    return found


def _collapse_key_transposes(g: _Graph) -> bool:
    from onnx import helper

    found = False
    for first in [n for n in g.graph.node if n.op_type == "Transpose"]:
        if _perm(first) != [0, 2, 1, 3]:
            continue
        reshapes = [n for n in g.consumers.get(first.output[0], []) if n.op_type == "Reshape"]
        if len(reshapes) != 1:
            continue
        second = g.only_consumer(reshapes[0].output[0], "Transpose")
        if second is None or _perm(second) != [0, 2, 1]:
            continue
        last = g.only_consumer(second.output[0], "Reshape")
        if last is None:
            continue
        # [batch, seq, heads, head] -> [batch, heads, head, seq]: the keys transposed per head.
        keys_t = helper.make_node(
            "Transpose", [first.input[0]], [last.output[0]], perm=[0, 2, 3, 1],
            name=last.output[0] + "/keys_t",
        )  # fmt: skip
        g.replace([last], [keys_t])
        found = True
    return found


def _perm(node: onnx.NodeProto) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), [])


def _fuse_gelu(g: _Graph) -> bool:
    from onnx import helper

    found = False
    for erf in [n for n in g.graph.node if n.op_type == "Erf"]:
        div = g.producer.get(erf.input[0])
        if div is None or div.op_type != "Div" or not _constant(g, div.input[1], 2.0**0.5):
            continue
        x = div.input[0]
        plus_one = g.only_consumer(erf.output[0], "Add")
        if plus_one is None or not _other_is(g, plus_one, erf.output[0], 1.0):
            continue
        half = g.only_consumer(plus_one.output[0], "Mul")
        if half is None or not _other_is(g, half, plus_one.output[0], 0.5):
            continue
        times_x = g.only_consumer(half.output[0], "Mul")
        if times_x is None or x not in times_x.input:
            continue
        gelu = helper.make_node(
            "Gelu", [x], [times_x.output[0]], domain=_MICROSOFT_DOMAIN,
            name=times_x.output[0] + "/gelu",
        )  # fmt: skip
        g.replace([times_x], [gelu])
        found = True
    if found and not any(o.domain == _MICROSOFT_DOMAIN for o in g.model.opset_import):
        g.model.opset_import.append(helper.make_opsetid(_MICROSOFT_DOMAIN, 1))
    return found


def _constant(g: _Graph, name: str, value: float) -> bool:
    """Whether tensor ``name`` is a one-element constant equal to ``value`` (to float32)."""
    from onnx import numpy_helper

    if name in g.initializers:
        array = numpy_helper.to_array(g.initializers[name])
    else:
        node = g.producer.get(name)
        if node is None or node.op_type != "Constant" or not node.attribute:
            return False
        array = numpy_helper.to_array(node.attribute[0].t)
    return bool(array.size == 1 and abs(float(array.reshape(-1)[0]) - value) <= 1e-6 * value)


def _other_is(g: _Graph, node: onnx.NodeProto, known: str, value: float) -> bool:
    others = [name for name in node.input if name != known]
    return len(others) == 1 and _constant(g, others[0], value)


def _projections_by_input(g: _Graph) -> dict[str, list[tuple[onnx.NodeProto, onnx.NodeProto]]]:
    """``MatMul`` by a constant weight then ``Add`` of a constant bias, grouped by their input."""
    by_input: dict[str, list[tuple[onnx.NodeProto, onnx.NodeProto]]] = {}
    for matmul in [n for n in g.graph.node if n.op_type == "MatMul"]:
        bias = g.only_consumer(matmul.output[0], "Add")
        if bias is None or matmul.input[1] not in g.initializers:
            continue
        if bias.input[0] == matmul.output[0] and bias.input[1] in g.initializers:
            by_input.setdefault(matmul.input[0], []).append((matmul, bias))
    return by_input


def _merge_query_key_value(g: _Graph) -> bool:
    import numpy as np
    from onnx import helper, numpy_helper

    found = False
    for source, pairs in _projections_by_input(g).items():
        if len(pairs) != 3:
            continue
        weights = [numpy_helper.to_array(g.initializers[m.input[1]]) for m, _ in pairs]
        biases = [numpy_helper.to_array(g.initializers[b.input[1]]) for _, b in pairs]
        rows = weights[0].shape[0]
        if any(w.ndim != 2 or w.shape[0] != rows for w in weights) or any(
            b.shape != (w.shape[1],) for w, b in zip(weights, biases, strict=True)
        ):
            continue
        stem = pairs[0][1].output[0] + "/qkv"
        widths = np.array([w.shape[1] for w in weights], dtype=np.int64)
        g.graph.initializer.extend(
            [
                numpy_helper.from_array(np.concatenate(weights, axis=1), stem + "_weight"),
                numpy_helper.from_array(np.concatenate(biases), stem + "_bias"),
                numpy_helper.from_array(widths, stem + "_split"),
            ]
        )
        outputs = [bias.output[0] for _, bias in pairs]
        nodes = [
            helper.make_node("MatMul", [source, stem + "_weight"], [stem + "_mm"], name=stem),
            helper.make_node("Add", [stem + "_mm", stem + "_bias"], [stem], name=stem + "_add"),
            helper.make_node("Split", [stem, stem + "_split"], outputs, axis=-1, name=stem + "_"),
        ]
        g.replace([pairs[0][0]] + [bias for _, bias in pairs], nodes)
        found = True
    return found


_REWRITES: dict[str, Callable[[_Graph], bool]] = {
    "softmax NaN guards dropped": _drop_softmax_nan_guards,
    "key transposes collapsed": _collapse_key_transposes,
    "GELU fused": _fuse_gelu,
    "query/key/value projections merged": _merge_query_key_value,
}


def simplify(model: onnx.ModelProto) -> list[str]:
    """Applies every rewrite whose pattern the graph holds, in place; returns their names."""
    applied = []
    for name, rewrite in _REWRITES.items():
        graph = _Graph(model)
        if rewrite(graph):
            graph.prune()
            applied.append(name)
    return applied


def simplify_checked(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A simplified copy of ``model`` and the rewrites applied, or ``model`` and ``[]`` when no
    rewrite applies or the copy's outputs differ from the original's on the probe batch."""
    import onnx

    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    applied = simplify(rewritten)
    if not applied:
        return model, []
    expected, actual = _probe_outputs(model), _probe_outputs(rewritten)
    scale = max(float(abs(expected).max()), 1.0)
    if expected.shape != actual.shape or float(abs(expected - actual).max()) > 1e-4 * scale:
        _log.warning(
            "graph rewrites %s changed the model's outputs; kept the graph as it was", applied
        )
        return model, []
    return rewritten, applied


def _probe_outputs(model: onnx.ModelProto) -> Any:
    """The first output for two rows of token ids, the second half padded."""
    import numpy as np
    import onnxruntime  # type: ignore[import-untyped]

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    ids = np.random.default_rng(0).integers(1, 100, size=(2, 24), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1, 12:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})[0]
