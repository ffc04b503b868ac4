"""Loading a ``tokenizer.json`` into the core's tokenizer (`mixllm._core.Tokenizer`), with
every way a file can be wrong reported as a `ModelFileError` that names it."""

from __future__ import annotations

import os
from typing import Literal

from mixllm._core import MixllmError, Tokenizer
from mixllm.errors import ModelFileError

__all__ = ["load_tokenizer"]


def load_tokenizer(
    path: str | os.PathLike[str],
    *,
    max_tokens: int | None = None,
    truncation: Literal["head", "tail"] = "head",
) -> Tokenizer:
    """The tokenizer at ``path``, never padding, truncating to ``max_tokens`` (special tokens
    included) when given, at the end ``truncation`` names.

    Raises:
        ModelFileError: the file is missing, unreadable or not a tokenizer.
    """
    try:
        return Tokenizer(path, max_tokens=max_tokens, truncation=truncation)
    except (OSError, MixllmError) as err:
        raise ModelFileError(f"cannot read tokenizer {os.fspath(path)}: {err}") from err
