"""Answers' lengths measured when their requests complete, waiting to be learned and shared.

`complete` is on a service's serving path (the gateway calls it on its event loop), so it only
queues the length: a background thread hands what was queued, every few milliseconds, to the
store, which learns each length and appends it to the stream as feedback's observations are,
under the same lock (so a checkpoint or a saved state never holds a length the stream lacks).
"""

from __future__ import annotations

import logging
import math
import threading
import time
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
    atomic, and the serving path must not wait behind the thread.

    A hand-over that raises loses its batch: it is logged and counted in ``unsent``, and the
    rest still goes."""

    def __init__(self, capacity: int, deliver: Callable[[list[QueuedLength]], None]) -> None:
        self._queue: deque[QueuedLength] = deque(maxlen=capacity)
        self._deliver = deliver
        self.dropped = 0
        self.unsent = 0
        # How many lengths the hand-over in progress holds.
        self._in_hand = 0
        # Both the thread and `close` may count a failed hand-over.
        self._count_lock = threading.Lock()
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

    def close(self, timeout_s: float) -> None:
        """Stops the thread, then hands over what is still queued, taking about ``timeout_s`` at
        most. Never raises: a hand-over that fails is logged and counted in ``unsent``, and
        what could not be handed over in time stays queued (its count is logged)."""
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                # Stuck in a hand-over: another one from here would wait behind it.
                log.warning(
                    "the lengths of %d completed requests were not learned: the thread handing "
                    "them over did not stop within %.1f s",
                    len(self._queue) + self._in_hand,
                    timeout_s,
                )
                return
            self._thread = None
        self.drain(until=deadline)
        if self._queue:
            log.warning(
                "the lengths of %d completed requests were not learned: closing took longer "
                "than %.1f s",
                len(self._queue),
                timeout_s,
            )

    def drain(self, until: float = math.inf) -> None:
        """Hands over everything queued now, in batches, while the monotonic clock is before
        ``until``."""
        while self._queue and time.monotonic() < until:
            batch = [self._queue.popleft() for _ in range(min(_BATCH, len(self._queue)))]
            self._in_hand = len(batch)
            try:
                self._deliver(batch)
            except Exception:  # one bad batch must not keep the rest from going
                with self._count_lock:
                    self.unsent += len(batch)
                log.exception("cannot learn the lengths of %d completed requests", len(batch))
            finally:
                self._in_hand = 0

    def _run(self) -> None:
        while not self._stop.wait(_DELIVER_EVERY_S):
            self.drain()
