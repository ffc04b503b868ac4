"""Routing data: one in-memory type, :class:`RoutingDataset`, and the loaders that fill it.

A dataset holds ``n`` queries and ``K`` models. For every (query, model) pair it may hold the
model's quality (a score in [0, 1] for RouterBench), the dollar cost of the call, its output
tokens and its latency; NaN means "not observed" (a logged stream only sees the chosen model).

Sources:

* :func:`load_routerbench_csv` -- RouterBench rows as CSV files ``<bench>_{train,test}.csv``
  (the layout RouterDC published). Prompts and responses are stringified Python lists; rows
  with any missing model score are dropped, as RouterBench's own quirk rows need.
* :func:`load_routerbench` -- the published RouterBench pickles (``routerbench_0shot.pkl``,
  ``routerbench_5shot.pkl``) from the Hugging Face dataset ``withmartian/routerbench``,
  downloaded and cached by ``huggingface_hub`` (``pip install 'mixllm[routerbench]'``).
  Unpickling runs code, so a pickle, downloaded or local, is read only with
  ``allow_pickle=True`` or a pinned ``sha256``.
* :func:`load_jsonl` / :func:`save_jsonl` -- one JSON object per query, the format for your
  own logs (``docs/data-format.md``).

RouterBench carries no token counts. Both RouterBench loaders count prompt and output tokens
with the embedder's tokenizer (all-MiniLM-L6-v2's WordPiece, :func:`count_tokens`) and mark the
dataset ``tokens_counted=True``. Those counts are not what each LLM's own tokenizer would give
(a BPE tokenizer splits code and rare words differently), so prices fitted or applied on them
are in "MiniLM tokens"; ``docs/model-catalog.md`` measures the gap per model.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import math
import os
import pickle
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from mixllm._core import InvalidInputError, Tokenizer, UnknownModelError
from mixllm.cost import call_cost_usd
from mixllm.errors import DatasetUnavailableError

__all__ = [
    "TEST_SPLIT_SEED",
    "DatasetUnavailableError",
    "PriceLike",
    "RoutingDataset",
    "count_tokens",
    "estimate_tokens",
    "load_jsonl",
    "load_routerbench",
    "load_routerbench_csv",
    "save_jsonl",
    "split_train_test",
    "validation_split",
]

ROUTERBENCH_REPO = "withmartian/routerbench"
_SPLITS = ("train", "test")
_COST_SUFFIX = "|total_cost"
_RESPONSE_SUFFIX = "|model_response"
_CSV_NAME = re.compile(r"^(?P<bench>.+)_(?P<split>train|test)\.csv$")


_F64 = NDArray[np.float64]


def _float_matrix(value: Any, name: str, shape: tuple[int, ...]) -> _F64:
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"{name} must be numeric: {err}") from err
    if array.shape != shape:
        raise InvalidInputError(f"{name} has shape {array.shape}, expected {shape}")
    if np.isinf(array).any():
        raise InvalidInputError(f"{name} holds infinite values (use NaN for 'not observed')")
    if (array < 0).any():
        raise InvalidInputError(f"{name} holds negative values")
    array.flags.writeable = False
    return array


def _string_list(value: Any, name: str, n: int) -> list[str]:
    if isinstance(value, (str, bytes)):
        raise InvalidInputError(f"{name} must be a list of str, not a single string")
    items = list(value)
    if len(items) != n:
        raise InvalidInputError(f"{name} has {len(items)} entries, expected {n}")
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidInputError(f"{name}[{index}] is {type(item).__name__}, expected str")
    return items


@dataclass(frozen=True, eq=False)
class RoutingDataset:
    """Queries, a pool of models and each model's observed outcome on each query.

    Arrays are float64 and read-only (``np.array(ds.quality)`` gives a writable copy); NaN
    marks an outcome that was not observed. Column ``k`` of every (n, K) array belongs to
    ``models[k]``. Row ids must be unique. ``split`` entries are ``"train"`` or ``"test"``.
    Two datasets compare equal when every field is equal (NaN equal to NaN).
    """

    prompts: list[str]
    models: list[str]
    quality: _F64
    cost_usd: _F64
    prompt_tokens: _F64
    output_tokens: _F64 | None
    latency_s: _F64 | None
    labels: list[str] | None
    split: list[str] | None
    ids: list[str]
    tokens_counted: bool = field(default=False)
    # Whether output tokens were counted by mixllm from response texts (RouterBench's, or the
    # ``response`` of JSON Lines outcomes). Where the counts came from, not part of the data:
    # datasets that differ only here compare equal.
    output_tokens_counted: bool = field(default=False)

    def __post_init__(self) -> None:
        prompts = _string_list(self.prompts, "prompts", len(self.prompts))
        n = len(prompts)
        models = _string_list(self.models, "models", len(self.models))
        if not models:
            raise InvalidInputError("models is empty: a dataset needs at least one model")
        if len(set(models)) != len(models):
            repeated = sorted({m for m in models if models.count(m) > 1})
            raise InvalidInputError(f"models are not unique: {repeated} repeat")
        k = len(models)
        set_ = object.__setattr__
        set_(self, "prompts", prompts)
        set_(self, "models", models)
        set_(self, "quality", _float_matrix(self.quality, "quality", (n, k)))
        set_(self, "cost_usd", _float_matrix(self.cost_usd, "cost_usd", (n, k)))
        tokens = _float_matrix(self.prompt_tokens, "prompt_tokens", (n,))
        if np.isnan(tokens).any():
            raise InvalidInputError("prompt_tokens holds NaN: every query needs a prompt length")
        set_(self, "prompt_tokens", tokens)
        for name in ("output_tokens", "latency_s"):
            value = getattr(self, name)
            if value is not None:
                set_(self, name, _float_matrix(value, name, (n, k)))
        if self.labels is not None:
            set_(self, "labels", _string_list(self.labels, "labels", n))
        if self.split is not None:
            split = _string_list(self.split, "split", n)
            bad = sorted(set(split) - set(_SPLITS))
            if bad:
                raise InvalidInputError(f"split entries must be 'train' or 'test', found {bad}")
            set_(self, "split", split)
        ids = _string_list(self.ids, "ids", n)
        if len(set(ids)) != n:
            seen: set[str] = set()
            for row_id in ids:
                if row_id in seen:
                    raise InvalidInputError(f"ids must be unique: {row_id!r} appears twice")
                seen.add(row_id)
        set_(self, "ids", ids)
        set_(self, "tokens_counted", bool(self.tokens_counted))
        set_(self, "output_tokens_counted", bool(self.output_tokens_counted))

    def __len__(self) -> int:
        return len(self.prompts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RoutingDataset):
            return NotImplemented
        for name in ("prompts", "models", "labels", "split", "ids", "tokens_counted"):
            if getattr(self, name) != getattr(other, name):
                return False
        for name in ("quality", "cost_usd", "prompt_tokens", "output_tokens", "latency_s"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if (mine is None) != (theirs is None):
                return False
            if mine is not None and not np.array_equal(mine, theirs, equal_nan=True):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        splits = "" if self.split is None else f", {self.split.count('test')} test"
        return (
            f"RoutingDataset({len(self)} queries{splits}, {len(self.models)} models, "
            f"tokens_counted={self.tokens_counted})"
        )

    def select(
        self, rows: slice | Sequence[int] | NDArray[np.bool_] | NDArray[np.integer[Any]]
    ) -> RoutingDataset:
        """The rows picked by a slice, integer positions (any order, no repeats) or a mask."""
        n = len(self)
        if isinstance(rows, slice):
            index = np.arange(n)[rows]
        else:
            picked = np.asarray(rows)
            if picked.dtype == np.bool_:
                if picked.shape != (n,):
                    raise InvalidInputError(
                        f"a row mask must have shape ({n},), got {picked.shape}"
                    )
                index = np.flatnonzero(picked)
            elif picked.size == 0:
                index = np.zeros(0, dtype=np.intp)
            elif np.issubdtype(picked.dtype, np.integer) and picked.ndim == 1:
                if picked.min() < -n or picked.max() >= n:
                    raise InvalidInputError(f"row positions must be in [-{n}, {n}), got {rows!r}")
                index = np.where(picked < 0, picked + n, picked)
            else:
                raise InvalidInputError(
                    "rows must be a slice, a 1-d sequence of int or a boolean mask, "
                    f"got dtype {picked.dtype} with shape {picked.shape}"
                )
        positions = [int(i) for i in index]

        def pick(values: list[str] | None) -> list[str] | None:
            return None if values is None else [values[i] for i in positions]

        def rows_of(array: _F64 | None) -> _F64 | None:
            return None if array is None else array[index]

        return replace(
            self,
            prompts=[self.prompts[i] for i in positions],
            quality=self.quality[index],
            cost_usd=self.cost_usd[index],
            prompt_tokens=self.prompt_tokens[index],
            output_tokens=rows_of(self.output_tokens),
            latency_s=rows_of(self.latency_s),
            labels=pick(self.labels),
            split=pick(self.split),
            ids=[self.ids[i] for i in positions],
        )

    def _split_rows(self, which: str) -> RoutingDataset:
        if self.split is None:
            raise InvalidInputError(
                "this dataset has no train/test split: make one with "
                "mixllm.split_train_test(dataset, test_fraction=0.2, seed=0)"
            )
        return self.select(np.array([s == which for s in self.split], dtype=np.bool_))

    def train(self) -> RoutingDataset:
        """The rows whose ``split`` is ``"train"``."""
        return self._split_rows("train")

    def test(self) -> RoutingDataset:
        """The rows whose ``split`` is ``"test"``."""
        return self._split_rows("test")

    def only_models(self, names: Iterable[str]) -> RoutingDataset:
        """The same queries with only these models' columns, in the order given."""
        wanted = [names] if isinstance(names, str) else list(names)
        for name in wanted:
            if name not in self.models:
                raise UnknownModelError(f"model {name!r} is not in this dataset: {self.models}")
        columns = [self.models.index(name) for name in wanted]

        def cols(array: _F64 | None) -> _F64 | None:
            return None if array is None else array[:, columns]

        return replace(
            self,
            models=wanted,
            quality=self.quality[:, columns],
            cost_usd=self.cost_usd[:, columns],
            output_tokens=cols(self.output_tokens),
            latency_s=cols(self.latency_s),
        )

    def without_models(self, names: Iterable[str]) -> RoutingDataset:
        """The same queries without these models' columns; the others keep their order."""
        dropped = {names} if isinstance(names, str) else set(names)
        for name in sorted(dropped):
            if name not in self.models:
                raise UnknownModelError(f"model {name!r} is not in this dataset: {self.models}")
        return self.only_models(m for m in self.models if m not in dropped)


# ---------------------------------------------------------------------------------------------
# Token counting

_tokenizer_lock = threading.Lock()
_tokenizer: Tokenizer | None = None


def _counting_tokenizer() -> Tokenizer:
    """The shipped MiniLM tokenizer, without truncation, loaded once per process. After loading
    it is only read (the core encodes with the GIL released), so threads can share it."""
    global _tokenizer
    with _tokenizer_lock:
        if _tokenizer is None:
            from mixllm import model_files
            from mixllm.tokenizer import load_tokenizer

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


# ---------------------------------------------------------------------------------------------
# RouterBench


def _routerbench_text(value: Any) -> str | None:
    """RouterBench text cells hold a list of strings, or its ``str()``: joined by newlines."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (list, tuple)):
        return "\n".join(str(part) for part in value)
    text = str(value)
    if text == "":
        return None
    if text.startswith("[") and text.endswith("]"):
        try:
            parts = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return text
        if isinstance(parts, list) and all(isinstance(p, str) for p in parts):
            return "\n".join(parts)
    return text


def _number(value: Any) -> float:
    if value is None or value == "":
        return math.nan
    return float(value)


def _routerbench_dataset(
    columns: Mapping[str, Sequence[Any]],
    row_index: Sequence[Any],
    split: Sequence[str] | None,
    source: str,
) -> RoutingDataset:
    """RouterBench columns (as in the pickles and the CSV files) to a dataset.

    Models are the columns ``m`` that have an ``m|total_cost`` partner, in column order.
    Rows with any missing model score are dropped (RouterBench's duplicated-id quirk rows are
    among them). An id still repeated after that gets ``@<row index>`` appended.
    """
    for needed in ("prompt", "sample_id"):
        if needed not in columns:
            raise InvalidInputError(f"{source}: no {needed!r} column; is this RouterBench data?")
    models = [c for c in columns if f"{c}{_COST_SUFFIX}" in columns and "|" not in c]
    if not models:
        raise InvalidInputError(
            f"{source}: no model columns (a '<model>' score column with '<model>{_COST_SUFFIX}')"
        )
    n = len(columns["prompt"])
    try:
        quality = np.array([[_number(v) for v in columns[m]] for m in models]).T
        cost = np.array([[_number(v) for v in columns[m + _COST_SUFFIX]] for m in models]).T
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"{source}: a score or cost is not a number: {err}") from err
    if quality.shape != (n, len(models)) or cost.shape != (n, len(models)):
        raise InvalidInputError(f"{source}: the columns have different lengths")
    keep = ~np.isnan(quality).any(axis=1)
    rows = [int(i) for i in np.flatnonzero(keep)]
    prompts: list[str] = []
    for i in rows:
        text = _routerbench_text(columns["prompt"][i])
        prompts.append("" if text is None else text)
    responses: list[str] = []
    response_at: list[tuple[int, int]] = []
    has_responses = False
    for k, model in enumerate(models):
        column = columns.get(model + _RESPONSE_SUFFIX)
        if column is None:
            continue
        has_responses = True
        for r, i in enumerate(rows):
            text = _routerbench_text(column[i])
            if text is not None:
                responses.append(text)
                response_at.append((r, k))
    counts = count_tokens(prompts + responses)
    output_tokens: _F64 | None = None
    if has_responses:
        output_tokens = np.full((len(rows), len(models)), np.nan)
        for (r, k), tokens in zip(response_at, counts[len(prompts) :], strict=True):
            output_tokens[r, k] = tokens
    ids = [str(columns["sample_id"][i]) for i in rows]
    seen: dict[str, int] = {}
    for sample_id in ids:
        seen[sample_id] = seen.get(sample_id, 0) + 1
    ids = [
        f"{sample_id}@{row_index[i]}" if seen[sample_id] > 1 else sample_id
        for sample_id, i in zip(ids, rows, strict=True)
    ]
    labels = None
    if "eval_name" in columns:
        labels = [str(columns["eval_name"][i]) for i in rows]
    return RoutingDataset(
        prompts=prompts,
        models=models,
        quality=quality[rows],
        cost_usd=cost[rows],
        prompt_tokens=counts[: len(prompts)],
        output_tokens=output_tokens,
        latency_s=None,
        labels=labels,
        split=None if split is None else [split[i] for i in rows],
        ids=ids,
        tokens_counted=True,
        output_tokens_counted=has_responses,
    )


def load_routerbench_csv(directory: str | os.PathLike[str]) -> RoutingDataset:
    """RouterBench rows from ``<bench>_train.csv`` / ``<bench>_test.csv`` files in a directory.

    ``split`` comes from each file's name, ``labels`` from ``eval_name``, ``ids`` from
    ``sample_id``, ``cost_usd`` from ``<model>|total_cost``; token counts are computed with
    :func:`count_tokens` (prompt text, and ``<model>|model_response`` for output tokens).
    Files are read in name order. Rows with any missing model score are dropped.
    """
    root = Path(directory)
    if not root.is_dir():
        raise DatasetUnavailableError(f"{root} is not a directory of RouterBench CSV files")
    files = sorted(p for p in root.iterdir() if _CSV_NAME.match(p.name) and p.is_file())
    if not files:
        raise DatasetUnavailableError(
            f"{root} has no RouterBench CSV files (named <bench>_train.csv / <bench>_test.csv)"
        )
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 28))
    header: list[str] | None = None
    columns: dict[str, list[str]] = {}
    row_index: list[str] = []
    split: list[str] = []
    for path in files:
        match = _CSV_NAME.match(path.name)
        assert match is not None
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.reader(handle)
                file_header = next(reader, None)
                if file_header is None:
                    continue
                if header is None:
                    header = file_header
                    columns = {name: [] for name in header}
                elif file_header != header:
                    raise InvalidInputError(
                        f"{path} has different columns from {files[0].name}: "
                        f"{sorted(set(file_header) ^ set(header))}"
                    )
                for line, record in enumerate(reader, start=2):
                    if len(record) != len(header):
                        raise InvalidInputError(
                            f"{path}, record {line}: {len(record)} fields, expected {len(header)}"
                        )
                    for name, value in zip(header, record, strict=True):
                        columns[name].append(value)
                    row_index.append(record[0])
                    split.append(match["split"])
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise DatasetUnavailableError(f"cannot read {path}: {err}") from err
    if header is None:
        raise InvalidInputError(f"every RouterBench CSV file in {root} is empty")
    return _routerbench_dataset(columns, row_index, split, str(root))


def _is_network_error(err: BaseException) -> bool:
    """Whether a hub download failed because the hub could not be reached."""
    names = {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectError", "ConnectTimeout"}
    seen: BaseException | None = err
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, (ConnectionError, TimeoutError)) or type(seen).__name__ in names:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _sha256_argument(value: object) -> str:
    if not isinstance(value, str) or re.fullmatch(r"[0-9a-fA-F]{64}", value) is None:
        raise InvalidInputError(f"sha256 must be 64 hexadecimal digits, got {value!r}")
    return value.lower()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(
    filename: str, cache_dir: str | os.PathLike[str] | None, revision: str | None
) -> Path:
    try:
        import huggingface_hub
    except ImportError as err:
        raise DatasetUnavailableError(
            "downloading RouterBench needs huggingface_hub and pandas: "
            "pip install 'mixllm[routerbench]'"
        ) from err
    try:
        path = huggingface_hub.hf_hub_download(
            repo_id=ROUTERBENCH_REPO,
            filename=filename,
            repo_type="dataset",
            revision=revision,
            cache_dir=None if cache_dir is None else str(cache_dir),
        )
    except Exception as err:  # the hub client raises many kinds; sort them by cause
        cause = str(err).splitlines()[0] if str(err) else type(err).__name__
        if _is_network_error(err):
            raise DatasetUnavailableError(
                f"cannot reach the Hugging Face hub to download {ROUTERBENCH_REPO}/{filename} "
                f"({type(err).__name__}); with a local copy, use "
                "mixllm.load_routerbench_csv(directory) for the CSV files or "
                f"mixllm.load_routerbench('path/to/{filename}', allow_pickle=True)"
            ) from err
        raise DatasetUnavailableError(
            f"cannot download {ROUTERBENCH_REPO}/{filename} from the Hugging Face hub: {cause}"
        ) from err
    return Path(path)


def _read_frame(path: Path) -> Any:
    try:
        with path.open("rb") as handle:
            frame = pickle.load(handle)  # only the hub file, or a local one by explicit opt-in
    except ModuleNotFoundError as err:
        raise DatasetUnavailableError(
            f"{path} is a pickled pandas DataFrame: reading it needs {err.name} "
            "(pip install 'mixllm[routerbench]')"
        ) from err
    except OSError as err:
        raise DatasetUnavailableError(f"cannot read {path}: {err}") from err
    except Exception as err:  # a broken pickle raises almost anything
        raise InvalidInputError(f"{path} is not a readable pickle: {err}") from err
    if not (hasattr(frame, "columns") and hasattr(frame, "index")):
        raise InvalidInputError(
            f"{path} holds a {type(frame).__name__}, expected a pandas DataFrame of RouterBench"
        )
    return frame


def load_routerbench(
    source: str | os.PathLike[str] = "hub",
    *,
    filename: str = "routerbench_0shot.pkl",
    cache_dir: str | os.PathLike[str] | None = None,
    allow_pickle: bool = False,
    sha256: str | None = None,
    revision: str | None = None,
) -> RoutingDataset:
    """The full RouterBench: its pickled DataFrame from the hub, or a local copy.

    Unpickling runs whatever code the file names, and a file in the hub's cache can be
    replaced by anyone who can write there, so no pickle is read, from the hub or not, unless
    ``allow_pickle=True`` says you trust it or ``sha256`` pins the exact file (checked before
    it is unpickled).

    Args:
        source: ``"hub"`` downloads ``filename`` from the Hugging Face dataset
            ``withmartian/routerbench`` (cached by ``huggingface_hub``, under ``cache_dir``
            when given), at ``revision`` (a commit hash pins it; default: the latest). A
            directory is read with :func:`load_routerbench_csv`. A file is read as a pickle.
        filename: ``routerbench_0shot.pkl`` or ``routerbench_5shot.pkl``.
        allow_pickle: read a pickle you trust without pinning its hash.
        sha256: the pickle's expected sha256 (hex); a file with another is refused.

    The frame has no train/test split: make one with :func:`split_train_test`.

    Raises:
        DatasetUnavailableError: the hub cannot be reached, or the file cannot be read.
        InvalidInputError: a pickle with neither ``allow_pickle=True`` nor a matching
            ``sha256``, or not RouterBench.
    """
    expected = None if sha256 is None else _sha256_argument(sha256)
    if isinstance(source, str) and source == "hub":
        if not allow_pickle and expected is None:
            raise InvalidInputError(
                f"refusing to unpickle {ROUTERBENCH_REPO}/{filename}: loading a pickle can run "
                "arbitrary code, and the hub's cached copy is not pinned. Pass "
                "sha256='<the file's sha256>' (and revision='<commit>') to pin it, or "
                "allow_pickle=True if you trust it"
            )
        path = _download(filename, cache_dir, revision)
    else:
        path = Path(source)
        if path.is_dir():
            return load_routerbench_csv(path)
        if not path.is_file():
            raise DatasetUnavailableError(f"{path} does not exist")
        if not allow_pickle and expected is None:
            raise InvalidInputError(
                f"refusing to unpickle {path}: loading a pickle can run arbitrary code. "
                "If you trust the file, pass allow_pickle=True (or sha256= to pin it)"
            )
    if expected is not None:
        try:
            actual = _file_sha256(path)
        except OSError as err:
            raise DatasetUnavailableError(f"cannot read {path}: {err}") from err
        if actual != expected:
            raise InvalidInputError(
                f"refusing to unpickle {path}: its sha256 is {actual}, not the pinned {expected}"
            )
    frame = _read_frame(path)
    try:
        columns = {str(name): frame[name].tolist() for name in frame.columns}
        row_index = list(frame.index)
    except Exception as err:
        raise InvalidInputError(f"{path}: cannot read the frame's columns: {err}") from err
    return _routerbench_dataset(columns, row_index, None, str(path))


def split_train_test(
    dataset: RoutingDataset, test_fraction: float = 0.2, seed: int = 0
) -> RoutingDataset:
    """The dataset with ``split`` set: a random ``test_fraction`` of rows become ``"test"``.

    Stratified by label when the dataset has labels (each label contributes
    ``round(test_fraction * its rows)`` test rows), deterministic for a given ``seed`` and row
    order. Any existing split is replaced.
    """
    if not 0.0 < test_fraction < 1.0:
        raise InvalidInputError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    labels = dataset.labels if dataset.labels is not None else [""] * len(dataset)
    groups: dict[str, list[int]] = {}
    for row, label in enumerate(labels):
        groups.setdefault(label, []).append(row)
    split = ["train"] * len(dataset)
    for label in sorted(groups):
        rows = np.array(groups[label])
        test_count = round(test_fraction * len(rows))
        for row in rng.permutation(rows)[:test_count]:
            split[int(row)] = "test"
    return replace(dataset, split=split)


# The seed of the test split `mixllm eval` draws for data that has none. Fixed, whatever the run's
# seed, so that validation runs over several seeds never read those test rows.
TEST_SPLIT_SEED = 0


def validation_split(
    dataset: RoutingDataset, test_fraction: float = 0.25, seed: int = 0
) -> RoutingDataset:
    """The train rows alone, split again: a random ``test_fraction`` of them (stratified by
    label, as `split_train_test`, drawn with ``seed``) play the test split. For choosing
    settings by evaluating on this split, without ever reading the real test rows. A dataset
    without a split is first split as `mixllm eval` does (20% test, `TEST_SPLIT_SEED` whatever
    ``seed``)."""
    if dataset.split is None:
        dataset = split_train_test(dataset, 0.2, seed=TEST_SPLIT_SEED)
    return split_train_test(dataset.train(), test_fraction, seed=seed)


# ---------------------------------------------------------------------------------------------
# JSONL


class PriceLike(Protocol):
    """Anything with per-million-token prices, e.g. :class:`mixllm.catalog.ModelSpec`."""

    @property
    def price_in(self) -> float: ...
    @property
    def price_out(self) -> float: ...


# An integer id longer than this is refused (str() of a huge int is slow, and no log needs it).
_MAX_ID_DIGITS = 100
_OUTCOME_FIELDS = ("quality", "cost_usd", "output_tokens", "latency_s")
# Outcome fields that are text: the model's answer, whose tokens stand in for a missing
# ``output_tokens``.
_OUTCOME_TEXTS = ("response",)
_ROW_FIELDS = ("id", "query", "label", "split", "prompt_tokens", "outcomes")


def _json_number(value: Any, where: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"{where} must be a number or null, got {_short(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidInputError(f"{where} is too large for a float: {_short(value)}") from None
    if not math.isfinite(number) or number < 0:
        raise InvalidInputError(f"{where} must be a finite number >= 0, got {value!r}")
    return number


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages about huge values."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**limit else "a huge int"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _price_of(spec: PriceLike | tuple[float, float]) -> tuple[float, float, float]:
    if isinstance(spec, tuple):
        price_in, price_out = spec
        return float(price_in), float(price_out), 0.0
    return float(spec.price_in), float(spec.price_out), float(getattr(spec, "fee", 0.0))


def load_jsonl(
    path: str | os.PathLike[str],
    *,
    prices: Mapping[str, PriceLike | tuple[float, float]] | None = None,
) -> RoutingDataset:
    """A dataset from a JSON Lines file (format in ``docs/data-format.md``).

    Models are every name under ``outcomes``, in order of first appearance. A model missing
    from a row, or a field missing from an outcome, is NaN. Rows without ``prompt_tokens`` get
    :func:`count_tokens` of their query (and the dataset ``tokens_counted=True``); outcomes
    with a ``response`` text but no ``output_tokens`` get :func:`count_tokens` of the response
    (and the dataset ``output_tokens_counted=True``).

    ``prices`` maps model names to ``(price_in, price_out)`` in USD per million tokens, or to
    objects with ``price_in``/``price_out`` (and optionally ``fee``) such as the catalog's
    ``ModelSpec``. An outcome without ``cost_usd`` but with ``output_tokens`` then gets
    ``(prompt_tokens * price_in + output_tokens * price_out) / 1e6 + fee``.

    Raises:
        InvalidInputError: a malformed line; the message names the line number and field.
        DatasetUnavailableError: the file cannot be read.
    """
    file = Path(path)
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    try:
        with file.open(encoding="utf-8") as handle:
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                where = f"{file}, line {number}"
                try:
                    row = json.loads(text)
                except (ValueError, RecursionError) as err:
                    # ValueError: bad JSON, or an integer of more digits than Python converts;
                    # RecursionError: nesting deeper than the parser goes.
                    raise InvalidInputError(
                        f"{where}: not valid JSON: {_short(str(err), 200)}"
                    ) from None
                if not isinstance(row, dict):
                    raise InvalidInputError(f"{where}: expected a JSON object")
                rows.append(row)
                lines.append(number)
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetUnavailableError(f"cannot read {file}: {err}") from err
    if not rows:
        raise InvalidInputError(f"{file} holds no rows")
    models: dict[str, int] = {}
    for row, number in zip(rows, lines, strict=True):
        outcomes = row.get("outcomes")
        if not isinstance(outcomes, dict):
            raise InvalidInputError(f"{file}, line {number}: field 'outcomes' must be an object")
        for name in outcomes:
            _check_unicode(name, f"{file}, line {number}: a model name")
            models.setdefault(name, len(models))
    n, k = len(rows), len(models)
    values = {name: np.full((n, k), np.nan) for name in _OUTCOME_FIELDS}
    prompts: list[str] = []
    ids: list[str] = []
    labels: list[str | None] = []
    split: list[str | None] = []
    prompt_tokens = np.full(n, np.nan)
    # (row, column, text) of the responses whose tokens are to be counted.
    responses: list[tuple[int, int, str]] = []
    seen_ids: dict[str, int] = {}
    for r, (row, number) in enumerate(zip(rows, lines, strict=True)):
        where = f"{file}, line {number}"
        unknown = sorted(set(row) - set(_ROW_FIELDS))
        if unknown:
            raise InvalidInputError(f"{where}: unknown field(s) {unknown}")
        query = row.get("query")
        if not isinstance(query, str):
            raise InvalidInputError(f"{where}: field 'query' must be a string")
        _check_unicode(query, f"{where}: field 'query'")
        row_id = row.get("id")
        if isinstance(row_id, bool) or not isinstance(row_id, (str, int)):
            raise InvalidInputError(f"{where}: field 'id' must be a string or an integer")
        if isinstance(row_id, int) and abs(row_id) >= 10**_MAX_ID_DIGITS:
            raise InvalidInputError(
                f"{where}: field 'id' is an integer of over {_MAX_ID_DIGITS} digits"
            )
        row_id = str(row_id)
        _check_unicode(row_id, f"{where}: field 'id'")
        if row_id in seen_ids:
            raise InvalidInputError(
                f"{where}: field 'id' {row_id!r} repeats line {seen_ids[row_id]}"
            )
        seen_ids[row_id] = number
        for name, store in (("label", labels), ("split", split)):
            value = row.get(name)
            if value is not None and not isinstance(value, str):
                raise InvalidInputError(f"{where}: field {name!r} must be a string")
            if value is not None:
                _check_unicode(value, f"{where}: field {name!r}")
            store.append(value)
        if split[-1] is not None and split[-1] not in _SPLITS:
            raise InvalidInputError(f"{where}: field 'split' must be 'train' or 'test'")
        prompt_tokens[r] = _json_number(row.get("prompt_tokens"), f"{where}: field 'prompt_tokens'")
        for model, outcome in row["outcomes"].items():
            if not isinstance(outcome, dict):
                raise InvalidInputError(f"{where}: field 'outcomes.{model}' must be an object")
            extra = sorted(set(outcome) - set(_OUTCOME_FIELDS) - set(_OUTCOME_TEXTS))
            if extra:
                raise InvalidInputError(f"{where}: unknown field(s) {extra} in 'outcomes.{model}'")
            for name in _OUTCOME_FIELDS:
                values[name][r, models[model]] = _json_number(
                    outcome.get(name), f"{where}: field 'outcomes.{model}.{name}'"
                )
            response = outcome.get("response")
            if response is not None and not isinstance(response, str):
                raise InvalidInputError(
                    f"{where}: field 'outcomes.{model}.response' must be a string or null, "
                    f"got {type(response).__name__}"
                )
            if response is not None and math.isnan(values["output_tokens"][r, models[model]]):
                responses.append((r, models[model], response))
        prompts.append(query)
        ids.append(row_id)
    for name, store in (("label", labels), ("split", split)):
        given = [v is not None for v in store]
        if any(given) and not all(given):
            missing = lines[given.index(False)]
            raise InvalidInputError(
                f"{file}, line {missing}: field {name!r} is missing, but other lines have one "
                "(give it on every line or on none)"
            )
    missing_tokens = np.isnan(prompt_tokens)
    if missing_tokens.any():
        prompt_tokens[missing_tokens] = count_tokens(
            [p for p, m in zip(prompts, missing_tokens, strict=True) if m]
        )
    if responses:
        counted = count_tokens([text for _, _, text in responses])
        for (r, k_, _), tokens in zip(responses, counted, strict=True):
            values["output_tokens"][r, k_] = tokens
    cost = values["cost_usd"]
    if prices is not None:
        output = values["output_tokens"]
        for model, spec in prices.items():
            if model not in models:
                continue
            price_in, price_out, fee = _price_of(spec)
            k_ = models[model]
            fill = np.isnan(cost[:, k_]) & ~np.isnan(output[:, k_])
            cost[fill, k_] = call_cost_usd(
                prompt_tokens[fill], output[fill, k_], price_in, price_out, fee
            )

    def optional(name: str) -> _F64 | None:
        array = values[name]
        return None if np.isnan(array).all() else array

    return RoutingDataset(
        prompts=prompts,
        models=list(models),
        quality=values["quality"],
        cost_usd=cost,
        prompt_tokens=prompt_tokens,
        output_tokens=optional("output_tokens"),
        latency_s=optional("latency_s"),
        labels=None if labels[0] is None else [str(v) for v in labels],
        split=None if split[0] is None else [str(v) for v in split],
        ids=ids,
        tokens_counted=bool(missing_tokens.any()),
        output_tokens_counted=bool(responses),
    )


def _json_value(value: float) -> float | int | None:
    if math.isnan(value):
        return None
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def save_jsonl(dataset: RoutingDataset, path: str | os.PathLike[str]) -> None:
    """Writes ``dataset`` as JSON Lines that :func:`load_jsonl` reads back unchanged.

    Unobserved fields are left out (a model none of whose fields were observed on a row is
    left out of that row's ``outcomes``). When ``tokens_counted`` is set, ``prompt_tokens``
    is left out too, so that loading counts them again with the same tokenizer. A model with
    no observed field on any row cannot be represented and raises ``InvalidInputError``.
    The file is written to a temporary name and renamed into place.
    """
    arrays = {"quality": dataset.quality, "cost_usd": dataset.cost_usd}
    if dataset.output_tokens is not None:
        arrays["output_tokens"] = dataset.output_tokens
    if dataset.latency_s is not None:
        arrays["latency_s"] = dataset.latency_s
    observed = np.zeros(dataset.quality.shape, dtype=np.bool_)
    for array in arrays.values():
        observed |= ~np.isnan(array)
    empty = [m for k, m in enumerate(dataset.models) if not observed[:, k].any()]
    if empty:
        raise InvalidInputError(
            f"models {empty} have no observed outcome on any row; JSONL cannot keep them "
            "(drop them with dataset.without_models(...))"
        )
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as handle:
            for r in range(len(dataset)):
                row: dict[str, Any] = {"id": dataset.ids[r], "query": dataset.prompts[r]}
                if dataset.labels is not None:
                    row["label"] = dataset.labels[r]
                if dataset.split is not None:
                    row["split"] = dataset.split[r]
                if not dataset.tokens_counted:
                    row["prompt_tokens"] = _json_value(float(dataset.prompt_tokens[r]))
                outcomes: dict[str, dict[str, float | int]] = {}
                for k, model in enumerate(dataset.models):
                    if not observed[r, k]:
                        continue
                    outcome: dict[str, float | int] = {}
                    for name, array in arrays.items():
                        value = _json_value(float(array[r, k]))
                        if value is not None:
                            outcome[name] = value
                    outcomes[model] = outcome
                row["outcomes"] = outcomes
                handle.write(json.dumps(row) + "\n")
        os.replace(temporary, target)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise DatasetUnavailableError(f"cannot write {target}: {err}") from err
