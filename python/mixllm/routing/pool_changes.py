"""The pool: adding, removing and updating a Router's models (shared with a store)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from mixllm._core import InvalidInputError, UnknownModelError
from mixllm.config import ModelConfig
from mixllm.data import RoutingDataset
from mixllm.errors import ConfigError, StateChangedError
from mixllm.routing.router_base import RouterBase
from mixllm.store.pool import PoolChange
from mixllm.validation import PROFILE_FIELDS


class PoolChanges(RouterBase):
    """The Router's pool changes."""

    def _configured_as(self, model: ModelConfig) -> bool:
        """Whether the pool's model of that name has ``model``'s configuration and its arm the
        same prices and speeds (True for a model no longer in the pool)."""
        with self._lock:
            if model.name not in self._policy:
                return True
            current = next((m for m in self._config.models if m.name == model.name), None)
            profile = self._policy.inspect(model.name)["profile"]
        wanted = model.policy_kwargs()
        return current == model and all(profile[k] == wanted[k] for k in PROFILE_FIELDS)

    def add_model(self, model: ModelConfig, *, examples: RoutingDataset | None = None) -> None:
        """Adds a model with a fresh arm at its priors (``prior_quality`` decides how eagerly
        it is tried: the exploration bonus alone is small at the paper's alpha = 0.01), or, with
        ``examples`` (a data set holding outcomes of a model of this name), an arm warm-started
        by an exact fit on them. With a store, the other replicas add it too (at its priors: a
        warm start cannot be shared, so it is refused then). A warm start that a fit or refit
        overtook (its contexts are the old projection's) raises `StateChangedError`, adding
        nothing."""
        model.validate("model")
        if examples is not None and self._store is not None:
            raise ConfigError(
                "a warm-started arm cannot be shared with the other replicas: add the model "
                "with its examples on every replica before attaching the store"
            )
        self._add_model(model, examples)

    def _add_model(
        self, model: ModelConfig, examples: RoutingDataset | None, *, arm: str | None = None
    ) -> None:
        """`add_model`; ``arm``: the new arm's id, given by the replica that added it (None:
        this Router adds it, with a fresh id when a store shares the addition)."""
        warm: tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64] | None] | None
        warm = None
        with self._lock:
            fitted = self._fit_generation
        if examples is not None:
            warm = self._warm_start(model.name, examples)
        if arm is None:
            arm = secrets.token_hex(8) if self._store is not None else ""
        with self._shared("add", model, arm), self._lock:
            if warm is not None and self._fit_generation != fitted:
                # Its contexts are the old projection's, which the new arms do not use.
                raise StateChangedError(
                    f"the router was {self._last_fit_kind} while the examples of "
                    f"{model.name!r} were embedded: the model was not added; add it again"
                )
            self._policy.add_model(model.name, **model.policy_kwargs())
            if warm is not None:
                self._policy.fit(model.name, *warm)
            self._config = self._config.with_models((*self._config.models, model))
            self._pool_generation += 1
            if arm:
                self._arms[model.name] = arm
            else:
                self._arms.pop(model.name, None)

    def _warm_start(
        self, name: str, examples: RoutingDataset
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64] | None]:
        """Contexts, qualities and output tokens of ``name``'s observed outcomes."""
        if name not in examples.models:
            raise InvalidInputError(f"the examples hold no outcomes of model {name!r}")
        column = examples.models.index(name)
        seen = np.flatnonzero(~np.isnan(examples.quality[:, column]))
        if seen.size == 0:
            raise InvalidInputError(f"the examples hold no observed quality for {name!r}")
        projection = self._require_projection()
        vectors = self.embedder.embed([examples.prompts[i] for i in seen])
        tokens = None
        if examples.output_tokens is not None:
            tokens = examples.output_tokens[seen, column]  # NaN where no length was recorded
        return projection.context(vectors), examples.quality[seen, column], tokens

    def remove_model(self, name: str) -> None:
        """Removes a model; feedback still pending for it becomes a no-op."""
        with self._shared("remove", name), self._lock:
            self._policy.remove_model(name)
            self._arms.pop(name, None)
            self._config = self._config.with_models(
                tuple(m for m in self._config.models if m.name != name)
            )
            self._pool_generation += 1

    def update_model(self, model: ModelConfig) -> None:
        """Replaces a pool model's configuration (prices, speeds, upstream) keeping everything
        learned about it; its priors only matter to a fresh arm, so they are not changed."""
        model.validate("model")
        with self._shared("update", model), self._lock:
            names = [m.name for m in self._config.models]
            if model.name not in names or model.name not in self._policy:
                raise UnknownModelError(f"no model {model.name!r} in the pool")
            profile = model.policy_kwargs()
            self._policy.update_profile(
                model.name,
                **{k: profile[k] for k in PROFILE_FIELDS},
                now_s=self._now(),
            )
            self._config = self._config.with_models(
                tuple(model if m.name == model.name else m for m in self._config.models)
            )
            self._pool_generation += 1

    @contextlib.contextmanager
    def _shared(
        self, op: Literal["add", "remove", "update"], model: ModelConfig | str, arm: str = ""
    ) -> Iterator[None]:
        """Around a pool change: with a store, the change is appended to it once made (unless
        it is another replica's, being applied here)."""
        store = self._store
        if store is None or store.applying():
            yield
            return
        with store.publishing():
            yield
            store.publish(PoolChange(op, store.replica, model, arm))
