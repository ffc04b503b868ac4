"""What `Router.refit` relearns from, as state files: the rows of the last fit and the feedback
log, written by `Router.save` and read back by `Router.load` so that a loaded Router refits as
the one that was saved would have."""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mixllm._core import InvalidInputError, StateFileError
from mixllm.data import RoutingDataset
from mixllm.routing.learning import LoggedFeedback

TRAINING_FILE = "training.npz"
FEEDBACK_FILE = "feedback.json"
FORMAT_VERSION = 1
# The most rows of a fit kept for the next refit: a fit or refit on more keeps the newest
# (a refit appends the feedback it learned after the rows it had, so the oldest rows of the
# first fit go first). Without a bound they would grow with every refit, and so would each
# refit's work and the saved state.
MAX_TRAINING_ROWS = 50_000
# The largest rows file a save writes and a load reads, on disk and once unpacked (checked
# before numpy unpacks a member): a save keeps the newest rows that fit within it, with a
# warning naming how many it left out.
MAX_TRAINING_BYTES = 256 << 20
# The largest feedback log a save writes and a load reads.
MAX_FEEDBACK_BYTES = 256 << 20

_MATRICES = ("quality", "cost_usd", "output_tokens", "latency_s")


def training_to_bytes(dataset: RoutingDataset) -> bytes:
    """The rows of a fit as a compressed ``.npz``: the numbers as float64 arrays, the texts
    (prompts, models, ids, labels, split) as one UTF-8 JSON document."""
    texts = {
        "prompts": dataset.prompts,
        "models": dataset.models,
        "ids": dataset.ids,
        "labels": dataset.labels,
        "split": dataset.split,
        "tokens_counted": dataset.tokens_counted,
        "output_tokens_counted": dataset.output_tokens_counted,
    }
    arrays: dict[str, NDArray[Any]] = {
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "texts": np.frombuffer(json.dumps(texts).encode("utf-8"), dtype=np.uint8),
        "prompt_tokens": np.asarray(dataset.prompt_tokens),
    }
    for name in _MATRICES:
        value = getattr(dataset, name)
        if value is not None:
            arrays[name] = np.asarray(value)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def training_from_bytes(data: bytes, source: str) -> RoutingDataset:
    """The rows `training_to_bytes` wrote; anything else raises `StateFileError` naming
    ``source``, never unpacking more than ``MAX_TRAINING_BYTES``."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
        if unpacked > MAX_TRAINING_BYTES:
            raise StateFileError(
                f"{source} unpacks to {unpacked} bytes, more than the {MAX_TRAINING_BYTES} "
                "a state holds"
            )
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            members = set(arrays.files)
            version = arrays["format_version"]
            if version.shape != () or int(version) != FORMAT_VERSION:
                raise StateFileError(
                    f"{source}: rows file format {version!r}, this mixllm reads {FORMAT_VERSION}"
                )
            texts = json.loads(bytes(_typed(arrays["texts"], np.uint8, source)).decode("utf-8"))
            numbers = {
                name: _typed(arrays[name], np.float64, source)
                for name in ("prompt_tokens", *_MATRICES)
                if name in members
            }
    except StateFileError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, RecursionError) as err:
        raise StateFileError(f"{source}: unreadable rows file: {err}") from None
    if not isinstance(texts, dict):
        raise StateFileError(f"{source}: the rows' texts are not an object")
    try:
        return RoutingDataset(
            prompts=texts["prompts"],
            models=texts["models"],
            quality=numbers["quality"],
            cost_usd=numbers["cost_usd"],
            prompt_tokens=numbers["prompt_tokens"],
            output_tokens=numbers.get("output_tokens"),
            latency_s=numbers.get("latency_s"),
            labels=texts["labels"],
            split=texts["split"],
            ids=texts["ids"],
            tokens_counted=bool(texts["tokens_counted"]),
            output_tokens_counted=bool(texts["output_tokens_counted"]),
        )
    except (KeyError, TypeError, InvalidInputError) as err:
        raise StateFileError(f"{source}: invalid rows: {err}") from None


def _typed(array: NDArray[Any], dtype: type[np.generic], source: str) -> NDArray[Any]:
    if array.dtype != dtype:
        raise StateFileError(f"{source}: an array holds {array.dtype}, expected {dtype.__name__}")
    return array


def feedback_to_bytes(logged: Sequence[LoggedFeedback]) -> bytes:
    """The feedback log as JSON: one ``[text, model, quality, output_tokens]`` per entry,
    oldest first."""
    entries = [[f.text, f.model, f.quality, f.output_tokens] for f in logged]
    return json.dumps({"format": FORMAT_VERSION, "feedback": entries}).encode("utf-8")


def feedback_from_bytes(data: bytes, source: str, limit: int) -> list[LoggedFeedback]:
    """The log `feedback_to_bytes` wrote, at most ``limit`` entries (the configuration's
    ``feedback_log_size``); anything else raises `StateFileError` naming ``source``."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as err:
        raise StateFileError(f"{source}: unreadable feedback log: {err}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_VERSION:
        raise StateFileError(f"{source}: not a feedback log of format {FORMAT_VERSION}")
    entries = raw.get("feedback")
    if not isinstance(entries, list):
        raise StateFileError(f"{source}: the feedback log holds no list of feedback")
    if len(entries) > limit:
        raise StateFileError(
            f"{source}: {len(entries)} feedback entries, more than feedback_log_size = {limit}"
        )
    return [_entry(item, index, source) for index, item in enumerate(entries)]


def _entry(item: Any, index: int, source: str) -> LoggedFeedback:
    where = f"{source}: feedback[{index}]"
    if not isinstance(item, list) or len(item) != 4:
        raise StateFileError(f"{where} is not [text, model, quality, output_tokens]")
    text, model, quality, tokens = item
    if not isinstance(text, str) or not isinstance(model, str):
        raise StateFileError(f"{where}: text and model must be strings")
    if not _finite(quality):
        raise StateFileError(f"{where}: quality {quality!r} is not a finite number")
    if tokens is not None and not (_finite(tokens) and tokens >= 0):
        raise StateFileError(f"{where}: output_tokens {tokens!r} is not a count")
    return LoggedFeedback(text, model, float(quality), None if tokens is None else float(tokens))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
