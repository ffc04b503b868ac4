"""Learning offline: `Router.fit`, and what `Router.refit` shares with it (learning a fit
without swapping it in, and swapping it in)."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mixllm._core import InvalidInputError, Policy
from mixllm.config import ModelConfig, RouterConfig
from mixllm.data import RoutingDataset
from mixllm.errors import ConfigError, StateChangedError, UnusedDataWarning
from mixllm.progress import Progress
from mixllm.routing import refit_state
from mixllm.routing.calibration import Calibration, calibrate
from mixllm.routing.learning import LoggedFeedback
from mixllm.routing.router_base import RouterBase
from mixllm.routing.tuning import (
    MIN_ROUTING_ROWS,
    MIN_ROWS,
    KnobChoice,
    choose_ridge,
    choose_ridge_by_routing,
)
from mixllm.understanding.clustering import choose_domains
from mixllm.understanding.projection import TagProjection
from mixllm.understanding.tagging import DomainLabels, Tagger

# The fewest queries `Router.fit` learns from: the projection needs a spread to centre.
MIN_FIT_QUERIES = 2


@dataclass(frozen=True)
class FitReport:
    """What `Router.fit` learned from. ``tokens_counted`` (the prompts' token counts) and
    ``output_tokens_counted`` (the answers', from their response texts) say which counts mixllm
    computed with the embedder's tokenizer because the data gave none; ``models_not_in_pool``
    names the data's models the Router ignored (it warns with `UnusedDataWarning` too)."""

    rows: int
    tag_source: str
    domains: int
    rows_per_model: dict[str, int]
    models_without_data: tuple[str, ...]
    tokens_counted: bool
    output_tokens_counted: bool = False
    models_not_in_pool: tuple[str, ...] = ()
    # The knobs chosen by cross-validation, with every candidate's fold scores.
    tuning: tuple[KnobChoice, ...] = ()
    # λ → expected quality and cost on held-out folds (None: too few rows to measure it).
    calibration: Calibration | None = None


@dataclass(frozen=True)
class FitStart:
    """What a fit or refit starts from, read in one lock section: the configuration it fits
    with, the generations it checks at its swap, and what a refit relearns."""

    config: RouterConfig
    pool_generation: int
    fit_generation: int
    training: RoutingDataset | None
    logged: tuple[LoggedFeedback, ...]


@dataclass(frozen=True)
class Fitted:
    """What a fit learned, not yet swapped in."""

    projection: TagProjection
    policy: Policy
    config: RouterConfig
    calibration: Calibration | None
    report: FitReport


class Fitting(RouterBase):
    """The Router's fits: projection, domains, tuned knobs, calibration and heads."""

    def fit(self, dataset: RoutingDataset, *, progress: Progress | None = None) -> FitReport:
        """Learns the projection and every model's heads from a data set holding each model's
        outcome on each query (RouterBench's layout). Models of the pool missing from the data
        keep their prior arm; models in the data but not in the pool are not learned from, with
        an `UnusedDataWarning` naming them. ``progress`` hears of each stage (embedding the
        prompts, choosing the ridges, calibrating, fitting the heads).

        A fit replaces any refit running meanwhile (whose result is then discarded). A pool
        change made while the fit runs is kept: the fit is then discarded instead, raising
        `StateChangedError` and leaving the Router as it was."""
        with self._fitting() as start:
            fitted = self._learn_fit(dataset, start.config, progress, warn_unused=True)
            with self._lock:
                if self._pool_generation != start.pool_generation:
                    raise StateChangedError(
                        "the pool changed (add_model, remove_model or update_model) while this "
                        "fit ran: its result was discarded and the router left as it was; fit "
                        "again"
                    )
                self._swap(fitted, dataset)
        if progress is not None:
            progress("fitted", 4, 4)
        return fitted.report

    @contextlib.contextmanager
    def _fitting(self, check: Callable[[FitStart], None] | None = None) -> Iterator[FitStart]:
        """Around a fit or refit: reads what it starts from, refuses it (with ``check`` too)
        in the same lock section, and counts it as running meanwhile (`attach_store` waits for
        none)."""
        with self._lock:
            if self._store is not None:
                raise ConfigError(
                    "fit replaces every arm, which the other replicas cannot follow: fit (or "
                    "load) the router before attaching the store"
                )
            start = FitStart(
                self._config,
                self._pool_generation,
                self._fit_generation,
                self._training,
                tuple(self._feedback_log),
            )
            if check is not None:
                check(start)
            self._fits_running += 1
        try:
            yield start
        finally:
            with self._lock:
                self._fits_running -= 1

    def _learn_fit(
        self,
        dataset: RoutingDataset,
        config: RouterConfig,
        progress: Progress | None,
        *,
        warn_unused: bool,
    ) -> Fitted:
        """Everything `fit` learns from ``dataset`` with ``config``, without swapping it in.
        ``warn_unused``: warn of the data's models not in the pool (the report names them
        either way)."""
        not_in_pool = _check_fit_data(dataset, config, warn=warn_unused)
        if progress is None:
            embedded = self.embedder.embed(dataset.prompts)
        else:
            embedded = self.embedder.embed(
                dataset.prompts,
                progress=lambda done, total: progress("embedding the prompts", done, total),
            )
        vectors = embedded.astype(np.float64)
        step = progress if progress is not None else (lambda _label, _done, _total: None)
        step("projection and domains", 0, 4)
        tag_ids, tag_source, domains = self._domain_ids(dataset, vectors, config)
        projection = TagProjection.fit(
            vectors, tag_ids, d=config.dim, pull=config.tagger.pull, push=config.tagger.push
        )
        contexts = projection.context(vectors)
        step("choosing the ridges (cross-validation)", 1, 4)
        config, tuning = self._tune(dataset, contexts, config)
        step("calibrating the operating points", 2, 4)
        calibration = None
        if len(dataset) >= MIN_ROWS:
            calibration = calibrate(config, contexts, dataset)
        step("fitting every model's heads", 3, 4)
        policy, rows_per_model, without = _fitted_heads(config, dataset, contexts)
        report = FitReport(
            rows=len(dataset),
            tag_source=tag_source,
            domains=domains,
            rows_per_model=rows_per_model,
            models_without_data=tuple(without),
            tokens_counted=dataset.tokens_counted,
            output_tokens_counted=dataset.output_tokens_counted,
            models_not_in_pool=not_in_pool,
            tuning=tuning,
            calibration=calibration,
        )
        return Fitted(projection, policy, config, calibration, report)

    def _swap(self, fitted: Fitted, rows: RoutingDataset, *, refit: bool = False) -> None:
        """Puts a fit's (or a refit's) state in place (the caller holds the lock), keeping the
        newest `MAX_TRAINING_ROWS` of the rows it learned from for the next refit."""
        now = self._now()
        # Requests still in flight keep counting in the new arms' queues.
        for pending in self._ledger:
            if pending.model not in fitted.policy or not pending.current(self._policy):
                continue
            # The new arms take over the decisions made with the old ones.
            pending.rebind(fitted.policy, now)
        self._projection = fitted.projection
        self._policy = fitted.policy
        self._config = fitted.config
        self._calibration = fitted.calibration
        self._training = newest_rows(rows, refit_state.MAX_TRAINING_ROWS)
        self._contexts.clear()
        self._fit_generation += 1
        self._last_fit_kind = "refitted" if refit else "fitted"

    def _tune(
        self, dataset: RoutingDataset, contexts: NDArray[np.float64], config: RouterConfig
    ) -> tuple[RouterConfig, tuple[KnobChoice, ...]]:
        """The configuration to fit with: the knobs left to cross-validation chosen on these
        rows (`mixllm.routing.tuning`), when there are enough of them; the others as they are."""
        if len(dataset) < MIN_ROWS:
            return config, ()
        pool = [m for m in config.models if m.name in dataset.models]
        columns = [dataset.models.index(m.name) for m in pool]
        choices = []
        if "ridge" in self._tuned:
            choices.append(_quality_ridge(config, pool, columns, dataset, contexts))
        if "length_ridge" in self._tuned and dataset.output_tokens is not None:
            lengths = dataset.output_tokens
            targets = [
                np.log1p(lengths[:, k]) - math.log1p(m.prior_output_tokens)
                for m, k in zip(pool, columns, strict=True)
            ]
            if any((~np.isnan(t)).any() for t in targets):
                choices.append(choose_ridge("length_ridge", contexts, targets))
        chosen: dict[str, Any] = {choice.knob: choice.chosen for choice in choices}
        return replace(config, **chosen), tuple(choices)

    def _domain_ids(
        self, dataset: RoutingDataset, vectors: NDArray[np.float64], config: RouterConfig
    ) -> tuple[NDArray[np.int64], str, int]:
        mode = config.tagger.mode
        if mode == "labels" and dataset.labels is None:
            raise ConfigError('tagger.mode is "labels" but the data set carries no labels')
        if mode != "zero-shot" and dataset.labels is not None:
            mapping, ids = DomainLabels.from_labels(dataset.labels)
            return ids, "dataset labels", len(mapping.names)
        tagger = Tagger(self.embedder, temperature=config.tagger.temperature)
        tags = tagger.tag_vectors(vectors)
        if mode == "zero-shot":
            return tags.top, "zero-shot tagger (as configured)", len(np.unique(tags.top))
        # No labels: the taxonomy, unless clusters learned from the data spread it far better.
        choice = choose_domains(vectors, tags.top)
        return choice.ids, choice.source, len(np.unique(choice.ids))


def _check_fit_data(
    dataset: RoutingDataset, config: RouterConfig, *, warn: bool
) -> tuple[str, ...]:
    """Refuses data a fit cannot learn from; returns (and, with ``warn``, warns of) the data's
    models that are not in the pool."""
    if len(dataset) < MIN_FIT_QUERIES:
        raise InvalidInputError(f"fit needs at least {MIN_FIT_QUERIES} queries, got {len(dataset)}")
    pool = {model.name for model in config.models}
    not_in_pool = tuple(name for name in dataset.models if name not in pool)
    if not_in_pool and warn:
        warnings.warn(
            f"the data holds outcomes of {len(not_in_pool)} model(s) not in the pool, "
            f"which this fit ignores: {', '.join(not_in_pool)}",
            UnusedDataWarning,
            stacklevel=4,
        )
    return not_in_pool


def newest_rows(rows: RoutingDataset, limit: int) -> RoutingDataset:
    """The last ``limit`` rows (the newest: a refit appends the feedback after the rows it
    had), or all of them when there are no more."""
    return rows if len(rows) <= limit else rows.select(slice(len(rows) - limit, None))


def _quality_ridge(
    config: RouterConfig,
    pool: Sequence[ModelConfig],
    columns: Sequence[int],
    dataset: RoutingDataset,
    contexts: NDArray[np.float64],
) -> KnobChoice:
    """The quality ridge by how the held-out queries are routed, when the data can show it:
    at least `MIN_ROUTING_ROWS` rows, two models or more with outcomes, all with logged costs,
    not all the same. Otherwise (too few rows, or no trade-off to route by) by held-out quality
    error."""
    quality = dataset.quality[:, columns]
    cost = dataset.cost_usd[:, columns]
    observed = np.flatnonzero((~np.isnan(quality)).any(axis=0))
    logged = ~np.isnan(cost[:, observed])
    trade_off = False
    if len(dataset) >= MIN_ROUTING_ROWS and len(observed) >= 2 and bool(logged.any(axis=0).all()):
        mean_cost = np.where(logged, cost[:, observed], 0.0).sum(axis=0) / logged.sum(axis=0)
        trade_off = bool(np.ptp(mean_cost) > 0)
    if trade_off:
        tokens = None if dataset.output_tokens is None else dataset.output_tokens[:, columns]
        with_pool = config.with_models(tuple(pool))
        return choose_ridge_by_routing(
            lambda ridge: replace(with_pool, ridge=ridge).new_policy(contexts.shape[1]),
            [m.name for m in pool],
            contexts,
            quality,
            cost,
            tokens,
            dataset.prompt_tokens,
        )
    targets = [dataset.quality[:, k] - m.prior_quality for m, k in zip(pool, columns, strict=True)]
    return choose_ridge("ridge", contexts, targets)


def _fitted_heads(
    config: RouterConfig, dataset: RoutingDataset, contexts: NDArray[np.float64]
) -> tuple[Policy, dict[str, int], list[str]]:
    """A new policy with every pool model's heads fitted on its observed rows, the rows each
    learned from, and the models the data holds nothing of."""
    policy = config.new_policy()
    rows_per_model: dict[str, int] = {}
    without: list[str] = []
    for model in config.models:
        if model.name not in dataset.models:
            without.append(model.name)
            continue
        column = dataset.models.index(model.name)
        seen = ~np.isnan(dataset.quality[:, column])
        if not seen.any():
            without.append(model.name)
            continue
        # NaN output tokens (a length not recorded) leave just those rows out of the
        # length head.
        tokens = None
        if dataset.output_tokens is not None:
            tokens = dataset.output_tokens[seen, column]
        policy.fit(model.name, contexts[seen], dataset.quality[seen, column], tokens)
        rows_per_model[model.name] = int(seen.sum())
    return policy, rows_per_model, without
