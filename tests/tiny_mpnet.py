"""A tiny MPNet encoder with random weights, written as the upstream files are (``config.json``,
``model.safetensors``, ``tokenizer.json``), for tests of the ONNX conversion and the fetch."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

# The shipped MiniLM tokenizer is borrowed: its ids are below 30522, inside this vocabulary.
CONFIG: dict[str, Any] = {
    "model_type": "mpnet",
    "hidden_act": "gelu",
    "hidden_size": 16,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 258,  # 256 tokens: the Embedder's default window
    "relative_attention_num_buckets": 32,
    "vocab_size": 30527,
    "pad_token_id": 1,
    "layer_norm_eps": 1e-5,
}
MAX_TOKENS = CONFIG["max_position_embeddings"] - CONFIG["pad_token_id"] - 1


def weights(seed: int = 0) -> dict[str, NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    h, inner = CONFIG["hidden_size"], CONFIG["intermediate_size"]

    def normal(*shape: int, scale: float = 0.3) -> NDArray[np.float32]:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {
        "embeddings.word_embeddings.weight": normal(CONFIG["vocab_size"], h, scale=1.0),
        "embeddings.position_embeddings.weight": normal(CONFIG["max_position_embeddings"], h),
        "embeddings.LayerNorm.weight": 1.0 + normal(h, scale=0.1),
        "embeddings.LayerNorm.bias": normal(h, scale=0.1),
        # Large enough that a wrong bucket or head order changes the output visibly.
        "encoder.relative_attention_bias.weight": normal(
            CONFIG["relative_attention_num_buckets"], CONFIG["num_attention_heads"], scale=2.0
        ),
    }
    for layer in range(CONFIG["num_hidden_layers"]):
        p = f"encoder.layer.{layer}."
        for name in ("q", "k", "v", "o"):
            w[f"{p}attention.attn.{name}.weight"] = normal(h, h)
            w[f"{p}attention.attn.{name}.bias"] = normal(h, scale=0.1)
        w[p + "intermediate.dense.weight"] = normal(inner, h)
        w[p + "intermediate.dense.bias"] = normal(inner, scale=0.1)
        w[p + "output.dense.weight"] = normal(h, inner)
        w[p + "output.dense.bias"] = normal(h, scale=0.1)
        for norm in ("attention.LayerNorm", "output.LayerNorm"):
            w[f"{p}{norm}.weight"] = 1.0 + normal(h, scale=0.1)
            w[f"{p}{norm}.bias"] = normal(h, scale=0.1)
    return w


def write_safetensors(path: Path, tensors: dict[str, NDArray[Any]]) -> None:
    codes = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        header[name] = {
            "dtype": codes[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


def write_folder(folder: Path, seed: int = 0) -> dict[str, NDArray[np.float32]]:
    """config.json, model.safetensors and tokenizer.json in ``folder``; returns the weights."""
    from mixllm.encoders.model_files import shipped_model

    folder.mkdir(parents=True, exist_ok=True)
    w = weights(seed)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    write_safetensors(folder / "model.safetensors", w)
    shutil.copyfile(shipped_model().tokenizer, folder / "tokenizer.json")
    return w
