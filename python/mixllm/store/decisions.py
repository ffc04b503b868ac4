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

# Records written per round trip, at most: a backlog is written in batches this large, one after
# the other, without waiting between them.
_WRITE_BATCH = 1000
# How often the writer wakes to write what was queued: waking it for every decision would cost
# the decision path a thread switch each time.
_FLUSH_EVERY_S = 0.005
_SEPARATOR = b"\x00"
# After the model and the arm: the deadline (ms since the epoch) and the answer's length (NaN:
# not measured), then the context's raw bytes.
_FIXED = struct.Struct("<qd")
# One command for a whole batch, of four arguments whatever its size: the key prefix, the decision
# ids and the values each concatenated, and per record its deadline (ms since the epoch), the
# length of its id and the length of its value (0: delete the key), as little-endian int64s.
# Every argument costs the client its own encoding, under the interpreter lock the decision path
# needs too. A batch holds at most one write per key (the last one queued: only it decides what
# the key holds once the script has run), so the deletions can all go in one DEL at the end.
_SET_ALL = """
local prefix, ids, meta, values = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local id_at, value_at = 1, 1
local deleted = {}
for at = 1, #meta, 24 do
    local deadline, id_length, value_length = struct.unpack('<i8i8i8', meta, at)
    local key = prefix .. string.sub(ids, id_at, id_at + id_length - 1)
    id_at = id_at + id_length
    if value_length == 0 then
        deleted[#deleted + 1] = key
    else
        local value = string.sub(values, value_at, value_at + value_length - 1)
        value_at = value_at + value_length
        redis.call('SET', key, value, 'PXAT', string.format('%.0f', deadline))
    end
end
if #deleted > 0 then
    redis.call('DEL', unpack(deleted))
end
return #meta / 24
"""
# A queued write: decision id, model (None: delete the record), context, arm, deadline (ms since
# the epoch), the answer's length. A tuple, so that queueing a record allocates nothing more.
_Entry = tuple[str, "str | None", "NDArray[np.float64] | None", str, int, "float | None"]


def _value(
    model: str, arm: str, deadline: int, output_tokens: float | None, context: NDArray[Any]
) -> bytes:
    """A record as it is stored (`DecisionRecord.from_bytes` reads it back)."""
    tokens = math.nan if output_tokens is None else float(output_tokens)
    return b"".join(
        (
            model.encode(),
            _SEPARATOR,
            arm.encode(),
            _SEPARATOR,
            _FIXED.pack(deadline, tokens),
            np.ascontiguousarray(context, dtype="<f8").tobytes(),
        )
    )


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
        return _value(self.model, self.arm, self.deadline_ms, self.output_tokens, self.context)

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
        self._prefix = f"{namespace}:decision:".encode()
        self._redis_error = redis_error
        self._queue: deque[_Entry] = deque(maxlen=capacity)
        self._capacity = capacity
        # Guards the queue and the counters; a plain lock, cheaper on the decision path than a
        # condition: the writer polls instead of being notified.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.dropped = 0
        self.written = 0
        # The stored prefix of each (model, arm) pair, so that a batch encodes each pair once.
        self._headers: dict[tuple[str, str], bytes] = {}
        self._set_all = client.register_script(_SET_ALL)
        self._thread = threading.Thread(target=self._write, name="mixllm-decisions", daemon=True)
        self._thread.start()

    def _key(self, decision_id: str) -> str:
        return f"{self._namespace}:decision:{decision_id}"

    def _claim_key(self, decision_id: str) -> str:
        return f"{self._namespace}:claim:{decision_id}"

    def put(
        self,
        decision_id: str,
        model: str,
        context: NDArray[np.float64],
        arm: str,
        deadline: int,
        output_tokens: float | None = None,
    ) -> None:
        """Queues a decision's record for writing (within a few milliseconds), replacing any
        earlier one of the decision; never waits on Redis. The context must not be changed
        afterwards: it is serialised when the record is written."""
        with self._lock:
            if len(self._queue) == self._capacity:
                self.dropped += 1
            self._queue.append((decision_id, model, context, arm, deadline, output_tokens))

    def delete(self, decision_id: str) -> None:
        """Queues the deletion of a decision's record, after whatever was queued before it."""
        with self._lock:
            if len(self._queue) == self._capacity:
                self.dropped += 1
            self._queue.append((decision_id, None, None, "", 0, None))

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
        self._stop.set()
        self._thread.join()

    def _write(self) -> None:
        failing = False
        while not self._stop.wait(_FLUSH_EVERY_S):
            # What is queued, in batches; a batch less than full is the last before sleeping
            # again: writing the few queued meanwhile at once would take more round trips, each
            # costing the interpreter lock far more than a record does.
            count = _WRITE_BATCH
            while count == _WRITE_BATCH:
                with self._lock:
                    count = min(_WRITE_BATCH, len(self._queue))
                    batch = [self._queue.popleft() for _ in range(count)]
                if not batch:
                    break
                try:
                    self._set_all(args=self._pack(batch))
                except self._redis_error as err:
                    if not failing:
                        log.warning("cannot write decision records: %s", err)
                    failing = True
                    with self._lock:
                        # Back in front of the newer ones, as far as the queue has room.
                        room = self._capacity - len(self._queue)
                        kept = batch[max(0, len(batch) - room) :]
                        self.dropped += len(batch) - len(kept)
                        self._queue.extendleft(reversed(kept))
                    # A bounded wait before trying again.
                    self._stop.wait(0.2)
                    break
                failing = False
                with self._lock:
                    self.written += len(batch)

    def _pack(self, batch: list[_Entry]) -> list[bytes]:
        """A batch as the arguments of the write script, in one pass: of the writes of one
        decision, only the last (the script runs as one command: no reader sees the others)."""
        last = {entry[0]: entry for entry in batch}
        headers = self._headers
        if len(headers) > 4096:
            headers.clear()  # models and arms come and go: keep the cache to the pool's size
        ids: list[bytes] = []
        values: list[bytes] = []
        meta: list[int] = []
        pack = _FIXED.pack
        for decision_id, model, context, arm, deadline, tokens in last.values():
            key = decision_id.encode()
            ids.append(key)
            if model is None or context is None:
                meta += (deadline, len(key), 0)
                continue
            header = headers.get((model, arm))
            if header is None:
                header = model.encode() + _SEPARATOR + arm.encode() + _SEPARATOR
                headers[model, arm] = header
            data = np.ascontiguousarray(context, dtype="<f8").tobytes()
            fixed = pack(deadline, math.nan if tokens is None else float(tokens))
            values += (header, fixed, data)
            meta += (deadline, len(key), len(header) + len(fixed) + len(data))
        return [
            self._prefix,
            b"".join(ids),
            struct.pack(f"<{len(meta)}q", *meta),
            b"".join(values),
        ]
