"""Which models are cooled down: a model that fails ``failures`` times in a row is left out of
routing for ``cooldown_s`` seconds, then tried again (probed) by the next request that routes to
it. A success ends its run of failures; a failure while probing cools it down again at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

__all__ = ["Cooldowns"]


class Cooldowns:
    def __init__(
        self,
        *,
        failures: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failures
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}
        self._until: dict[str, float] = {}

    def failed(self, model: str) -> bool:
        """Records a failure; True when it cooled the model down."""
        with self._lock:
            count = self._failures.get(model, 0) + 1
            self._failures[model] = count
            if count >= self._threshold:
                self._until[model] = self._clock() + self._cooldown_s
                return True
            return False

    def succeeded(self, model: str) -> None:
        with self._lock:
            self._failures.pop(model, None)
            self._until.pop(model, None)

    def cooled(self, model: str) -> bool:
        with self._lock:
            return self._clock() < self._until.get(model, -float("inf"))

    def available(self, models: Iterable[str]) -> list[str]:
        """The models not cooled down now, in the order given."""
        now = self._clock()
        with self._lock:
            return [m for m in models if now >= self._until.get(m, -float("inf"))]
