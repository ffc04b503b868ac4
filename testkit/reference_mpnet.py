"""A plain numpy forward pass of an MPNet encoder (all-mpnet-base-v2), the test oracle for the
ONNX graph mixllm builds from the same weights.

Written from the architecture's definition, one token pair at a time where that is clearer,
with nothing shared with the code under test: embeddings (word + absolute position, positions
counted from padding_idx + 1 over the tokens that are not padding) and LayerNorm; a relative
position bias from 32 log-spaced buckets per signed distance, shared by every layer; post-norm
layers of multi-head attention and an erf-GELU feed-forward. The sentence vector is the mean
over real tokens, L2-normalised.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

# The building blocks are BERT's (an MPNet layer is a BERT layer); the positions are not.
from reference_bert import (
    _gelu,
    _layer_norm,
    _linear,
    _self_attention,
    load_safetensors,
)

F32 = NDArray[np.float32]


def bucket(query: int, key: int, num_buckets: int = 32, max_distance: int = 128) -> int:
    """The relative-position bucket of one (query, key) pair, in float32 like the original."""
    n = query - key
    half = num_buckets // 2
    result = half if n < 0 else 0
    n = abs(n)
    max_exact = half // 2
    if n < max_exact:
        return result + n
    ratio = np.float32(np.log(np.float32(n) / np.float32(max_exact)))
    ratio = np.float32(ratio / np.float32(math.log(max_distance / max_exact)))
    large = max_exact + int(np.float32(ratio * np.float32(half - max_exact)))
    return result + min(large, half - 1)


def hidden_states(
    w: dict[str, Any], config: dict[str, Any], input_ids: NDArray[np.int64], pad_id: int
) -> F32:
    """last_hidden_state (batch, seq, hidden); rows padded with ``pad_id`` on the right."""
    seq = input_ids.shape[1]
    heads = config["num_attention_heads"]
    eps = config["layer_norm_eps"]
    padding_idx = config["pad_token_id"]
    real = input_ids != pad_id
    positions = np.where(real, np.cumsum(real, axis=1) + padding_idx, padding_idx)
    x = (
        w["embeddings.word_embeddings.weight"][input_ids]
        + (w["embeddings.position_embeddings.weight"][positions])
    )
    x = _layer_norm(
        x.astype(np.float32), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps
    )
    table = np.asarray(w["encoder.relative_attention_bias.weight"])
    n_buckets = config["relative_attention_num_buckets"]
    bias = np.empty((heads, seq, seq), dtype=np.float32)
    for i in range(seq):
        for j in range(seq):
            bias[:, i, j] = table[bucket(i, j, n_buckets)]
    masked = np.where(real, 0.0, np.finfo(np.float32).min).astype(np.float32)[:, None, None, :]
    additive = (bias[None] + masked).astype(np.float32)
    for layer in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{layer}."

        qkv = (p + "attention.attn.q", p + "attention.attn.k", p + "attention.attn.v")
        context = _self_attention(w, qkv, x, heads, additive)
        attended = _linear(w, p + "attention.attn.o", context)
        x = _layer_norm(
            attended + x,
            w[p + "attention.LayerNorm.weight"],
            w[p + "attention.LayerNorm.bias"],
            eps,
        )
        inner = _gelu(_linear(w, p + "intermediate.dense", x))
        out = _linear(w, p + "output.dense", inner)
        x = _layer_norm(
            out + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps
        )
    return x


def sentence_vector(w: dict[str, Any], config: dict[str, Any], ids: list[int]) -> F32:
    """The pooled, normalised vector of one unpadded token sequence."""
    h = hidden_states(w, config, np.array([ids], dtype=np.int64), pad_id=-1)[0]
    pooled = h.mean(axis=0)
    return (pooled / np.linalg.norm(pooled)).astype(np.float32)


def main() -> None:
    """Write tests/encoders/reference/mpnet_reference.json: reference vectors of
    all-mpnet-base-v2 for REFERENCE_TEXTS (the same texts as MiniLM's), from the upstream folder
    given as the first argument (``model.safetensors``, ``config.json``, ``tokenizer.json``)::

        python testkit/reference_mpnet.py /path/to/all-mpnet-base-v2
    """
    import tokenizers

    from reference_bert import REFERENCE_TEXTS

    folder = Path(sys.argv[1])
    weights = load_safetensors(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=256)
    rows = [sentence_vector(weights, config, tokenizer.encode(t).ids) for t in REFERENCE_TEXTS]
    out = (
        Path(__file__).resolve().parents[1]
        / "tests"
        / "encoders"
        / "reference"
        / "mpnet_reference.json"
    )
    source = "numpy forward pass of all-mpnet-base-v2 model.safetensors (float32 upstream)"
    vectors = ",\n".join(json.dumps([round(float(x), 7) for x in row]) for row in rows)
    out.write_text(
        f'{{"source": {json.dumps(source)},\n"texts": {json.dumps(REFERENCE_TEXTS)},\n'
        f'"vectors": [\n{vectors}\n]}}\n'
    )


if __name__ == "__main__":
    main()
