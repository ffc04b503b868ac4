"""Decision records shared between replicas, so feedback for a decision made on one replica is
accepted on any other, exactly once.

Each decision is written under its own key with the decision's time to live (``SET ... EX``) by
a background thread, so routing never waits on Redis; a feedback call claims its decision with
``SET ... NX``, which only one call across all replicas can win.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    import redis

__all__ = ["DecisionRecord", "DecisionRecords"]

log = logging.getLogger(__name__)

# Records written per round trip.
_WRITE_BATCH = 500
# How often the writer wakes to write what was queued: waking it for every decision would cost
# the decision path a thread switch each time.
_FLUSH_EVERY_S = 0.005
_SEPARATOR = b"\x00"
# One command for a whole batch (ARGV: ttl, then key, value pairs): a pipeline of one SET per
# record would cost the client far more than the server.
_SET_ALL = """
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
    redis.call('SET', ARGV[i], ARGV[i + 1], 'EX', ttl)
end
return (#ARGV - 1) / 2
"""  # model names never hold it; the context's raw bytes follow the first one


@dataclass(frozen=True)
class DecisionRecord:
    """What another replica needs to learn a decision's feedback."""

    model: str
    context: NDArray[np.float64]

    def to_bytes(self) -> bytes:
        context = np.ascontiguousarray(self.context, dtype="<f8").tobytes()
        return self.model.encode() + _SEPARATOR + context

    @classmethod
    def from_bytes(cls, data: bytes) -> DecisionRecord:
        model, _, context = data.partition(_SEPARATOR)
        return cls(model.decode(), np.frombuffer(context, dtype="<f8").astype(np.float64))


class DecisionRecords:
    """Writes decision records in the background (a bounded queue: when Redis cannot keep up or
    is down, the oldest unwritten records are dropped and counted, and feedback for them is only
    accepted by the replica that made them), reads them back, and claims them."""

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        *,
        capacity: int,
        redis_error: type[Exception],
    ) -> None:
        self._client = client
        self._namespace = namespace
        self._redis_error = redis_error
        self._queue: deque[tuple[str, DecisionRecord, int]] = deque(maxlen=capacity)
        self._wake = threading.Condition()
        self._stop = False
        self.dropped = 0
        self.written = 0
        self._set_all = client.register_script(_SET_ALL)
        self._thread = threading.Thread(target=self._write, name="mixllm-decisions", daemon=True)
        self._thread.start()

    def _key(self, decision_id: str) -> str:
        return f"{self._namespace}:decision:{decision_id}"

    def _claim_key(self, decision_id: str) -> str:
        return f"{self._namespace}:claim:{decision_id}"

    def put(self, decision_id: str, record: DecisionRecord, ttl_s: float) -> None:
        """Queues a record for writing (within a few milliseconds); never waits on Redis."""
        with self._wake:
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
            self._queue.append((decision_id, record, max(1, round(ttl_s))))

    def get(self, decision_id: str) -> DecisionRecord | None:
        """The record of a decision made on any replica, or None when there is none (never
        made, expired, or not written yet). Raises the client's error when Redis is down."""
        data: Any = self._client.get(self._key(decision_id))
        return None if data is None else DecisionRecord.from_bytes(data)

    def claim(self, decision_id: str, replica: str, ttl_s: float) -> bool:
        """Whether this call is the first, across every replica, to give the decision feedback.
        While Redis is unreachable the claim is granted locally (a replica cannot ask the
        others; a decision answered on two replicas during an outage is learned twice)."""
        try:
            won = self._client.set(
                self._claim_key(decision_id), replica, nx=True, ex=max(1, round(ttl_s))
            )
        except self._redis_error as err:
            log.debug("cannot claim decision %s, accepting it here: %s", decision_id, err)
            return True
        return bool(won)

    def close(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join()

    def _write(self) -> None:
        failing = False
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._stop, timeout=_FLUSH_EVERY_S)
                if self._stop:
                    return
                if not self._queue:
                    continue
                batch = [self._queue.popleft() for _ in range(min(_WRITE_BATCH, len(self._queue)))]
            try:
                # Records of one batch share the longest time to live among them.
                args: list[Any] = [max(ttl for _, _, ttl in batch)]
                for decision_id, record, _ in batch:
                    args += (self._key(decision_id), record.to_bytes())
                self._set_all(args=args)
            except self._redis_error as err:
                if not failing:
                    log.warning("cannot write decision records: %s", err)
                failing = True
                with self._wake:
                    # Back in front of the newer ones, as far as the queue has room.
                    room = (self._queue.maxlen or 0) - len(self._queue)
                    kept = batch[max(0, len(batch) - room) :]
                    self.dropped += len(batch) - len(kept)
                    self._queue.extendleft(reversed(kept))
                    # A bounded wait before trying again.
                    self._wake.wait_for(lambda: self._stop, timeout=0.2)
                continue
            failing = False
            with self._wake:
                self.written += len(batch)
