"""The Router: text in, model out, learning from feedback as it goes.

It ties together the sentence encoder (`Embedder`), the tag-enhanced projection
(`TagProjection`) and the decision core (`Policy`), and keeps the bookkeeping a service needs:

- every `route` issues a decision id and counts the request as in flight for the chosen model,
  so predicted waiting times are live (on a monotonic clock, or the one the Router is given);
- `feedback(decision_id, ...)` teaches the chosen model's arm (refined quality, or a binary
  satisfied/unsatisfied signal with the lower weight κ of the MixLLM paper's continual
  training) and takes the request out of flight, recording its latency; a service that learns
  the quality later calls `complete(decision_id, latency_s=...)` when the answer arrives and
  `feedback` afterwards;
- `reroute(decision_id, model)` opens a decision for another model from a pending decision's
  own query (its context, prompt tokens and willingness to pay), for a fallback when the chosen
  model cannot answer, without embedding the text again;
- decisions wait for feedback at most ``feedback_ttl_s`` seconds and at most ``max_pending`` of
  them are kept; older ones are dropped (their requests leave the queue) and feedback for them
  raises `DecisionNotFoundError` saying so. Feedback for a decision whose model was removed since
  is a documented no-op: it returns ``False`` and changes nothing;
- feedback is logged for `refit`; with ``refit_growth`` set (off by default), once the log
  reaches that many times the rows of the last fit the Router refits itself in a background
  thread (`refit`: projection, domains and heads learned again), routing on with the state it
  has until the new one swaps in;
- `save(dir)` / `Router.load(dir)` keep the configuration, the projection and every arm, so a
  restarted service routes exactly as before; docs/guarantees.md states what a save and a load
  guarantee, every bound on sizes and work, and which error each bad input gets.

Thread-safe: many threads may route and send feedback through one Router.
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from mixllm._core import Policy, StateFileError
from mixllm._lru import LruCache
from mixllm.config import OPERATING_POINTS, TUNED_KNOBS, RouterConfig
from mixllm.data import RoutingDataset
from mixllm.encoders.embedding import Embedder
from mixllm.errors import ConfigError
from mixllm.routing import refit_state
from mixllm.routing.auto_refit import AutoRefit
from mixllm.routing.calibration import Calibration
from mixllm.routing.fitting import FitReport, Fitting, newest_rows
from mixllm.routing.introspection import Introspection
from mixllm.routing.learning import Learning, LoggedFeedback
from mixllm.routing.ledger import DecisionLedger
from mixllm.routing.persistence import Persistence, check_knobs, read_current_state
from mixllm.routing.pool_changes import PoolChanges
from mixllm.routing.route import Route, RouteDecision
from mixllm.routing.store_link import StoreLink
from mixllm.store.position import StreamPosition
from mixllm.understanding.projection import LinearProjection

if TYPE_CHECKING:
    import asyncio

    from mixllm.routing.batching import Batcher
    from mixllm.store import RedisStore


__all__ = ["FitReport", "RouteDecision", "Router"]

# The routing-context cache's bound in bytes (besides its entry count, `cache_size`).
CONTEXT_CACHE_BYTES = 16 << 20


class Router(
    Route, Learning, AutoRefit, Fitting, StoreLink, PoolChanges, Introspection, Persistence
):
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
            check_knobs(config, policy)
        self._config = config
        self._embedder = embedder
        self._projection = projection
        self._calibration = calibration
        self._policy = policy
        # What `refit` relearns from: the rows of the last fit, and the feedback since.
        self._training: RoutingDataset | None = None
        self._feedback_log: deque[LoggedFeedback] = deque(maxlen=config.feedback_log_size)
        self._init_refits()
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
        # The stream position a state saved with a store attached holds (`load`).
        self._saved_position: StreamPosition | None = None
        if store is not None:
            self.attach_store(store)

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
    def calibration(self) -> Calibration | None:
        """λ → expected quality and cost, measured on held-out folds by the last fit."""
        return self._calibration

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
        folder, config, projection, policy, calibration, position, refit = read_current_state(
            Path(directory)
        )
        if refit.tuned is not None:
            # Knobs the saved Router chose by cross-validation: a refit chooses them again,
            # as it would have; until then they run with the values the policy carries.
            unset: dict[str, Any] = {k: None for k in refit.tuned}
            config = replace(config, **unset)
        try:
            router = cls(
                config,
                embedder=embedder,
                projection=projection,
                policy=policy,
                clock=clock,
                calibration=calibration,
            )
        except ConfigError as err:
            raise StateFileError(f"{folder}: config.json and policy.bin disagree: {err}") from err
        router._saved_position = position
        # A state saved with more rows than a fit keeps (written elsewhere, or by a build
        # with a larger bound) keeps the newest, as a fit does.
        training = refit.training
        router._training = (
            None if training is None else newest_rows(training, refit_state.MAX_TRAINING_ROWS)
        )
        router._feedback_log.extend(refit.feedback)
        return router

    @classmethod
    def default(
        cls, *, embedder: Embedder | None = None, clock: Callable[[], float] | None = None
    ) -> Router:
        """The router shipped with the package: RouterBench's 11 models, trained on the
        RouterBench subset (ARC-Challenge, MBPP, Winogrande) with `mixllm train`; ``clock``
        as in the constructor."""
        return cls.load(Path(__file__).parents[1] / "default_state", embedder=embedder, clock=clock)

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
        router.take_refit_inputs(self)
        return router

    def take_refit_inputs(self, source: Router) -> None:
        """What `refit` relearns from, taken from ``source`` (a Router this one was made from):
        the rows of its last fit, its feedback log and the knobs its fits cross-validate."""
        with source._lock:
            training, logged, tuned = source._training, list(source._feedback_log), source._tuned
        with self._lock:
            self._training = training
            self._feedback_log.extend(logged)
            self._tuned = tuned
