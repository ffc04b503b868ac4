"""Answers' lengths measured when their requests complete, waiting to be learned and shared.

`complete` is on a service's serving path (the gateway calls it on its event loop), so it only
queues the length: a background thread hands what was queued, every few milliseconds, to the
store, which learns each length and appends it to the stream as feedback's observations are,
under the same lock (so a checkpoint or a saved state never holds a length the stream lacks).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from mixllm.routing.ledger import PendingDecision

__all__ = ["LengthQueue", "QueuedLength"]

log = logging.getLogger(__name__)

# How often the thread wakes to hand over what was queued: waking it for every completion would
# cost the serving path a thread switch each time.
_DELIVER_EVERY_S = 0.005
# Lengths handed over at once, at most: bounds the time the store's lock is held.
_BATCH = 1000


class QueuedLength(NamedTuple):
    """A completed request's length, and the decision it answers (its model, arm, context)."""

    decision_id: str
    pending: PendingDecision
    output_tokens: float


class LengthQueue:
    """A bounded queue of lengths (when full, the oldest is dropped and counted) and the thread
    that hands them to ``deliver``, oldest first. Appending takes no lock: a deque's append is
    atomic, and the serving path must not wait behind the thread."""

    def __init__(self, capacity: int, deliver: Callable[[list[QueuedLength]], None]) -> None:
        self._queue: deque[QueuedLength] = deque(maxlen=capacity)
        self._deliver = deliver
        self.dropped = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def put(self, length: QueuedLength) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1  # the append below drops the oldest
        self._queue.append(length)

    def __len__(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mixllm-lengths", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stops the thread, then hands over what is still queued."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.drain()

    def drain(self) -> None:
        """Hands over everything queued now, in batches."""
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(_BATCH, len(self._queue)))]
            self._deliver(batch)

    def _run(self) -> None:
        while not self._stop.wait(_DELIVER_EVERY_S):
            try:
                self.drain()
            except Exception:  # the thread must outlive one bad batch; the rest still goes
                log.exception("cannot learn the lengths of completed requests")
