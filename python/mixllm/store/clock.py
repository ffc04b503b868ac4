"""Redis's clock as the replicas' shared one: decision deadlines are written in it, so that
replicas whose own clocks disagree still agree on when a decision expires."""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis

__all__ = ["SharedClock"]

# Readings kept: the offset is their median, so one delayed reply does not move it.
_READINGS = 9


class SharedClock:
    """The offset of Redis's clock (TIME) from this process's wall clock, from the latest
    readings, each taken halfway through its round trip (off by at most half of it)."""

    def __init__(self) -> None:
        self._readings: deque[float] = deque(maxlen=_READINGS)
        self._lock = threading.Lock()
        self.offset_ms = 0.0

    def read(self, client: redis.Redis) -> int:
        """Reads Redis's clock (raises the client's error); returns it, in ms since the epoch."""
        sent = time.time()
        reply: Any = client.time()
        received = time.time()
        shared_ms = int(reply[0]) * 1000 + int(reply[1]) / 1000
        with self._lock:
            self._readings.append(shared_ms - (sent + received) * 500)
            self.offset_ms = statistics.median(self._readings)
        return int(shared_ms)

    def to_shared(self, local_ms: int) -> int:
        """A time on this process's wall clock (ms since the epoch) on Redis's."""
        return round(local_ms + self.offset_ms)

    def to_local(self, shared_ms: int) -> int:
        """A time on Redis's clock on this process's wall clock."""
        return round(shared_ms - self.offset_ms)
