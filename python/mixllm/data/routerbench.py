"""RouterBench loaders: the CSV layout RouterDC published and the published pickles."""

from __future__ import annotations

import ast
import csv
import hashlib
import math
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mixllm._core import InvalidInputError
from mixllm.data.dataset import RoutingDataset
from mixllm.data.tokens import count_tokens
from mixllm.errors import DatasetUnavailableError

__all__ = ["load_routerbench", "load_routerbench_csv"]


_F64 = NDArray[np.float64]


ROUTERBENCH_REPO = "withmartian/routerbench"
_COST_SUFFIX = "|total_cost"
_RESPONSE_SUFFIX = "|model_response"
_CSV_NAME = re.compile(r"^(?P<bench>.+)_(?P<split>train|test)\.csv$")


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
