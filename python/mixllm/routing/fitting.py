"""Learning offline: `Router.fit` and `Router.refit`."""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mixllm._core import InvalidInputError, Policy
from mixllm.config import ModelConfig, RouterConfig
from mixllm.data import RoutingDataset, count_tokens
from mixllm.errors import ConfigError, UnusedDataWarning
from mixllm.progress import Progress
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


class Fitting(RouterBase):
    """The Router's fits: projection, domains, tuned knobs, calibration and heads."""

    def fit(self, dataset: RoutingDataset, *, progress: Progress | None = None) -> FitReport:
        """Learns the projection and every model's heads from a data set holding each model's
        outcome on each query (RouterBench's layout). Models of the pool missing from the data
        keep their prior arm; models in the data but not in the pool are not learned from, with
        an `UnusedDataWarning` naming them. ``progress`` hears of each stage (embedding the
        prompts, choosing the ridges, calibrating, fitting the heads)."""
        not_in_pool = self._check_fit_data(dataset)
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
        tag_ids, tag_source, domains = self._domain_ids(dataset, vectors)
        projection = TagProjection.fit(
            vectors,
            tag_ids,
            d=self._config.dim,
            pull=self._config.tagger.pull,
            push=self._config.tagger.push,
        )
        contexts = projection.context(vectors)
        step("choosing the ridges (cross-validation)", 1, 4)
        config, tuning = self._tune(dataset, contexts)
        step("calibrating the operating points", 2, 4)
        calibration = None
        if len(dataset) >= MIN_ROWS:
            calibration = calibrate(config, contexts, dataset)
        step("fitting every model's heads", 3, 4)
        policy, rows_per_model, without = _fitted_heads(config, dataset, contexts)
        with self._lock:
            now = self._now()
            # Requests still in flight keep counting in the new arms' queues.
            for pending in self._ledger:
                if pending.model not in policy or not pending.current(self._policy):
                    continue
                # The new arms take over the decisions made with the old ones.
                pending.rebind(policy, now)
            self._projection = projection
            self._policy = policy
            self._config = config
            self._calibration = calibration
            self._training = dataset
            self._contexts.clear()
        step("fitted", 4, 4)
        return FitReport(
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

    def _check_fit_data(self, dataset: RoutingDataset) -> tuple[str, ...]:
        """Refuses a fit this Router cannot make; warns of (and returns) the data's models
        that are not in the pool."""
        if self._store is not None:
            raise ConfigError(
                "fit replaces every arm, which the other replicas cannot follow: fit (or load) "
                "the router before attaching the store"
            )
        if len(dataset) < MIN_FIT_QUERIES:
            raise InvalidInputError(
                f"fit needs at least {MIN_FIT_QUERIES} queries, got {len(dataset)}"
            )
        pool = {model.name for model in self._config.models}
        not_in_pool = tuple(name for name in dataset.models if name not in pool)
        if not_in_pool:
            warnings.warn(
                f"the data holds outcomes of {len(not_in_pool)} model(s) not in the pool, "
                f"which this fit ignores: {', '.join(not_in_pool)}",
                UnusedDataWarning,
                stacklevel=3,
            )
        return not_in_pool

    def _tune(
        self, dataset: RoutingDataset, contexts: NDArray[np.float64]
    ) -> tuple[RouterConfig, tuple[KnobChoice, ...]]:
        """The configuration to fit with: the knobs left to cross-validation chosen on these
        rows (`mixllm.routing.tuning`), when there are enough of them; the others as they are."""
        config = self._config
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

    def refit(self) -> FitReport:
        """Fits projection, domains and heads again (`fit`) on the rows of the last fit plus
        the feedback learned since (the last ``feedback_log_size`` of them: each its query,
        the chosen model's quality, or 1/0 for binary feedback, and output tokens), so that
        feedback improves the representation too, not only the heads. Routing goes on while
        it runs (in a background thread, say) and switches to the new state at once.

        `save` keeps both, so a loaded Router refits as the saved one would have; one loaded
        from a state saved without them (an older mixllm's, or rows past the size a state
        holds) refits on what it has. Raises `InvalidInputError` when there is nothing to fit
        on."""
        # One refit at a time: each relearns what the one before it left logged.
        with self._refit_lock:
            return self._refit()

    def _refit(self) -> FitReport:
        with self._lock:
            training = self._training
            logged = list(self._feedback_log)
        parts = [] if training is None else [training]
        if logged:
            parts.append(feedback_dataset(logged, self.models))
        if not parts:
            raise InvalidInputError("refit has nothing to learn from: no fit and no feedback")
        combined = parts[0] if len(parts) == 1 else concatenated(parts[0], parts[1])
        with warnings.catch_warnings():
            # The feedback names the pool's own models; the rows of the last fit were checked
            # then.
            warnings.simplefilter("ignore", UnusedDataWarning)
            report = self.fit(combined)
        with self._lock:
            # What was learned is in the new rows now; feedback during the refit stays logged.
            # The log is bounded, so feedback during the refit may have pushed some of what
            # was copied out already: drop only the copied entries still at its front, never
            # a count of entries (which would drop the new feedback instead).
            copied = {id(entry) for entry in logged}
            while self._feedback_log and id(self._feedback_log[0]) in copied:
                self._feedback_log.popleft()
            self._training = combined
        return report

    def _domain_ids(
        self, dataset: RoutingDataset, vectors: NDArray[np.float64]
    ) -> tuple[NDArray[np.int64], str, int]:
        mode = self._config.tagger.mode
        if mode == "labels" and dataset.labels is None:
            raise ConfigError('tagger.mode is "labels" but the data set carries no labels')
        if mode != "zero-shot" and dataset.labels is not None:
            mapping, ids = DomainLabels.from_labels(dataset.labels)
            return ids, "dataset labels", len(mapping.names)
        tagger = Tagger(self.embedder, temperature=self._config.tagger.temperature)
        tags = tagger.tag_vectors(vectors)
        if mode == "zero-shot":
            return tags.top, "zero-shot tagger (as configured)", len(np.unique(tags.top))
        # No labels: the taxonomy, unless clusters learned from the data spread it far better.
        choice = choose_domains(vectors, tags.top)
        return choice.ids, choice.source, len(np.unique(choice.ids))


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


def feedback_dataset(logged: Sequence[LoggedFeedback], models: Sequence[str]) -> RoutingDataset:
    """Logged feedback as rows of a data set: each row observes the chosen model alone."""
    names = list(dict.fromkeys([*models, *(f.model for f in logged)]))
    n, k = len(logged), len(names)
    quality = np.full((n, k), np.nan)
    tokens = np.full((n, k), np.nan)
    for row, item in enumerate(logged):
        column = names.index(item.model)
        quality[row, column] = item.quality
        if item.output_tokens is not None:
            tokens[row, column] = item.output_tokens
    texts = [f.text for f in logged]
    return RoutingDataset(
        prompts=texts,
        models=names,
        quality=quality,
        cost_usd=np.full((n, k), np.nan),
        prompt_tokens=count_tokens(texts),
        output_tokens=tokens,
        latency_s=None,
        labels=None,
        split=None,
        ids=[f"feedback-{secrets.token_hex(6)}-{i}" for i in range(n)],
        tokens_counted=True,
    )


def concatenated(first: RoutingDataset, second: RoutingDataset) -> RoutingDataset:
    """The rows of both, over the union of their models (unobserved cells NaN). Labels are
    kept only when both have them; ids of the second that repeat the first's are renamed."""
    names = list(dict.fromkeys([*first.models, *second.models]))

    def widened(ds: RoutingDataset, array: NDArray[np.float64] | None) -> NDArray[np.float64]:
        out = np.full((len(ds), len(names)), np.nan)
        if array is not None:
            for k, name in enumerate(ds.models):
                out[:, names.index(name)] = array[:, k]
        return out

    def stacked(name: str) -> NDArray[np.float64]:
        parts = [widened(ds, getattr(ds, name)) for ds in (first, second)]
        return np.vstack(parts)

    no_latencies = first.latency_s is None and second.latency_s is None
    taken = set(first.ids)
    ids = [*first.ids, *(i if i not in taken else f"{i}@refit" for i in second.ids)]
    labels = None
    if first.labels is not None and second.labels is not None:
        labels = [*first.labels, *second.labels]
    return RoutingDataset(
        prompts=[*first.prompts, *second.prompts],
        models=names,
        quality=stacked("quality"),
        cost_usd=stacked("cost_usd"),
        prompt_tokens=np.concatenate([first.prompt_tokens, second.prompt_tokens]),
        output_tokens=stacked("output_tokens"),
        latency_s=None if no_latencies else stacked("latency_s"),
        labels=labels,
        split=None,
        ids=ids,
        tokens_counted=first.tokens_counted or second.tokens_counted,
    )
