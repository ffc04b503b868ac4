"""Decision records shared between replicas, so feedback for a decision made on one replica is
accepted on any other, exactly once.

Each decision is written under its own key, expiring at the decision's deadline (``SET ...
PXAT``, an absolute time on the wall clock: a record written late, behind a backlog, still
expires when the decision does), by a background thread, so routing never waits on Redis. The
same thread rewrites a record when its request completes (with the answer's length) and deletes
it when the decision is cancelled or dropped, in the order they happened. A feedback call claims
its decision with ``SET ... NX``, which only one call across all replicas can win.
"""

from __future__ import annotations

import logging
import math
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    import redis

__all__ = ["DecisionRecord", "DecisionRecords", "deadline_ms"]

log = logging.getLogger(__name__)

# Records written per round trip.
_WRITE_BATCH = 500
# How often the writer wakes to write what was queued: waking it for every decision would cost
# the decision path a thread switch each time.
_FLUSH_EVERY_S = 0.005
_SEPARATOR = b"\x00"
# After the model and the arm: the deadline (ms since the epoch) and the answer's length (NaN:
# not measured), then the context's raw bytes.
_FIXED = struct.Struct("<qd")
# One command for a whole batch (ARGV: key, value, deadline triples; an empty value deletes the
# key): a pipeline of one SET per record would cost the client far more than the server.
_SET_ALL = """
for i = 1, #ARGV, 3 do
    if ARGV[i + 1] == '' then
        redis.call('DEL', ARGV[i])
    else
        redis.call('SET', ARGV[i], ARGV[i + 1], 'PXAT', ARGV[i + 2])
    end
end
return #ARGV / 3
"""  # model names and arm ids never hold it; the fixed fields and the context follow the second


def deadline_ms(ttl_s: float) -> int:
    """The wall-clock time, in milliseconds since the epoch, ``ttl_s`` seconds from now."""
    return math.ceil((time.time() + ttl_s) * 1000)


@dataclass(frozen=True)
class DecisionRecord:
    """What another replica needs to learn a decision's feedback."""

    model: str
    context: NDArray[np.float64]
    # The arm the decision was made with (`Router` arm ids): a model removed and added again has
    # a new one, which must not learn this decision.
    arm: str
    # When the decision expires: wall-clock milliseconds since the epoch.
    deadline_ms: int
    # The answer's length as `complete` measured it.
    output_tokens: float | None = None

    def expired(self) -> bool:
        return time.time() * 1000 > self.deadline_ms

    def to_bytes(self) -> bytes:
        context = np.ascontiguousarray(self.context, dtype="<f8").tobytes()
        tokens = math.nan if self.output_tokens is None else float(self.output_tokens)
        return (
            self.model.encode()
            + _SEPARATOR
            + self.arm.encode()
            + _SEPARATOR
            + _FIXED.pack(self.deadline_ms, tokens)
            + context
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> DecisionRecord:
        model, _, rest = data.partition(_SEPARATOR)
        arm, _, rest = rest.partition(_SEPARATOR)
        deadline, tokens = _FIXED.unpack_from(rest)
        context = np.frombuffer(rest[_FIXED.size :], dtype="<f8").astype(np.float64)
        return cls(
            model.decode(),
            context,
            arm.decode(),
            int(deadline),
            None if math.isnan(tokens) else float(tokens),
        )


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
        # (decision id, record or None to delete it, deadline in ms)
        self._queue: deque[tuple[str, DecisionRecord | None, int]] = deque(maxlen=capacity)
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

    def put(self, decision_id: str, record: DecisionRecord) -> None:
        """Queues a record for writing (within a few milliseconds), replacing any earlier one of
        the decision; never waits on Redis."""
        self._enqueue(decision_id, record, record.deadline_ms)

    def delete(self, decision_id: str) -> None:
        """Queues the deletion of a decision's record, after whatever was queued before it."""
        self._enqueue(decision_id, None, 0)

    def _enqueue(self, decision_id: str, record: DecisionRecord | None, deadline: int) -> None:
        with self._wake:
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
            self._queue.append((decision_id, record, deadline))

    def get(self, decision_id: str) -> DecisionRecord | None:
        """The record of a decision made on any replica, or None when there is none (never
        made, expired, ended, or not written yet). Raises the client's error when Redis is
        down."""
        data: Any = self._client.get(self._key(decision_id))
        if data is None:
            return None
        try:
            record = DecisionRecord.from_bytes(data)
        except (struct.error, ValueError) as err:
            # Not a record this version writes: no decision this replica can learn.
            log.warning("unreadable record of decision %s: %s", decision_id, err)
            return None
        # Redis expires keys lazily to the millisecond; the deadline is exact.
        return None if record.expired() else record

    def claim(self, decision_id: str, replica: str, ttl_s: float) -> bool:
        """Whether this call is the first, across every replica, to give the decision feedback.
        While Redis is unreachable the claim is granted locally (a replica cannot ask the
        others; a decision answered on two replicas during an outage is learned twice)."""
        try:
            won = self._client.set(
                self._claim_key(decision_id), replica, nx=True, px=max(1, math.ceil(ttl_s * 1000))
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
                args: list[Any] = []
                for decision_id, record, deadline in batch:
                    value = b"" if record is None else record.to_bytes()
                    args += (self._key(decision_id), value, deadline)
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
