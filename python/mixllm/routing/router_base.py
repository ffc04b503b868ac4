"""The state the parts of a `Router` share, and the helpers they all use."""

from __future__ import annotations

import math
import numbers
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from mixllm._core import InvalidInputError, Policy
from mixllm._lru import LruCache
from mixllm.config import RouterConfig
from mixllm.data import RoutingDataset
from mixllm.encoders.embedding import Embedder
from mixllm.errors import NotFittedError
from mixllm.routing.calibration import Calibration
from mixllm.routing.ledger import DecisionLedger
from mixllm.understanding.projection import LinearProjection

if TYPE_CHECKING:
    import asyncio

    from mixllm.routing.batching import Batcher
    from mixllm.routing.learning import LoggedFeedback
    from mixllm.store import RedisStore
    from mixllm.store.position import StreamPosition


class RouterBase:
    """The state every part of the Router works on, and the helpers they share."""

    _config: RouterConfig
    _embedder: Embedder | None
    _projection: LinearProjection | None
    _calibration: Calibration | None
    _policy: Policy
    _tuned: tuple[str, ...]
    _training: RoutingDataset | None
    _feedback_log: deque[LoggedFeedback]
    _clock: Callable[[], float]
    _lock: threading.Lock
    _refit_lock: threading.Lock
    # Bumped by every pool change, and by every fit or refit swapped in: a fit or refit checks
    # at its swap that neither changed under it (what changed is kept, the fit discarded).
    _pool_generation: int
    _fit_generation: int
    # What swapped in the last fit generation: "fitted" (`fit`) or "refitted" (`refit`).
    _last_fit_kind: str
    # Fits and refits learning now, and whether an automatic refit is scheduled: a store is
    # not attached meanwhile.
    _fits_running: int
    _refit_scheduled: bool
    _ledger: DecisionLedger
    _contexts: LruCache[bytes, tuple[NDArray[np.float64], float]]
    _id_prefix: str
    _counter: Iterator[int]
    _embed_thread: ThreadPoolExecutor | None
    _batchers: weakref.WeakKeyDictionary[
        asyncio.AbstractEventLoop, Batcher[str, tuple[NDArray[np.float64], float]]
    ]
    _store: RedisStore | None
    _arms: dict[str, str]
    _saved_position: StreamPosition | None

    def _after_feedback(self) -> None:
        """Called after each feedback learned without a store (automatic refits hook in)."""

    def _arm_of(self, name: str) -> str:
        return self._arms.get(name, "")

    def _now(self) -> float:
        """The clock's reading, checked before anything changes: a clock that fails or returns
        a non-finite time must not leave a request counted in flight for good."""
        now = self._clock()
        if isinstance(now, bool) or not isinstance(now, numbers.Real) or not math.isfinite(now):
            raise InvalidInputError(f"the Router's clock returned {now!r}, not a finite time")
        return float(now)

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

    def _require_projection(self) -> LinearProjection:
        if self._projection is None:
            raise NotFittedError(
                "this Router has no learned projection: call fit(dataset) or Router.load(dir)"
            )
        return self._projection
