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

    ``deliver`` is given a batch and removes each length from its front once it has taken it
    (learned it, or kept it to share): what is left in the batch when it raises, or when `close`
    gives up on it, was not handed over. A hand-over that raises loses what it left: that is
    logged and counted in ``unsent``, and the rest still goes."""

    def __init__(self, capacity: int, deliver: Callable[[deque[QueuedLength]], None]) -> None:
        self._queue: deque[QueuedLength] = deque(maxlen=capacity)
        self._deliver = deliver
        self.dropped = 0
        self.unsent = 0
        # The batch being handed over (what ``deliver`` has not taken yet).
        self._in_hand: deque[QueuedLength] = deque()
        # Until when the thread may hand over what is queued (set by `close`; minus infinity
        # once it gave up, so that nothing is handed over after it returned).
        self._final_until = math.inf
        # Taking a batch from the queue and `close` counting what is left (queued and in hand)
        # exclude each other, so that a length is neither counted twice nor missed, and no
        # batch is taken once `close` has given up.
        self._take_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def put(self, length: QueuedLength) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1  # the append below drops the oldest
        self._queue.append(length)

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def given_up(self) -> bool:
        """Whether `close` gave up on what was left: a hand-over still under way should then
        take nothing more (what it left is counted as not learned)."""
        return self._final_until == -math.inf

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mixllm-lengths", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float) -> None:
        """Stops the thread once it has handed over what is still queued, waiting ``timeout_s``
        at most. Never raises: a hand-over that fails is logged and counted in ``unsent``, and
        what was not handed over in time is logged; nothing more is handed over once it
        returned (a hand-over already under way cannot be interrupted, and may still finish
        the length it holds)."""
        self._final_until = time.monotonic() + timeout_s
        if self._thread is None:
            self.start()  # the last hand-over is always the thread's: close never waits on one
        self._stop.set()
        thread = self._thread
        assert thread is not None
        thread.join(timeout_s)
        with self._take_lock:
            self._final_until = -math.inf
            left = len(self._queue) + len(self._in_hand)
        if not thread.is_alive():
            self._thread = None
        if left:
            log.warning(
                "the lengths of %d completed requests were not learned within %.1f s of closing",
                left,
                timeout_s,
            )

    def drain(self, until: float = math.inf) -> None:
        """Hands over everything queued now, in batches, while the monotonic clock is before
        ``until`` and before the time `close` gives the thread."""
        while True:
            with self._take_lock:
                if not self._queue or time.monotonic() >= min(until, self._final_until):
                    return
                batch = deque(self._queue.popleft() for _ in range(min(_BATCH, len(self._queue))))
                self._in_hand = batch
            try:
                self._deliver(batch)
            except Exception:  # one bad batch must not keep the rest from going
                lost = len(batch)
                self.unsent += lost
                if lost:
                    log.exception("cannot learn the lengths of %d completed requests", lost)
                else:
                    log.exception("the lengths of completed requests were learned, then failed")
            finally:
                with self._take_lock:
                    self._in_hand = deque()

    def _run(self) -> None:
        while not self._stop.wait(_DELIVER_EVERY_S):
            self.drain()
        self.drain(until=self._final_until)
