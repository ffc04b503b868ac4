"""The routing dataset type and its splits."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mixllm._core import InvalidInputError, UnknownModelError

__all__ = ["TEST_SPLIT_SEED", "RoutingDataset", "split_train_test", "validation_split"]


_F64 = NDArray[np.float64]


_SPLITS = ("train", "test")


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
