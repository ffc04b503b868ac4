"""The Router: text in, model out, learning from feedback as it goes.

It ties together the sentence encoder (`Embedder`), the tag-enhanced projection
(`TagProjection`) and the decision core (`Policy`), and keeps the bookkeeping a service needs:

- every `route` issues a decision id and counts the request as in flight for the chosen model,
  so predicted waiting times are live (on a monotonic clock, or the one the Router is given);
- `feedback(decision_id, ...)` teaches the chosen model's arm (refined quality, or a binary
  satisfied/unsatisfied signal with the lower weight κ of method.md section 4) and takes the
  request out of flight, recording its latency; a service that learns the quality later calls
  `complete(decision_id, latency_s=...)` when the answer arrives and `feedback` afterwards;
- decisions wait for feedback at most ``feedback_ttl_s`` seconds and at most ``max_pending`` of
  them are kept; older ones are dropped (their requests leave the queue) and feedback for them
  raises `DecisionNotFoundError` saying so. Feedback for a decision whose model was removed since
  is a documented no-op: it returns ``False`` and changes nothing;
- `save(dir)` / `Router.load(dir)` keep the configuration, the projection and every arm, so a
  restarted service routes exactly as before; docs/guarantees.md states what a save and a load
  guarantee, every bound on sizes and work, and which error each bad input gets.

Thread-safe: many threads may route and send feedback through one Router.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import numbers
import os
import secrets
import threading
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from mixllm import state_folder
from mixllm._core import (
    Decision,
    InputTypeError,
    InvalidInputError,
    MixllmError,
    Policy,
    StateFileError,
    UnknownModelError,
    __version__,
)
from mixllm._lru import LruCache
from mixllm.calibration import Calibration, calibrate
from mixllm.clustering import choose_domains
from mixllm.config import (
    OPERATING_POINTS,
    TUNED_KNOBS,
    ModelConfig,
    RouterConfig,
    policy_tau_s,
)
from mixllm.data import RoutingDataset, count_tokens, estimate_tokens
from mixllm.embedding import Embedder
from mixllm.errors import (
    ConfigError,
    DecisionNotFoundError,
    NotFittedError,
    ProjectionError,
    UnusedDataWarning,
)
from mixllm.ledger import EXPIRE_PER_CALL, EXPIRED, DecisionLedger, PendingDecision
from mixllm.progress import Progress
from mixllm.projection import (
    MAX_PROJECTION_BYTES,
    LinearProjection,
    TagProjection,
    projection_from_bytes,
)
from mixllm.store.decisions import deadline_ms
from mixllm.store.observation import Observation
from mixllm.store.pool import PoolChange
from mixllm.tagging import DomainLabels, Tagger
from mixllm.tuning import MIN_ROWS, KnobChoice, choose_ridge

if TYPE_CHECKING:
    import asyncio

    from mixllm.serving.batching import Batcher
    from mixllm.store import RedisStore

__all__ = ["EXPIRE_PER_CALL", "FitReport", "RouteDecision", "Router"]

STATE_FORMAT = 1
# The fewest queries `Router.fit` learns from: the projection needs a spread to centre.
MIN_FIT_QUERIES = 2
# The largest manifest and config.json a load reads (checked before reading): a manifest is
# a few hundred bytes, a configuration some hundreds per model.
MAX_MANIFEST_BYTES = 64 << 10
MAX_CONFIG_BYTES = 16 << 20
# How many times a load starts again when a save replaced the state it was reading.
_LOAD_ATTEMPTS = 3
# The largest magnitude of a value the decision core learns from (its own bound): feedback
# beyond it is refused up front, before anything is learned.
MAX_MAGNITUDE = 1e100
# The routing-context cache's bound in bytes (besides its entry count, `cache_size`), with each
# entry accounted as its key, its array and this allowance for the objects around them.
CONTEXT_CACHE_BYTES = 16 << 20
CACHE_ENTRY_OVERHEAD = 256
# The optional table of operating points a fit measured, and the most bytes it may take.
_CALIBRATION = "calibration.json"
MAX_CALIBRATION_BYTES = 1 << 20
# The decision knobs both config.json and policy.bin carry; a saved state has them agree.
_POLICY_KNOBS = (
    "alpha",
    "beta",
    "ridge",
    "length_ridge",
    "tau_s",
    "tau_margin_sd",
    "refactor_every",
)
# Knobs added after the first states were saved: a config.json without one continues with the
# value its policy.bin carries (what that policy decided with when it was saved).
_LATER_KNOBS = ("length_ridge", "tau_margin_sd")


@dataclass(frozen=True)
class RouteDecision:
    """The model chosen for one query, with the reasons (`detail` holds every model's
    predicted quality, cost, latency, uncertainty, penalty and score)."""

    id: str
    model: str
    prompt_tokens: float
    willingness_to_pay: float
    detail: Decision

    @property
    def models(self) -> list[str]:
        return self.detail.models

    def explain(self) -> dict[str, dict[str, float | bool]]:
        """Per model: predicted quality, cost (USD), latency (s), uncertainty, penalty, score."""
        return self.detail.explain()


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
class _Feedback:
    """One feedback the Router learned, as `Router.refit` relearns it."""

    text: str
    model: str
    quality: float
    output_tokens: float | None


class Router:
    """Routes queries to the models of a pool and learns from feedback.

    Build one from a `RouterConfig` (or `mixllm.load_config(path)`), then `fit` it on a
    `RoutingDataset`, or `Router.load` a saved state (`Router.default()` is the state shipped with
    the package, trained on RouterBench for its 11 models).
    """

    def __init__(
        self,
        config: RouterConfig,
        *,
        embedder: Embedder | None = None,
        projection: LinearProjection | None = None,
        policy: Policy | None = None,
        clock: Callable[[], float] | None = None,
        store: RedisStore | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        """``clock`` is the time the queues and decision lifetimes run on, in seconds: by
        default `Policy.clock_s`, a monotonic clock. A simulation passes its own. ``store``
        shares learning with other replicas (see `attach_store`). ``calibration`` is the table
        of operating points a fit measured (`calibration`)."""
        config.validate()
        # Knobs left to cross-validation: every fit chooses them again.
        self._tuned = tuple(k for k in TUNED_KNOBS if getattr(config, k) is None)
        resolved: dict[str, Any] = {
            # A policy given decides with its own values: the configuration says so.
            k: getattr(policy, k) if policy is not None else config.knob(k)
            for k in self._tuned
        }
        config = replace(config, **resolved)
        if projection is not None and projection.d != config.dim:
            raise ConfigError(
                f"router.dim is {config.dim} but the projection has d = {projection.d}"
            )
        if policy is None:
            policy = config.new_policy()
        elif policy.dim != config.dim + 1 or policy.models != [m.name for m in config.models]:
            raise ConfigError("the policy's dimension or models do not match the configuration")
        else:
            _check_knobs(config, policy)
        self._config = config
        self._embedder = embedder
        self._projection = projection
        self._calibration = calibration
        self._policy = policy
        # What `refit` relearns from: the rows of the last fit, and the feedback since.
        self._training: RoutingDataset | None = None
        self._feedback_log: deque[_Feedback] = deque(maxlen=config.feedback_log_size)
        self._clock = clock if clock is not None else Policy.clock_s
        self._lock = threading.Lock()
        # The decisions awaiting feedback, guarded by `_lock` with the policy's queues.
        self._ledger = DecisionLedger(
            config.feedback_ttl_s, config.max_pending, on_drop=self._forget_dropped
        )
        self._contexts: LruCache[bytes, tuple[NDArray[np.float64], float]] = LruCache(
            config.embedder.cache_size, max_bytes=CONTEXT_CACHE_BYTES
        )
        self._id_prefix = secrets.token_hex(4)
        self._counter = itertools.count()
        # `aroute` embeds in one worker thread, a batch per event loop at a time.
        self._embed_thread: ThreadPoolExecutor | None = None
        self._batchers: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, Batcher[str, tuple[NDArray[np.float64], float]]
        ] = weakref.WeakKeyDictionary()
        self._store: RedisStore | None = None
        # The id every replica knows each arm by: "" for the arms the replicas start with, a
        # fresh one for an arm added while a store is attached (shared with the addition), so
        # feedback for a decision made with a model's earlier arm is not learned by a later one.
        self._arms: dict[str, str] = {}
        if store is not None:
            self.attach_store(store)

    def attach_store(self, store: RedisStore) -> None:
        """Shares this Router's learning with the other replicas attached to the same store:
        from now on every observation `feedback` accepts is in the store before it returns, and
        the other replicas' observations are learned as they arrive. When the store holds a
        checkpoint, this Router's arms are replaced by it first (its pool and settings must be
        this Router's; its prices and speeds are this Router's configuration's, and the other
        replicas take those too). Attach before routing: decisions already pending are
        refused."""
        with self._lock:
            if self._store is not None:
                raise ConfigError("this Router already has a store")
            if self._ledger:
                raise ConfigError("attach the store before routing: decisions are pending")
            checkpoint = store.load_checkpoint(self._policy.dim)
            configured = self._config.models
            if checkpoint is not None:
                policy = checkpoint.policy
                if policy.models != self._policy.models:
                    raise ConfigError(
                        f"the store's checkpoint has models {policy.models}, this Router "
                        f"{self._policy.models}"
                    )
                _check_knobs(self._config, policy)
                self._policy = policy
                self._arms = dict(checkpoint.arms)
                self._contexts.clear()
            self._store = store
        try:
            store.start(self)
        except BaseException:
            self._store = None
            raise
        # The configured models replace what the checkpoint and the stream said of them, on
        # every replica: the configuration is what `config`, `describe_models` and `save` show.
        for model in configured:
            if not self._configured_as(model):
                with contextlib.suppress(UnknownModelError):  # removed meanwhile, elsewhere
                    self.update_model(model)

    def _configured_as(self, model: ModelConfig) -> bool:
        """Whether the pool's model of that name has ``model``'s configuration and its arm the
        same prices and speeds (True for a model no longer in the pool)."""
        with self._lock:
            if model.name not in self._policy:
                return True
            current = next((m for m in self._config.models if m.name == model.name), None)
            profile = self._policy.inspect(model.name)["profile"]
        wanted = model.policy_kwargs()
        return current == model and all(profile[k] == wanted[k] for k in _PROFILE_FIELDS)

    def _arm_of(self, name: str) -> str:
        return self._arms.get(name, "")

    def _arm_ids(self) -> dict[str, str]:
        """The arm ids that are not "" (what a checkpoint carries)."""
        with self._lock:
            return dict(self._arms)

    @property
    def store(self) -> RedisStore | None:
        return self._store

    def _now(self) -> float:
        """The clock's reading, checked before anything changes: a clock that fails or returns
        a non-finite time must not leave a request counted in flight for good."""
        now = self._clock()
        if isinstance(now, bool) or not isinstance(now, numbers.Real) or not math.isfinite(now):
            raise InvalidInputError(f"the Router's clock returned {now!r}, not a finite time")
        return float(now)

    # -- construction ---------------------------------------------------------------------------

    @property
    def config(self) -> RouterConfig:
        return self._config

    @property
    def policy(self) -> Policy:
        """The decision core (thread-safe; shared, not copied)."""
        return self._policy

    @property
    def projection(self) -> LinearProjection | None:
        return self._projection

    @property
    def embedder(self) -> Embedder:
        """The sentence encoder, created from the configuration on first use."""
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    self._embedder = self._config.embedder.build()
        return self._embedder

    @property
    def models(self) -> list[str]:
        return self._policy.models

    # -- learning offline -----------------------------------------------------------------------

    def fit(self, dataset: RoutingDataset, *, progress: Progress | None = None) -> FitReport:
        """Learns the projection and every model's heads from a data set holding each model's
        outcome on each query (RouterBench's layout). Models of the pool missing from the data
        keep their prior arm; models in the data but not in the pool are not learned from, with
        an `UnusedDataWarning` naming them. ``progress`` hears of each stage (embedding the
        prompts, choosing the ridges, calibrating, fitting the heads)."""
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
                stacklevel=2,
            )
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

    def _tune(
        self, dataset: RoutingDataset, contexts: NDArray[np.float64]
    ) -> tuple[RouterConfig, tuple[KnobChoice, ...]]:
        """The configuration to fit with: the knobs left to cross-validation chosen on these
        rows (`mixllm.tuning`), when there are enough of them; the others as they are."""
        config = self._config
        if len(dataset) < MIN_ROWS:
            return config, ()
        pool = [m for m in config.models if m.name in dataset.models]
        columns = [dataset.models.index(m.name) for m in pool]
        choices = []
        if "ridge" in self._tuned:
            targets = [
                dataset.quality[:, k] - m.prior_quality for m, k in zip(pool, columns, strict=True)
            ]
            choices.append(choose_ridge("ridge", contexts, targets))
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

        A Router that was loaded rather than fitted has no rows of its own: it refits on the
        feedback alone. Raises `InvalidInputError` when there is nothing to fit on."""
        with self._lock:
            training = self._training
            logged = list(self._feedback_log)
        parts = [] if training is None else [training]
        if logged:
            parts.append(_feedback_dataset(logged, self.models))
        if not parts:
            raise InvalidInputError("refit has nothing to learn from: no fit and no feedback")
        combined = parts[0] if len(parts) == 1 else _concatenated(parts[0], parts[1])
        with warnings.catch_warnings():
            # The feedback names the pool's own models; the rows of the last fit were checked
            # then.
            warnings.simplefilter("ignore", UnusedDataWarning)
            report = self.fit(combined)
        with self._lock:
            # What was learned is in the new rows now; feedback during the refit stays logged.
            for _ in range(min(len(logged), len(self._feedback_log))):
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

    # -- routing --------------------------------------------------------------------------------

    def _context(self, text: str) -> tuple[NDArray[np.float64], float]:
        """Routing context and prompt tokens of a text (checked by the caller, `_check_text`)."""
        key = _text_key(text)
        cached = self._contexts.get(key)
        if cached is not None:
            return cached
        projection = self._require_projection()
        vector = self.embedder.embed([text])
        context = projection.context(vector)[0]
        context.flags.writeable = False  # shared by every decision for this text
        item = (context, float(estimate_tokens([text])[0]))
        self._remember(projection, [(key, item)])
        return item

    def _remember(
        self,
        projection: LinearProjection,
        items: Sequence[tuple[bytes, tuple[NDArray[np.float64], float]]],
    ) -> None:
        """Caches contexts computed with ``projection``, unless a fit has replaced it since:
        the check and the puts happen under the lock a fit swaps the projection and clears the
        cache under, so no context of an old projection outlives the swap in the cache."""
        with self._lock:
            if self._projection is not projection:
                return
            for key, (context, tokens) in items:
                self._contexts.put(key, (context, tokens), _context_bytes(key, context))

    def _require_projection(self) -> LinearProjection:
        if self._projection is None:
            raise NotFittedError(
                "this Router has no learned projection: call fit(dataset) or Router.load(dir)"
            )
        return self._projection

    def _willingness(self, willingness_to_pay: float | None, **target: float | None) -> float:
        """The λ to route with: ``willingness_to_pay`` when given, else the λ the calibration
        gives an operating point given in ``target`` (``target_quality_pct``,
        ``max_cost_pct`` or ``budget_per_1000_usd``) or configured, else the configured λ."""
        given = {k: v for k, v in target.items() if v is not None}
        if len(given) + (willingness_to_pay is not None) > 1:
            named = [*(["willingness_to_pay"] if willingness_to_pay is not None else []), *given]
            raise InvalidInputError(f"give one operating point, not {', '.join(named)}")
        if willingness_to_pay is None:
            if not given:
                given = self._config.operating_point()
            if not given:
                return self._config.willingness_to_pay
            return self._calibrated(*next(iter(given.items())))
        if isinstance(willingness_to_pay, bool) or not isinstance(willingness_to_pay, (int, float)):
            raise InvalidInputError(
                f"willingness_to_pay must be a number, got {type(willingness_to_pay).__name__}"
            )
        try:
            wtp = float(willingness_to_pay)
        except OverflowError:
            wtp = math.inf  # an integer beyond any float: as good as ignoring cost
        if not wtp > 0:
            raise InvalidInputError(
                f"willingness_to_pay must be > 0 (USD per quality point), got {willingness_to_pay}"
            )
        return wtp

    def _calibrated(self, target: str, value: float) -> float:
        """The λ of an operating point in the user's words, from the calibration table."""
        calibration = self._calibration
        if calibration is None:
            raise NotFittedError(
                f"{target} needs the calibration table a fit makes (on at least {MIN_ROWS} "
                "queries); this Router has none: fit it, or give willingness_to_pay"
            )
        if target == "target_quality_pct":
            return calibration.for_quality(value)
        if target == "max_cost_pct":
            return calibration.for_cost(value)
        return calibration.for_budget(value)

    @property
    def calibration(self) -> Calibration | None:
        """λ → expected quality and cost, measured on held-out folds by the last fit."""
        return self._calibration

    def route(
        self,
        text: str,
        *,
        willingness_to_pay: float | None = None,
        prompt_tokens: float | None = None,
        target_quality_pct: float | None = None,
        max_cost_pct: float | None = None,
        budget_per_1000_usd: float | None = None,
        models: Sequence[str] | None = None,
        max_cost_usd: float | None = None,
        max_latency_s: float | None = None,
    ) -> RouteDecision:
        """Picks the model for one query and counts the request as in flight for it.

        ``prompt_tokens`` defaults to a count with the embedder's tokenizer (a proxy for the
        model's own tokenizer; beyond its first `EXACT_COUNT_CHARS` characters a text's count
        is estimated, see `mixllm.data.estimate_tokens`). A text that is not a ``str`` raises
        `InputTypeError`, one that is not valid Unicode (a lone surrogate) `InvalidInputError`.

        The operating point is ``willingness_to_pay`` (λ), or one in the user's words: the
        cheapest way to reach ``target_quality_pct`` % of the best model's quality, the best
        quality at ``max_cost_pct`` % of its cost, or at ``budget_per_1000_usd`` dollars per
        1,000 queries (λ from the `calibration` table); by default the configured one.

        Limits for this query alone: ``models`` (the models it may go to), ``max_cost_usd``
        (predicted cost) and ``max_latency_s`` (predicted latency, a tolerance tighter than τ),
        applied by the decision core (`Policy.decide`): the model is chosen among those within
        all of them by the usual rule, and ``decision.detail.ranking`` orders them for
        fallback. With none: `UnknownModelError` when no allowed model is in the pool, else
        `NoModelWithinLimitsError` naming the limit; neither changes any state.
        """
        _check_text("text", text)
        wtp = self._willingness(
            willingness_to_pay,
            target_quality_pct=target_quality_pct,
            max_cost_pct=max_cost_pct,
            budget_per_1000_usd=budget_per_1000_usd,
        )
        limits = _Limits.of(models, max_cost_usd, max_latency_s)
        return self._decide_text(text, self._context(text), prompt_tokens, wtp, limits)

    def _decide_text(
        self,
        text: str,
        item: tuple[NDArray[np.float64], float],
        prompt_tokens: float | None,
        wtp: float,
        limits: _Limits | None,
    ) -> RouteDecision:
        """`route`'s and `aroute`'s decision once the text's context and prompt tokens are
        known: ``prompt_tokens`` when the caller gave it, else the counted ones."""
        context, counted = item
        tokens = counted if prompt_tokens is None else prompt_tokens
        return self._decide(context, tokens, wtp, self._now(), limits, text)

    def route_batch(
        self,
        texts: Sequence[str],
        *,
        willingness_to_pay: float | None = None,
        target_quality_pct: float | None = None,
        max_cost_pct: float | None = None,
        budget_per_1000_usd: float | None = None,
    ) -> list[RouteDecision]:
        """`route` for many queries, embedding them in one batch."""
        if isinstance(texts, str):
            raise InputTypeError("texts must be a sequence of str, not a single string")
        items = list(texts)
        for i, text in enumerate(items):
            _check_text(f"texts[{i}]", text)
        wtp = self._willingness(
            willingness_to_pay,
            target_quality_pct=target_quality_pct,
            max_cost_pct=max_cost_pct,
            budget_per_1000_usd=budget_per_1000_usd,
        )
        known = dict(zip(items, self._contexts_of(items), strict=True))
        # One reading of the clock for the whole batch, before the first decision: a clock that
        # fails must not leave part of a batch counted in flight with no id returned for it.
        now = self._now()
        return [self._decide(*known[text], wtp, now, None, text) for text in items]

    def _contexts_of(self, texts: Sequence[str]) -> list[tuple[NDArray[np.float64], float]]:
        """Routing context and prompt tokens of each text. Every distinct text is looked up or
        computed once: a cache smaller than the batch (or none) must not send texts back to the
        embedder one at a time."""
        projection = self._require_projection()
        known: dict[str, tuple[NDArray[np.float64], float]] = {}
        missing = []
        for text in dict.fromkeys(texts):
            cached = self._contexts.get(_text_key(text))
            if cached is None:
                missing.append(text)
            else:
                known[text] = cached
        if missing:
            contexts = projection.context(self.embedder.embed(missing))
            tokens = estimate_tokens(missing)
            contexts.flags.writeable = False  # shared by every decision for these texts
            for text, context, count in zip(missing, contexts, tokens, strict=True):
                known[text] = (context, float(count))
            self._remember(projection, [(_text_key(text), known[text]) for text in missing])
        return [known[text] for text in texts]

    async def aroute(
        self,
        text: str,
        *,
        willingness_to_pay: float | None = None,
        prompt_tokens: float | None = None,
        target_quality_pct: float | None = None,
        max_cost_pct: float | None = None,
        budget_per_1000_usd: float | None = None,
        models: Sequence[str] | None = None,
        max_cost_usd: float | None = None,
        max_latency_s: float | None = None,
    ) -> RouteDecision:
        """`route` for asyncio services: the embedding runs in a worker thread, never on the
        event loop, and the texts of concurrent calls are embedded together in one batch."""
        _check_text("text", text)
        wtp = self._willingness(
            willingness_to_pay,
            target_quality_pct=target_quality_pct,
            max_cost_pct=max_cost_pct,
            budget_per_1000_usd=budget_per_1000_usd,
        )
        limits = _Limits.of(models, max_cost_usd, max_latency_s)
        item = self._contexts.get(_text_key(text))
        if item is None:
            item = await self._batcher().submit(text)
        return self._decide_text(text, item, prompt_tokens, wtp, limits)

    def _batcher(self) -> Batcher[str, tuple[NDArray[np.float64], float]]:
        """This event loop's batcher (created on first use)."""
        import asyncio

        from mixllm.serving.batching import Batcher

        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            with self._lock:
                if self._embed_thread is None:
                    self._embed_thread = ThreadPoolExecutor(1, thread_name_prefix="mixllm-embed")
            batcher = Batcher(self._contexts_of, self._embed_thread)
            self._batchers[loop] = batcher
        return batcher

    def _decide(
        self,
        context: NDArray[np.float64],
        prompt_tokens: float,
        willingness_to_pay: float,
        now: float,
        limits: _Limits | None = None,
        text: str | None = None,
    ) -> RouteDecision:
        """One decision at ``now``, a reading of the clock taken before any state changed."""
        detail = self._policy.decide(
            context,
            prompt_tokens=prompt_tokens,
            willingness_to_pay=willingness_to_pay,
            now_s=now,
            **({} if limits is None else limits.arguments()),
        )
        model, service_s = detail.model, detail.chosen_service_s
        decision_id = f"{self._id_prefix}-{next(self._counter)}"
        with self._lock:
            # Count the request in the policy in place now: `fit` may have swapped it, or
            # `remove_model` removed the model, since the decision (then nothing is queued).
            pending = PendingDecision.begin(self._policy, model, service_s, context, now)
            pending.text = text
            pending.arm = self._arm_of(model)
            pending.deadline_ms = deadline_ms(self._config.feedback_ttl_s)
            self._ledger.add(decision_id, pending, self._policy, now)
        if self._store is not None:
            self._store.record_decision(decision_id, *self._record(pending))
        return RouteDecision(decision_id, model, prompt_tokens, willingness_to_pay, detail)

    def _record(
        self, pending: PendingDecision
    ) -> tuple[str, NDArray[np.float64], str, int, float | None]:
        """What the other replicas need to take a decision's feedback (`DecisionRecord`)."""
        return (
            pending.model,
            pending.context,
            pending.arm,
            pending.deadline_ms,
            pending.output_tokens,
        )

    def _forget_dropped(self, decision_id: str, reason: str) -> None:
        """Takes a decision dropped unanswered out of the store (caller holds the lock)."""
        if self._store is not None and reason != EXPIRED:
            # An expired decision's record expires by itself.
            self._store.forget_decision(decision_id)

    # -- learning online ------------------------------------------------------------------------

    def complete(
        self,
        decision_id: str,
        *,
        latency_s: float | None = None,
        output_tokens: float | None = None,
    ) -> None:
        """The request of decision ``decision_id`` has finished: it leaves its model's queue
        (recording ``latency_s`` in the model's service time when given). The decision stays
        open for `feedback` until it expires, for services that learn the quality later.
        ``output_tokens``, the answer's length, teaches the model's length head at once
        (`Policy.update_length`), with no need for feedback, and the feedback then teaches
        quality only (unless it gives a length of its own); with a store attached, the length
        is learned with the feedback instead, which every replica replays."""
        _check_optional("latency_s", latency_s)
        _check_optional("output_tokens", output_tokens)
        now = self._now()
        with self._lock:
            pending = self._ledger.open(decision_id, self._policy, now)
            if not pending.in_flight:
                raise InvalidInputError(f"decision {decision_id!r} was already completed")
            if output_tokens is not None and self._store is None and pending.current(self._policy):
                # Checked by the core before anything changes, so a refused length leaves the
                # decision in flight.
                self._policy.update_length(
                    pending.model, pending.context, output_tokens=output_tokens
                )
                pending.length_learned = True
            pending.in_flight = False
            pending.output_tokens = output_tokens
            if pending.current(self._policy):
                pending.leave_queue(self._policy, latency_s, now)
            if self._store is not None and output_tokens is not None:
                # Feedback may land on another replica: it learns the length from the record.
                self._store.record_decision(decision_id, *self._record(pending))

    def cancel(self, decision_id: str) -> None:
        """The request of decision ``decision_id`` was never answered (its model failed, or the
        caller went away): it leaves its model's queue with nothing learned, and the decision
        takes no feedback."""
        now = self._now()
        with self._lock:
            pending = self._ledger.open(decision_id, self._policy, now)
            self._ledger.take(decision_id)
            if pending.in_flight and pending.current(self._policy):
                pending.cancel(self._policy, now)
            self._ledger.close(decision_id, "cancelled (never answered)")
            if self._store is not None:
                self._store.forget_decision(decision_id)

    def feedback(
        self,
        decision_id: str,
        *,
        quality: float | None = None,
        satisfied: bool | None = None,
        output_tokens: float | None = None,
        latency_s: float | None = None,
    ) -> bool:
        """Teaches the model chosen by decision ``decision_id`` how it did, and takes the request
        out of flight (recording ``latency_s`` when given) unless `complete` already did.

        Give ``quality`` (refined feedback, on the scale of the training data) or ``satisfied``
        (binary feedback, learned as quality 1 or 0 with weight ``binary_feedback_weight``).
        Returns ``True`` when learned, ``False`` when the decision's model has been removed
        since, even if a model of that name was added again (a no-op). Raises
        `DecisionNotFoundError` for an id never issued, expired or already answered, and
        `InvalidInputError` for bad values (every value is checked, against the bounds the
        decision core applies, before anything changes); neither changes any state.
        """
        target, weight = self._feedback_target(quality, satisfied)
        _check_optional("output_tokens", output_tokens)
        _check_optional("latency_s", latency_s)
        now = self._now()
        store = self._store
        if store is None:
            return (
                self._learn(decision_id, target, weight, output_tokens, latency_s, now) is not None
            )
        # Learned and appended under the store's lock, so a checkpoint never holds an
        # observation the stream lacks.
        with store.publishing():
            with self._lock:
                pending = self._ledger.get(decision_id)
                if pending is not None:
                    _check_latency_once(decision_id, pending, latency_s)
            if pending is not None:
                self._claim(store, decision_id)
                learned = self._learn(decision_id, target, weight, output_tokens, latency_s, now)
            else:
                learned = self._learn_remote(store, decision_id, target, weight, output_tokens)
            if learned is not None:
                store.publish(learned)
        return learned is not None

    def _claim(self, store: RedisStore, decision_id: str) -> None:
        """Claims a decision of this replica's for this feedback; one already answered on
        another replica leaves the queue and raises DecisionNotFoundError."""
        if store.claim(decision_id, self._config.feedback_ttl_s):
            return
        self._settle(decision_id)
        raise DecisionNotFoundError(f"decision {decision_id!r} is {_ANSWERED_ELSEWHERE}")

    def _learn_remote(
        self,
        store: RedisStore,
        decision_id: str,
        target: float,
        weight: float,
        output_tokens: float | None,
    ) -> Observation | None:
        """Learns the feedback for a decision made on another replica, from its shared record
        (with the answer's length `complete` measured there, unless the feedback gives one).
        Its latency, if given, is left out: the queue it describes is the other replica's."""
        with self._lock:
            # One this replica never saw may be another replica's.
            self._ledger.refuse_closed(decision_id)
        try:
            record = store.fetch_decision(decision_id)
        except MixllmError as err:
            raise DecisionNotFoundError(
                f"no decision with id {decision_id!r} here, and the store cannot be asked: {err}"
            ) from err
        if record is None:
            raise DecisionNotFoundError(f"no decision with id {decision_id!r}")
        if not store.claim(decision_id, self._config.feedback_ttl_s):
            raise DecisionNotFoundError(f"decision {decision_id!r} is already answered")
        tokens = record.output_tokens if output_tokens is None else output_tokens
        with self._lock:
            if record.model not in self._policy or self._arm_of(record.model) != record.arm:
                self._ledger.close(decision_id, "answered (its model had been removed)")
                return None
            self._policy.update(
                record.model, record.context, quality=target, output_tokens=tokens, weight=weight
            )
            self._ledger.close(decision_id, "already answered")
        return Observation(
            id=decision_id,
            replica=store.replica,
            model=record.model,
            context=record.context,
            quality=target,
            output_tokens=tokens,
            weight=weight,
            arm=record.arm,
        )

    def _settle(self, decision_id: str) -> None:
        """A decision of this replica's was answered on another: its request leaves the queue
        as if served as predicted, and it takes no more feedback."""
        now = self._now()
        with self._lock:
            pending = self._ledger.take(decision_id)
            if pending is None:
                return
            if pending.in_flight and pending.current(self._policy):
                pending.leave_queue(self._policy, None, now)
            self._ledger.close(decision_id, _ANSWERED_ELSEWHERE)

    def _learn(
        self,
        decision_id: str,
        target: float,
        weight: float,
        output_tokens: float | None,
        latency_s: float | None,
        now: float,
    ) -> Observation | None:
        """Learns a decision's feedback; returns what was learned, or None for a decision
        whose model was removed."""
        with self._lock:
            pending = self._ledger.open(decision_id, self._policy, now)
            _check_latency_once(decision_id, pending, latency_s)
            policy = self._policy
            if not pending.current(policy):
                self._ledger.take(decision_id)
                self._ledger.close(decision_id, "answered (its model had been removed)")
                return None
            tokens = pending.output_tokens if output_tokens is None else output_tokens
            policy.update(
                pending.model,
                pending.context,
                quality=target,
                # A length learned at completion is not taught twice.
                output_tokens=None if pending.length_learned and output_tokens is None else tokens,
                weight=weight,
            )
            self._ledger.take(decision_id)
            if pending.in_flight:
                pending.leave_queue(policy, latency_s, now)
            self._ledger.close(decision_id, "already answered")
            if pending.text is not None:
                self._feedback_log.append(_Feedback(pending.text, pending.model, target, tokens))
        return Observation(
            id=decision_id,
            replica=self._store.replica if self._store is not None else "",
            model=pending.model,
            context=pending.context,
            quality=target,
            output_tokens=tokens,
            weight=weight,
            arm=pending.arm,
        )

    def _feedback_target(
        self, quality: float | None, satisfied: bool | None
    ) -> tuple[float, float]:
        if (quality is None) == (satisfied is None):
            raise InvalidInputError("give exactly one of quality (refined) or satisfied (binary)")
        if satisfied is not None:
            if not isinstance(satisfied, (bool, np.bool_)):
                raise InvalidInputError(f"satisfied must be True or False, got {satisfied!r}")
            return (1.0 if satisfied else 0.0), self._config.binary_feedback_weight
        _check_optional("quality", quality, minimum=None)
        return float(quality), 1.0  # type: ignore[arg-type]

    def pending(self) -> int:
        """Decisions awaiting feedback."""
        with self._lock:
            return len(self._ledger)

    # -- the pool -------------------------------------------------------------------------------

    def add_model(self, model: ModelConfig, *, examples: RoutingDataset | None = None) -> None:
        """Adds a model with a fresh arm at its priors (``prior_quality`` decides how eagerly
        it is tried: the exploration bonus alone is small at the paper's alpha = 0.01), or, with
        ``examples`` (a data set holding outcomes of a model of this name), an arm warm-started
        by an exact fit on them. With a store, the other replicas add it too (at its priors: a
        warm start cannot be shared, so it is refused then)."""
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
        if examples is not None:
            warm = self._warm_start(model.name, examples)
        if arm is None:
            arm = secrets.token_hex(8) if self._store is not None else ""
        with self._shared("add", model, arm), self._lock:
            self._policy.add_model(model.name, **model.policy_kwargs())
            if warm is not None:
                self._policy.fit(model.name, *warm)
            self._config = self._config.with_models((*self._config.models, model))
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
                **{k: profile[k] for k in _PROFILE_FIELDS},
                now_s=self._now(),
            )
            self._config = self._config.with_models(
                tuple(model if m.name == model.name else m for m in self._config.models)
            )

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

    def describe_models(self) -> list[dict[str, Any]]:
        """The pool with prices and speeds, and what the router has learned of each model: how
        many outcomes it has seen, their mean quality and (geometric) mean output length, and
        the live queue (requests in flight, the wait predicted now, how much longer than
        predicted its requests have been taking, and their mean service time)."""
        rows = []
        now = self._now()
        for model in self._config.models:
            if model.name not in self._policy:
                continue
            state = self._policy.inspect(model.name)
            # The context's last entry is the constant 1, so the last entry of b is the
            # weighted sum of the residuals over the prior: their mean is b[-1] / Σw. The length
            # head learns only from observed lengths; its Σw is A_len's last diagonal entry less
            # its ridge.
            seen = state["weight_sum"]
            mean_residual_q = state["b_quality"][-1] / seen if seen > 0 else 0.0
            seen_len = state["length_a"][-1, -1] - self._policy.length_ridge
            mean_residual_len = state["b_log_length"][-1] / seen_len if seen_len > 0 else 0.0
            log_length = math.log1p(state["prior_output_tokens"]) + mean_residual_len
            profile = model.policy_kwargs()
            rows.append(
                {
                    "name": model.name,
                    **{k: v for k, v in profile.items() if not k.startswith("prior")},
                    "observations": state["observations"],
                    "mean_quality": float(state["prior_quality"] + mean_residual_q),
                    "mean_output_tokens": float(math.expm1(log_length)),
                    "in_flight": state["in_flight"],
                    "predicted_wait_s": self._policy.predicted_wait_s(model.name, now_s=now),
                    "service_ratio": state["service_ratio"],
                    "mean_service_s": state["mean_service_s"],
                }
            )
        return rows

    # -- persistence ----------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Saves configuration, projection and every arm under ``directory``.

        The state is one snapshot, taken under the Router's lock (routing, feedback and pool
        changes wait only for the copy, never for the disk). Saves into one folder, from threads
        or processes, take turns. Each writes a complete new state folder, then switches the
        ``CURRENT`` pointer to it with an atomic rename, then deletes older folders and whatever
        crashed saves left: a crash at any point leaves the previous save loadable
        (docs/guarantees.md). Returns the folder written.
        """
        with self._lock:
            projection = self._require_projection()
            config = self._config.to_dict()
            policy = self._policy.to_bytes()
            calibration = self._calibration
        files = {
            "config.json": json.dumps(config, indent=2, allow_nan=True).encode("utf-8"),
            "projection.npz": projection.to_bytes(),
            "policy.bin": policy,
        }
        if calibration is not None:
            files[_CALIBRATION] = json.dumps(calibration.to_dict(), indent=2).encode("utf-8")
        manifest = {
            "format": STATE_FORMAT,
            "mixllm": __version__,
            "files": {f: hashlib.sha256(data).hexdigest() for f, data in files.items()},
        }
        files["manifest.json"] = json.dumps(manifest, indent=2).encode("utf-8")
        return state_folder.write_state(Path(directory), files)

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        embedder: Embedder | None = None,
        clock: Callable[[], float] | None = None,
    ) -> Router:
        """Loads a state written by `save` (checking every file against its manifest, and its
        size before reading it); ``clock`` as in the constructor. Anything but a loadable state
        raises `StateFileError` naming the file and the problem."""
        root = Path(directory)
        # A save may switch CURRENT and delete the folder it named while this load reads it:
        # then the load starts again from the new CURRENT (a few times at most).
        for attempt in range(_LOAD_ATTEMPTS):
            name = state_folder.current_state(root)
            if name is None:
                raise StateFileError(
                    f"{root} holds no saved router (no {state_folder.CURRENT} file)"
                )
            folder = root / name
            try:
                config, projection, policy, calibration = _read_state(folder)
                break
            except StateFileError:
                moved = state_folder.current_state(root) != name
                if not moved or attempt == _LOAD_ATTEMPTS - 1:
                    raise
        try:
            return cls(
                config,
                embedder=embedder,
                projection=projection,
                policy=policy,
                clock=clock,
                calibration=calibration,
            )
        except ConfigError as err:
            raise StateFileError(f"{folder}: config.json and policy.bin disagree: {err}") from err

    @classmethod
    def default(
        cls, *, embedder: Embedder | None = None, clock: Callable[[], float] | None = None
    ) -> Router:
        """The router shipped with the package: RouterBench's 11 models, trained on the
        RouterBench subset (ARC-Challenge, MBPP, Winogrande) with `mixllm train`; ``clock``
        as in the constructor."""
        return cls.load(Path(__file__).with_name("default_state"), embedder=embedder, clock=clock)

    def with_config(self, **changes: Any) -> Router:
        """A Router sharing this one's learned state, with some decision settings changed
        (``willingness_to_pay``, ``feedback_ttl_s``, ``max_pending``). Refused while a store
        is attached: the store settles decisions and applies the other replicas' pool changes
        on the Router it is attached to only, so change the settings before attaching."""
        if self._store is not None:
            raise ConfigError(
                "with_config is refused while a store is attached: change the settings before "
                "attach_store"
            )
        allowed = {"willingness_to_pay", "feedback_ttl_s", "max_pending", *OPERATING_POINTS}
        unknown = sorted(set(changes) - allowed)
        if unknown:
            raise ConfigError(f"with_config cannot change {', '.join(unknown)}")
        if set(changes) & {"willingness_to_pay", *OPERATING_POINTS}:
            # A new operating point replaces the old one, whichever form either takes.
            changes = {**{k: None for k in OPERATING_POINTS}, **changes}
        config = replace(self._config, **changes)
        router = Router(
            config,
            embedder=self._embedder,
            projection=self._projection,
            policy=self._policy,
            clock=self._clock,
            calibration=self._calibration,
        )
        return router


def _read_state(
    folder: Path,
) -> tuple[RouterConfig, LinearProjection, Policy, Calibration | None]:
    """The configuration, projection, policy and calibration table (optional: states saved
    before it, or fitted on too few rows, have none) of one state folder, every file checked."""
    manifest = _json_object(folder, "manifest.json", MAX_MANIFEST_BYTES)
    if manifest.get("format") != STATE_FORMAT:
        raise StateFileError(
            f"{folder}: state format {manifest.get('format')!r}, this mixllm reads {STATE_FORMAT}"
        )
    checksums = manifest.get("files")
    if not isinstance(checksums, dict):
        raise StateFileError(f"{folder}: the manifest lists no files")
    raw_config = _json_object(folder, "config.json", MAX_CONFIG_BYTES, checksums)
    try:
        config = RouterConfig.from_dict(raw_config)
    except (ValueError, TypeError, AttributeError, OverflowError, RecursionError) as err:
        raise StateFileError(f"{folder}: invalid configuration: {err}") from err
    try:
        projection = projection_from_bytes(
            _checked_file(folder, "projection.npz", MAX_PROJECTION_BYTES, checksums),
            str(folder / "projection.npz"),
        )
    except ProjectionError as err:
        raise StateFileError(f"{folder}: {err}") from err
    policy_bytes = _checked_file(folder, "policy.bin", _policy_bytes_bound(config), checksums)
    try:
        policy = Policy.from_bytes(policy_bytes, dim=config.dim + 1)
    except MixllmError as err:
        raise StateFileError(f"{folder / 'policy.bin'}: {err}") from err
    saved_knobs = raw_config.get("router", {})
    # Saved before the length head had its own ridge, or before the margin below τ: it
    # continues with what its policy file carries (the quality ridge, no margin), and a
    # refit keeps using it.
    config = replace(
        config,
        **{k: getattr(policy, k) for k in _LATER_KNOBS if k not in saved_knobs},
    )
    calibration = None
    if _CALIBRATION in checksums:
        try:
            calibration = Calibration.from_dict(
                _json_object(folder, _CALIBRATION, MAX_CALIBRATION_BYTES, checksums)
            )
        except ValueError as err:
            raise StateFileError(f"{folder}: invalid {_CALIBRATION}: {err}") from err
    return config, projection, policy, calibration


_ANSWERED_ELSEWHERE = "already answered (on another replica)"
_PROFILE_FIELDS = ("price_in", "price_out", "fee", "ttft_s", "tokens_per_s", "concurrency")


@dataclass(frozen=True)
class _Limits:
    """One query's limits on the models it may go to (`Router.route`)."""

    models: frozenset[str] | None
    max_cost_usd: float
    max_latency_s: float

    @classmethod
    def of(
        cls,
        models: Sequence[str] | None,
        max_cost_usd: float | None,
        max_latency_s: float | None,
    ) -> _Limits | None:
        """The limits checked, or None when there are none."""
        if models is None and max_cost_usd is None and max_latency_s is None:
            return None
        allowed = None
        if models is not None:
            if isinstance(models, str) or not all(isinstance(m, str) for m in models):
                raise InvalidInputError(f"models must be a sequence of model names, got {models!r}")
            if not models:
                raise InvalidInputError("models must name at least one model")
            allowed = frozenset(models)
        _check_optional("max_cost_usd", max_cost_usd)
        _check_optional("max_latency_s", max_latency_s)
        if max_latency_s is not None and max_latency_s <= 0:
            raise InvalidInputError(f"max_latency_s must be > 0, got {max_latency_s}")
        return cls(
            allowed,
            math.inf if max_cost_usd is None else float(max_cost_usd),
            math.inf if max_latency_s is None else float(max_latency_s),
        )

    def arguments(self) -> dict[str, Any]:
        """The limits as `Policy.decide` takes them."""
        return {
            "models": None if self.models is None else sorted(self.models),
            "max_cost_usd": self.max_cost_usd,
            "max_latency_s": self.max_latency_s,
        }


def _check_latency_once(
    decision_id: str, pending: PendingDecision, latency_s: float | None
) -> None:
    if latency_s is not None and not pending.in_flight:
        raise InvalidInputError(
            f"decision {decision_id!r} was completed already, with its latency: "
            "give latency_s to complete() or to feedback(), not both"
        )


def _check_knobs(config: RouterConfig, policy: Policy) -> None:
    """Refuses a configuration and a policy that disagree on a decision knob: a policy decides
    with its own knobs, so a Router whose configuration said otherwise would save a state that
    does not describe itself."""
    for knob in _POLICY_KNOBS:
        configured = getattr(config, knob)
        if knob == "tau_s":
            configured = policy_tau_s(configured)
        elif knob in TUNED_KNOBS:
            configured = config.knob(knob)
        if configured != getattr(policy, knob):
            raise ConfigError(
                f"the configuration's {knob} is {getattr(config, knob)!r} but the policy's is "
                f"{getattr(policy, knob)!r}"
            )


def _check_optional(name: str, value: float | None, *, minimum: float | None = 0.0) -> None:
    """A feedback value: None, or a finite number of magnitude at most `MAX_MAGNITUDE` (what
    the decision core learns from) and at least ``minimum``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise InvalidInputError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidInputError(f"{name} is too large, got {value}") from None
    if not math.isfinite(number):
        raise InvalidInputError(f"{name} must be finite, got {value}")
    if abs(number) > MAX_MAGNITUDE:
        raise InvalidInputError(f"{name} must be at most {MAX_MAGNITUDE:g} in size, got {value}")
    if minimum is not None and number < minimum:
        raise InvalidInputError(f"{name} must be >= {minimum:g}, got {value}")


def _check_text(name: str, text: object) -> None:
    """A query text: a ``str`` that is valid Unicode (encodable as UTF-8)."""
    if not isinstance(text, str):
        raise InputTypeError(f"{name} must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidInputError(
            f"{name} is not valid Unicode: {err.reason} at position {err.start}"
        ) from None


def _text_key(text: str) -> bytes:
    """The cache key of a checked text: a digest, so a cache never keeps texts themselves."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _context_bytes(key: bytes, context: NDArray[np.float64]) -> int:
    """What a context cache entry is accounted as: its key, its array and a fixed allowance
    for the Python objects around them."""
    return len(key) + context.nbytes + CACHE_ENTRY_OVERHEAD


def _checked_file(
    folder: Path, file: str, limit: int, checksums: dict[str, Any] | None = None
) -> bytes:
    """The bytes of a state file, at most ``limit`` of them, checked against the manifest's
    sha256 when ``checksums`` is given. What is hashed is what is parsed: one read."""
    try:
        data = state_folder.read_bounded(folder / file, limit, what=file)
    except FileNotFoundError:
        raise StateFileError(f"{folder}: {file} is missing") from None
    if checksums is not None and hashlib.sha256(data).hexdigest() != checksums.get(file):
        raise StateFileError(f"{folder}: {file} does not match its checksum (damaged)")
    return data


def _json_object(
    folder: Path, file: str, limit: int, checksums: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A state's JSON file, which must hold an object."""
    data = _checked_file(folder, file, limit, checksums)
    try:
        value = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise StateFileError(f"{folder}: unreadable {file}: {err}") from None
    if not isinstance(value, dict):
        raise StateFileError(f"{folder}: {file} holds a {type(value).__name__}, not an object")
    return value


def _policy_bytes_bound(config: RouterConfig) -> int:
    """The most bytes the policy file of a pool like ``config``'s can take: per model four
    packed symmetric matrices and four vectors of the context's size, a name of at most
    4,096 bytes and its fixed fields, twice over to leave room for the format to grow."""
    d = config.dim + 1
    per_model = 8 * (4 * d * (d + 1) // 2 + 4 * d) + 4096 + 512
    return 2 * (len(config.models) * per_model + 4096)


def _feedback_dataset(logged: Sequence[_Feedback], models: Sequence[str]) -> RoutingDataset:
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


def _concatenated(first: RoutingDataset, second: RoutingDataset) -> RoutingDataset:
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
