"""JSON Lines: one object per query, the format for a user's own logs (docs/data-format.md)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from mixllm._core import InvalidInputError
from mixllm.cost import call_cost_usd
from mixllm.data.dataset import _SPLITS, RoutingDataset
from mixllm.data.tokens import _check_unicode, count_tokens
from mixllm.errors import DatasetUnavailableError
from mixllm.validation import non_negative, shown

__all__ = ["PriceLike", "load_jsonl", "save_jsonl"]


_F64 = NDArray[np.float64]


# JSONL


class PriceLike(Protocol):
    """Anything with per-million-token prices, e.g. :class:`mixllm.routing.catalog.ModelSpec`."""

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
    """A JSON number >= 0, or NaN for null."""
    return math.nan if value is None else non_negative(where, value)


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
    rows, lines = _read_json_rows(file)
    models = _model_columns(file, rows, lines)
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
        row_id = _row_id(row, where, number, seen_ids)
        _row_label_and_split(row, where, labels, split)
        prompt_tokens[r] = _json_number(row.get("prompt_tokens"), f"{where}: field 'prompt_tokens'")
        _row_outcomes(row, where, r, models, values, responses)
        prompts.append(query)
        ids.append(row_id)
    _check_all_or_none(file, lines, labels, split)
    tokens_counted = _count_missing_tokens(prompts, prompt_tokens, values, responses)
    if prices is not None:
        _fill_costs(values, prompt_tokens, models, prices)

    def optional(name: str) -> _F64 | None:
        array = values[name]
        return None if np.isnan(array).all() else array

    return RoutingDataset(
        prompts=prompts,
        models=list(models),
        quality=values["quality"],
        cost_usd=values["cost_usd"],
        prompt_tokens=prompt_tokens,
        output_tokens=optional("output_tokens"),
        latency_s=optional("latency_s"),
        labels=None if labels[0] is None else [str(v) for v in labels],
        split=None if split[0] is None else [str(v) for v in split],
        ids=ids,
        tokens_counted=tokens_counted,
        output_tokens_counted=bool(responses),
    )


def _read_json_rows(file: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The JSON object of every non-blank line of ``file``, and its line number."""
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
                        f"{where}: not valid JSON: {shown(str(err), 200)}"
                    ) from None
                if not isinstance(row, dict):
                    raise InvalidInputError(f"{where}: expected a JSON object")
                rows.append(row)
                lines.append(number)
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetUnavailableError(f"cannot read {file}: {err}") from err
    if not rows:
        raise InvalidInputError(f"{file} holds no rows")
    return rows, lines


def _model_columns(file: Path, rows: list[dict[str, Any]], lines: list[int]) -> dict[str, int]:
    """Every model named under the rows' ``outcomes``, in order of first appearance."""
    models: dict[str, int] = {}
    for row, number in zip(rows, lines, strict=True):
        outcomes = row.get("outcomes")
        if not isinstance(outcomes, dict):
            raise InvalidInputError(f"{file}, line {number}: field 'outcomes' must be an object")
        for name in outcomes:
            _check_unicode(name, f"{file}, line {number}: a model name")
            models.setdefault(name, len(models))
    return models


def _row_id(row: dict[str, Any], where: str, number: int, seen_ids: dict[str, int]) -> str:
    """A row's id as a string, checked unique (``seen_ids``: id -> line, updated)."""
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
        raise InvalidInputError(f"{where}: field 'id' {row_id!r} repeats line {seen_ids[row_id]}")
    seen_ids[row_id] = number
    return row_id


def _row_label_and_split(
    row: dict[str, Any], where: str, labels: list[str | None], split: list[str | None]
) -> None:
    """Appends a row's optional ``label`` and ``split``, checked."""
    for name, store in (("label", labels), ("split", split)):
        value = row.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidInputError(f"{where}: field {name!r} must be a string")
        if value is not None:
            _check_unicode(value, f"{where}: field {name!r}")
        store.append(value)
    if split[-1] is not None and split[-1] not in _SPLITS:
        raise InvalidInputError(f"{where}: field 'split' must be 'train' or 'test'")


def _row_outcomes(
    row: dict[str, Any],
    where: str,
    r: int,
    models: dict[str, int],
    values: dict[str, _F64],
    responses: list[tuple[int, int, str]],
) -> None:
    """Writes row ``r``'s outcomes into ``values``; notes the responses whose tokens are to be
    counted (an outcome with a response and no ``output_tokens``) in ``responses``."""
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


def _check_all_or_none(
    file: Path, lines: list[int], labels: list[str | None], split: list[str | None]
) -> None:
    """Refuses a ``label`` or ``split`` that some lines give and others do not."""
    for name, store in (("label", labels), ("split", split)):
        given = [v is not None for v in store]
        if any(given) and not all(given):
            missing = lines[given.index(False)]
            raise InvalidInputError(
                f"{file}, line {missing}: field {name!r} is missing, but other lines have one "
                "(give it on every line or on none)"
            )


def _count_missing_tokens(
    prompts: list[str],
    prompt_tokens: _F64,
    values: dict[str, _F64],
    responses: list[tuple[int, int, str]],
) -> bool:
    """Counts the prompt tokens the rows did not give, and the output tokens of ``responses``;
    returns whether any prompt's tokens were counted."""
    missing = np.isnan(prompt_tokens)
    if missing.any():
        prompt_tokens[missing] = count_tokens(
            [p for p, m in zip(prompts, missing, strict=True) if m]
        )
    if responses:
        counted = count_tokens([text for _, _, text in responses])
        for (r, k_, _), tokens in zip(responses, counted, strict=True):
            values["output_tokens"][r, k_] = tokens
    return bool(missing.any())


def _fill_costs(
    values: dict[str, _F64],
    prompt_tokens: _F64,
    models: dict[str, int],
    prices: Mapping[str, PriceLike | tuple[float, float]],
) -> None:
    """Fills the missing costs of outcomes with output tokens from ``prices``."""
    cost, output = values["cost_usd"], values["output_tokens"]
    for model, spec in prices.items():
        if model not in models:
            continue
        price_in, price_out, fee = _price_of(spec)
        k_ = models[model]
        fill = np.isnan(cost[:, k_]) & ~np.isnan(output[:, k_])
        cost[fill, k_] = call_cost_usd(
            prompt_tokens[fill], output[fill, k_], price_in, price_out, fee
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
