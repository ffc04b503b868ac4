"""Token counts with the shipped encoder's tokenizer, for data that carries none."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from mixllm._core import InvalidInputError, Tokenizer

__all__ = ["count_tokens", "estimate_tokens"]


_F64 = NDArray[np.float64]


_tokenizer_lock = threading.Lock()
_tokenizer: Tokenizer | None = None


def _counting_tokenizer() -> Tokenizer:
    """The shipped MiniLM tokenizer, without truncation, loaded once per process. After loading
    it is only read (the core encodes with the GIL released), so threads can share it."""
    global _tokenizer
    with _tokenizer_lock:
        if _tokenizer is None:
            from mixllm.encoders import model_files
            from mixllm.encoders.tokenizer import load_tokenizer

            _tokenizer = load_tokenizer(model_files.shipped_model().tokenizer)
        return _tokenizer


def _text_list(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise InvalidInputError("texts must be a sequence of str, not a single string")
    items = list(texts)
    for index, text in enumerate(items):
        if not isinstance(text, str):
            raise InvalidInputError(f"texts[{index}] is {type(text).__name__}, expected str")
        _check_unicode(text, f"texts[{index}]")
    return items


def _check_unicode(text: str, where: str) -> None:
    """Refuses a str that is not valid Unicode (a lone surrogate, which JSON's ``\\ud800``
    escapes and Python's strings allow, but no tokenizer or file can take)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidInputError(
            f"{where} is not valid Unicode: {err.reason} at position {err.start}"
        ) from None


def count_tokens(texts: Sequence[str]) -> _F64:
    """Token counts of ``texts`` with the embedder's tokenizer (all-MiniLM-L6-v2 WordPiece).

    No special tokens ([CLS], [SEP]) are counted and nothing is truncated, so the count grows
    with the text however long it is, and so does the work (`estimate_tokens` bounds it); an
    empty text has 0 tokens. Thread-safe.
    """
    items = _text_list(texts)
    if not items:
        return np.zeros(0, dtype=np.float64)
    return _counting_tokenizer().count(items).astype(np.float64)


# The characters of a text `estimate_tokens` counts exactly: more than the longest window the
# encoder reads (512 tokens) ever spans in practice.
EXACT_COUNT_CHARS = 1 << 15


def estimate_tokens(texts: Sequence[str]) -> _F64:
    """`count_tokens` with work bounded per text: a text of at most `EXACT_COUNT_CHARS`
    characters is counted exactly; a longer one gets the count of its first
    `EXACT_COUNT_CHARS` characters scaled by its length over that (its first part's tokens per
    character, extended to the whole). What the Router counts a prompt's tokens with."""
    items = _text_list(texts)
    if not items:
        return np.zeros(0, dtype=np.float64)
    heads = [t[:EXACT_COUNT_CHARS] for t in items]
    counts = count_tokens(heads)
    scale = np.array([max(1.0, len(t) / EXACT_COUNT_CHARS) for t in items])
    estimated: _F64 = np.round(counts * scale)
    return estimated
