"""Exact rewrites of a BERT encoder's ONNX graph that leave fewer, larger operators to run.

The MiniLM export spends much of a short query's forward pass outside the matrix products:
ONNX Runtime runs every node at a fixed cost, and the export spends nodes on shape bookkeeping
and on operators spelled out in parts. Each rewrite below recognises one such pattern,
replaces it by operators ONNX Runtime has a single kernel for, and leaves any graph where the
pattern is not found as it is. They run on the float graph before dynamic quantisation, so the
quantiser sees the same matrix products (the merged query/key/value weights are quantised per
output channel, hence channel for channel as before). None changes an output for any input,
padded or not (the softmax's NaN guard, for one, stays: a tokenizer that adds no special
tokens can give a row whose every key is masked).

* **The keys' transpose**: ``Transpose(0, 2, 1, 3) → Reshape → Transpose(0, 2, 1) → Reshape``,
  which for the export's shapes (the heads folded into the batch and back) is one
  ``Transpose(perm=[0, 2, 3, 1])``. The reshapes' targets are computed at run time, so the
  structure is what is matched, and the probe below is what confirms the shapes.
* **GELU** spelled out as ``x · 0.5 · (1 + erf(x / √2))`` becomes ONNX Runtime's ``Gelu``.
* **Query, key and value projections** of one input: three ``MatMul`` + bias ``Add`` become one
  of each on the concatenated weights, and a ``Split``.

``simplify`` returns the names of the rewrites that found something. ``simplify_checked`` runs
them on a copy and keeps the copy only if ONNX Runtime gives it all of the original's outputs
on a probe batch (a whole row, a half-padded one, an all-padding one), so a graph that merely
resembles a pattern is never changed in meaning; a graph the rewrites or the probe cannot
take is kept as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
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

    def replace(self, replaced: list[onnx.NodeProto], nodes: list[onnx.NodeProto]) -> None:
        """Puts ``nodes``, which produce the tensors ``replaced`` did under the same names,
        where the earliest of ``replaced`` was; the rest of a replaced chain is pruned later."""
        at = min(list(self.graph.node).index(node) for node in replaced)
        for node in replaced:
            self.graph.node.remove(node)
        for offset, node in enumerate(nodes):
            self.graph.node.insert(at + offset, node)

    def prune(self) -> None:
        """Removes nodes whose outputs nothing reads, and initializers nothing reads (a graph
        input of the same name keeps its initializer, as does a name a subgraph reads)."""
        kept_names = {o.name for o in self.graph.output} | {i.name for i in self.graph.input}
        while True:
            read = _names_read(self.graph.node) | kept_names
            kept = [n for n in self.graph.node if any(out in read for out in n.output)]
            if len(kept) == len(self.graph.node):
                break
            del self.graph.node[:]
            self.graph.node.extend(kept)
        read = _names_read(self.graph.node) | kept_names
        inits = [t for t in self.graph.initializer if t.name in read]
        del self.graph.initializer[:]
        self.graph.initializer.extend(inits)


def _names_read(nodes: Iterable[onnx.NodeProto]) -> set[str]:
    """Every tensor name the nodes read, the names their subgraphs (``If``, ``Loop``) read
    included."""
    read: set[str] = set()
    for node in nodes:
        read.update(node.input)
        for attribute in node.attribute:
            for graph in [attribute.g, *attribute.graphs]:
                read |= _names_read(graph.node)
    return read


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


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


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

    if _default_opset(g.model) < 13:  # Split takes its sizes as an input from opset 13
        return False
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
    rewrite applies, the copy's outputs differ from the original's on the probe batch, or the
    rewrites or ONNX Runtime fail on it."""
    import onnx

    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    try:
        applied = simplify(rewritten)
        if not applied:
            return model, []
        same = _same_outputs(_probe_outputs(model), _probe_outputs(rewritten))
    except Exception as err:  # whatever the graph or ONNX Runtime raise: the original still runs
        _log.warning("graph rewrites failed (%s); kept the graph as it was", err)
        return model, []
    if not same:
        _log.warning(
            "graph rewrites %s changed the model's outputs; kept the graph as it was", applied
        )
        return model, []
    return rewritten, applied


def _same_outputs(expected: list[Any], actual: list[Any]) -> bool:
    import numpy as np

    if len(expected) != len(actual):
        return False
    for want, got in zip(expected, actual, strict=True):
        if want.shape != got.shape:
            return False
        scale = max(float(np.nanmax(np.abs(want), initial=0.0)), 1.0)
        if not np.allclose(want, got, rtol=0.0, atol=1e-4 * scale, equal_nan=True):
            return False
    return True


def _probe_outputs(model: onnx.ModelProto) -> list[Any]:
    """Every output for three rows of token ids: one whole, one half padding, one all padding."""
    import numpy as np
    import onnxruntime  # type: ignore[import-untyped]

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    ids = np.random.default_rng(0).integers(1, 100, size=(3, 24), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1, 12:] = 0
    mask[2, :] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    names = {i.name for i in session.get_inputs()}
    return list(session.run(None, {k: v for k, v in feeds.items() if k in names}))
