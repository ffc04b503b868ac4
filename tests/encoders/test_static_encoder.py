"""The static encoder ``minilm-static``: its table distilled from MiniLM's token vectors
(PCA, frequency weights, special tokens zero), built once into the cache and checked by its
sha256, and encoded in the core exactly as a numpy oracle does with the reference tokenizer;
selectable through the configuration like the other encoders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gil_probe import python_runs_during
from mixllm import Embedder, Router
from mixllm._core import StaticEncoder
from mixllm.config import EmbedderConfig, load_config
from mixllm.encoders import model_files, static_table
from mixllm.encoders.static_table import (
    STATIC_ENCODER,
    distil,
    load_static_table,
    static_table_path,
)
from mixllm.errors import ConfigError, EmbeddingError, ModelFileError

VOCAB = 30522
WIDTH, DIM = 12, 8
TEXTS = [
    "What is the capital of France?",
    "def fib(n): return n if n < 2 else fib(n - 1) + fib(n - 2)",
    "",
    "Ünïcödé ✓ 日本語のテキスト",
]


@pytest.fixture
def fake_token_vectors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[int]:
    """MiniLM's per-token pass replaced by random unit vectors (the real one runs the model
    30,522 times), the table ``DIM`` wide, and mixllm's cache moved to ``tmp_path``; returns
    the build count."""
    builds: list[int] = []
    monkeypatch.setattr(static_table, "STATIC_DIM", DIM)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(VOCAB, WIDTH)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    empty = rng.normal(size=WIDTH).astype(np.float32)

    def fake(**_: object) -> tuple[np.ndarray, np.ndarray, list[int]]:
        builds.append(1)
        return vectors, empty, [101, 102]

    monkeypatch.setattr(static_table, "token_vectors", fake)
    monkeypatch.setenv("MIXLLM_CACHE", str(tmp_path))
    return builds


def test_distil_centres_projects_weights_and_zeroes_the_special_tokens() -> None:
    rng = np.random.default_rng(1)
    vectors = (rng.normal(size=(500, 6)) + 5.0).astype(np.float32)
    empty = rng.normal(size=6).astype(np.float32)
    plain = distil(vectors, empty, [0, 3], dim=4, sif_a=None)
    assert plain.shape == (501, 4) and plain.dtype == np.float32
    assert not plain[[0, 3]].any()
    # Centred principal components: mean zero, uncorrelated, variance falling.
    full = distil(vectors, empty, [], dim=4, sif_a=None).astype(np.float64)
    np.testing.assert_allclose(full[:500].mean(axis=0), 0.0, atol=1e-4)
    covariance = np.cov(full[:500].T)
    np.testing.assert_allclose(covariance - np.diag(np.diag(covariance)), 0.0, atol=1e-3)
    assert list(np.diag(covariance)) == sorted(np.diag(covariance), reverse=True)
    # Frequency weights: a token's row shrinks more the earlier its rank; the empty text's
    # row is not weighted.
    weighted = distil(vectors, empty, [], dim=4, sif_a=1e-3)
    ratio = np.linalg.norm(weighted[:500], axis=1) / np.linalg.norm(full[:500], axis=1)
    assert np.all(np.diff(ratio) > 0) and ratio[-1] < 1.0
    np.testing.assert_allclose(weighted[500], full[500], rtol=1e-5)
    with pytest.raises(ValueError, match=r"dim must be in 1\.\.6"):
        distil(vectors, empty, [], dim=7, sif_a=None)
    with pytest.raises(ValueError, match="sif_a must be > 0"):
        distil(vectors, empty, [], dim=2, sif_a=0.0)


def test_the_core_encodes_as_the_numpy_oracle(fake_token_vectors: list[int]) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    for truncation in ("head", "tail"):
        embedder = Embedder(
            encoder=STATIC_ENCODER, cache_size=0, max_tokens=8, truncation=truncation
        )
        table = load_static_table(embedder.model_path)
        assert embedder.dim == table.shape[1] == DIM
        reference = tokenizers.Tokenizer.from_file(str(model_files.shipped_model().tokenizer))
        reference.no_padding()
        reference.enable_truncation(8, direction="left" if truncation == "tail" else "right")
        expected = []
        for text in TEXTS:
            summed = table[reference.encode(text).ids].astype(np.float64).sum(axis=0)
            if not summed.any():
                summed = table[-1].astype(np.float64)
            expected.append(summed / np.linalg.norm(summed))
        np.testing.assert_allclose(embedder.embed(TEXTS), np.array(expected), atol=1e-6)
    assert fake_token_vectors == [1]  # built once, then read from the cache


def test_the_table_is_cached_checked_and_rebuilt_when_damaged(
    fake_token_vectors: list[int], tmp_path: Path
) -> None:
    path = static_table_path()
    assert path.parent == tmp_path and path.with_suffix(".npy.sha256").is_file()
    assert static_table_path() == path and fake_token_vectors == [1]
    before = path.read_bytes()
    path.write_bytes(before[:-8] + b"\0" * 8)
    assert static_table_path() == path and fake_token_vectors == [1, 1]
    assert path.read_bytes() == before
    static_table_path(rebuild=True)
    assert fake_token_vectors == [1, 1, 1]


def test_a_table_that_does_not_fit_is_a_model_file_error(
    fake_token_vectors: list[int], tmp_path: Path
) -> None:
    path = static_table_path()
    np.save(path, np.zeros((10, 4), dtype=np.float32))
    path.with_suffix(".npy.sha256").write_text(model_files.file_sha256(path) + "\n")
    with pytest.raises(ModelFileError, match=r"token table .*\.npy.*30523 rows"):
        Embedder(encoder=STATIC_ENCODER)
    path.write_bytes(b"not numpy")
    with pytest.raises(ModelFileError, match="cannot read the token table"):
        load_static_table(path)


def test_settings_that_do_not_apply_are_refused(fake_token_vectors: list[int]) -> None:
    with pytest.raises(ValueError, match="quantized and model_sha256 do not apply"):
        Embedder(encoder=STATIC_ENCODER, quantized=True)
    with pytest.raises(ConfigError, match="no int8 copy"):
        EmbedderConfig(encoder=STATIC_ENCODER, quantized=True).validate()
    with pytest.raises(ConfigError, match="minilm-static"):
        EmbedderConfig(encoder="minilm-statics").validate()
    embedder = Embedder(encoder=STATIC_ENCODER)
    with pytest.raises(EmbeddingError, match="reads no token ids"):
        embedder.token_ids(["a"])


def test_the_configuration_selects_it(fake_token_vectors: list[int], tmp_path: Path) -> None:
    path = tmp_path / "router.toml"
    path.write_text(
        '[embedder]\nencoder = "minilm-static"\nmax_tokens = 64\n\n'
        '[[models]]\nname = "small"\nprice_in = 0.1\nprice_out = 0.2\n'
    )
    router = Router(load_config(path))
    embedder = router.embedder
    assert embedder.dim == DIM and embedder.max_tokens == 64
    vectors = embedder.embed(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert embedder.cache_len == len(TEXTS)


def test_the_fetch_command_refuses_a_directory() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mixllm", "encoder", "fetch", STATIC_ENCODER, "--dir", "x"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "--dir and --index-url do not apply" in done.stderr


@pytest.mark.slow
def test_the_distilled_table_keeps_minilms_neighbours(tmp_path: Path) -> None:
    """The real table: texts MiniLM finds alike the static encoder finds alike too."""
    path = static_table_path(tmp_path)
    static = Embedder(encoder=STATIC_ENCODER, int8_cache_dir=tmp_path, cache_size=0)
    assert static.model_path == path
    minilm = Embedder(cache_size=0)
    texts = [
        "How do I reverse a list in Python?",
        "Write Python code that reverses a list.",
        "What is the boiling point of water at sea level?",
        "At what temperature does water boil?",
    ]
    ours, theirs = static.embed(texts), minilm.embed(texts)
    for similarities in (ours @ ours.T, theirs @ theirs.T):
        assert similarities[0, 1] > similarities[0, 2] and similarities[2, 3] > similarities[1, 2]


def test_encoding_releases_the_gil(fake_token_vectors: list[int]) -> None:
    encoder = StaticEncoder(
        model_files.shipped_model().tokenizer,
        load_static_table(static_table_path()),
        max_tokens=512,
    )
    texts = [f"{i} " + "the quick brown fox jumps over the lazy dog " * 60 for i in range(3000)]
    start, end, ticks = python_runs_during(lambda: encoder.encode(texts))
    third = (end - start) / 3
    assert sum(start + third < t < end - third for t in ticks) > 100
