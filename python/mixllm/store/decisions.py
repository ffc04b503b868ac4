"""Decision records shared between replicas, so feedback for a decision made on one replica is
accepted on any other, exactly once.

Each decision is written under its own key, expiring at the decision's deadline (``SET ...
PXAT``, an absolute time on Redis's clock, to which each replica converts its own wall clock's
(`SharedClock`): a record written late, behind a backlog, still expires when the decision does,
and replicas whose clocks disagree still agree on when that is), by a background thread, so
routing never waits on Redis. The same thread deletes a record when the decision is cancelled or
dropped, in the order they happened. (An answer's length measured at completion travels in the
stream on its own, so a record carries a length only when its feedback must still teach it.)
A feedback call claims its decision with ``SET ... NX``, which only one call across all replicas
can win.
"""

from __future__ import annotations

import logging
import math
import operator
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from mixllm.store.clock import SharedClock

if TYPE_CHECKING:
    import redis

__all__ = ["DecisionRecord", "DecisionRecords"]

log = logging.getLogger(__name__)

# Records written per round trip, at most: a backlog is written in batches this large, one after
# the other, without waiting between them.
_WRITE_BATCH = 1000
# How often the writer wakes to write what was queued: waking it for every decision would cost
# the decision path a thread switch each time.
_FLUSH_EVERY_S = 0.005
# More threads than this appending decision records at once could take the queue past its
# capacity by the difference.
_APPENDERS = 256
_SEPARATOR = b"\x00"
# After the model and the arm: the deadline (ms since the epoch) and the answer's length (NaN:
# not measured), then the context's raw bytes.
_FIXED = struct.Struct("<qd")
# One command for a whole batch, of six arguments whatever its size: the key prefix; the decision
# ids concatenated; per record, as little-endian int64s, the length of its id, the 1-based index
# of its header (model and arm; 0: delete the key) and the length of its context, then its
# deadline (ms since the epoch) and the answer's length (float64) as the record stores them;
# the contexts concatenated; the headers concatenated; and their lengths (int64s). Every
# argument costs the client its own encoding, and every record its own Python work, under the
# interpreter lock the decision path needs too: the batch is assembled column by column, by
# numpy and the interpreter's own loops. A batch holds at most one write per key (the last one
# queued: only it decides what the key holds once the script has run), so the deletions can all
# go in one DEL at the end.
_SET_ALL = """
local prefix, ids, meta, contexts = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local header_bytes, header_lengths = ARGV[5], ARGV[6]
local headers, at = {}, 1
for h = 1, #header_lengths, 8 do
    local length = struct.unpack('<i8', header_lengths, h)
    headers[#headers + 1] = string.sub(header_bytes, at, at + length - 1)
    at = at + length
end
local id_at, context_at = 1, 1
local deleted = {}
for at = 1, #meta, _META_SIZE do
    local id_length, header, context_length, deadline = struct.unpack('<i8i8i8i8', meta, at)
    local key = prefix .. string.sub(ids, id_at, id_at + id_length - 1)
    id_at = id_at + id_length
    if header == 0 then
        deleted[#deleted + 1] = key
    else
        local value = headers[header] .. string.sub(meta, at + 24, at + 39)
            .. string.sub(contexts, context_at, context_at + context_length - 1)
        context_at = context_at + context_length
        redis.call('SET', key, value, 'PXAT', string.format('%.0f', deadline))
    end
end
if #deleted > 0 then
    redis.call('DEL', unpack(deleted))
end
return #meta / _META_SIZE
"""
# Per record of a batch: what the script above reads of it.
_META = np.dtype(
    [("id", "<i8"), ("header", "<i8"), ("context", "<i8"), ("deadline", "<i8"), ("tokens", "<f8")]
)
_SET_ALL = _SET_ALL.replace("_META_SIZE", str(_META.itemsize))


class Recorded(Protocol):
    """What a decision's record holds (a `PendingDecision`, or a `DecisionRecord`), read when
    it is written."""

    @property
    def model(self) -> str: ...
    @property
    def arm(self) -> str: ...
    @property
    def context(self) -> NDArray[Any]: ...
    @property
    def deadline_ms(self) -> int: ...
    @property
    def length_to_teach(self) -> float | None: ...


# A queued write: the decision's id and what its record holds (None: delete the record). Two
# references, so that queueing a record allocates nothing more.
_Entry = tuple[str, "Recorded | None"]
_FIELDS = operator.attrgetter("model", "arm", "context", "deadline_ms", "length_to_teach")


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
    # The answer's length, for the feedback to teach: one `complete` measured but did not share
    # on its own (as replicas of earlier versions did).
    output_tokens: float | None = None

    @property
    def length_to_teach(self) -> float | None:
        return self.output_tokens

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
        clock: SharedClock | None = None,
    ) -> None:
        self._client = client
        self._clock = SharedClock() if clock is None else clock
        self._namespace = namespace
        self._prefix = f"{namespace}:decision:".encode()
        self._redis_error = redis_error
        self._queue: deque[_Entry] = deque()
        self._capacity = capacity
        # Taken by the writer, and by a decision only when the queue is nearly full: appending
        # to a deque is atomic, and a lock would cost the decision path more than the append.
        # Below the capacity by more than the threads that could append at once, no append can
        # take it past; the writer polls instead of being notified, for the same reason.
        self._lock = threading.Lock()
        self._unlocked_below = capacity - _APPENDERS
        self._stop = threading.Event()
        self.dropped = 0
        self.written = 0
        self._set_all = client.register_script(_SET_ALL)
        self._thread = threading.Thread(target=self._write, name="mixllm-decisions", daemon=True)
        self._thread.start()

    def _key(self, decision_id: str) -> str:
        return f"{self._namespace}:decision:{decision_id}"

    def _claim_key(self, decision_id: str) -> str:
        return f"{self._namespace}:claim:{decision_id}"

    def put(self, decision_id: str, record: Recorded) -> None:
        """Queues a decision's record for writing (within a few milliseconds), replacing any
        earlier one of the decision; never waits on Redis. Its fields are read when it is
        written, and its context must not change."""
        if len(self._queue) < self._unlocked_below:
            self._queue.append((decision_id, record))
        else:
            self._append_full((decision_id, record))

    def delete(self, decision_id: str) -> None:
        """Queues the deletion of a decision's record, after whatever was queued before it."""
        if len(self._queue) < self._unlocked_below:
            self._queue.append((decision_id, None))
        else:
            self._append_full((decision_id, None))

    def _append_full(self, entry: _Entry) -> None:
        """Appends to a queue at or near its capacity, dropping (and counting) the oldest."""
        with self._lock:
            while len(self._queue) >= self._capacity:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(entry)

    def get(self, decision_id: str) -> DecisionRecord | None:
        """The record of a decision made on any replica, or None when there is none (never
        made, expired, ended, or not written yet). Raises the client's error when Redis is
        down."""
        data: Any = self._client.get(self._key(decision_id))
        if data is None:
            return None
        try:
            shared = DecisionRecord.from_bytes(data)
            record = replace(shared, deadline_ms=self._clock.to_local(shared.deadline_ms))
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
        """A batch as the arguments of the write script: of the writes of one decision, only
        the last (the script runs as one command: no reader sees the others)."""
        last = dict(batch)
        ids = list(last)
        records = list(last.values())
        meta = np.zeros(len(ids), dtype=_META)
        joined = "".join(ids)
        if joined.isascii():
            id_bytes = joined.encode()
            meta["id"] = list(map(len, ids))
        else:
            encoded = [decision_id.encode() for decision_id in ids]
            id_bytes = b"".join(encoded)
            meta["id"] = list(map(len, encoded))
        deletions = records.count(None)
        if deletions == len(records):
            return [self._prefix, id_bytes, meta.tobytes(), b"", b"", b""]
        # The rows of the writes: all of them, or those that are not deletions.
        rows: slice | list[int] = slice(None)
        if deletions:
            rows = [at for at, record in enumerate(records) if record is not None]
            records = [records[at] for at in rows]
        models, arms, contexts, deadlines, tokens = zip(*map(_FIELDS, records), strict=True)
        pairs = list(zip(models, arms, strict=True))
        headers = {pair: at for at, pair in enumerate(dict.fromkeys(pairs), start=1)}
        meta["header"][rows] = list(map(headers.__getitem__, pairs))
        meta["context"][rows] = [8 * len(context) for context in contexts]
        meta["deadline"][rows] = np.rint(
            np.array(deadlines, dtype=np.float64) + self._clock.offset_ms
        )
        # An answer's length not measured yet is stored as NaN (most are, when first written).
        if tokens.count(None) == len(tokens):
            meta["tokens"][rows] = math.nan
        else:
            meta["tokens"][rows] = [math.nan if t is None else t for t in tokens]
        data = np.concatenate(contexts).astype("<f8", copy=False).tobytes()
        encoded_headers = [
            model.encode() + _SEPARATOR + arm.encode() + _SEPARATOR for model, arm in headers
        ]
        return [
            self._prefix,
            id_bytes,
            meta.tobytes(),
            data,
            b"".join(encoded_headers),
            np.array(list(map(len, encoded_headers)), dtype="<i8").tobytes(),
        ]
