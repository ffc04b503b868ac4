"""Replicas of a Router learning together through one Redis (or Valkey).

Every observation a replica learns from is appended to a Redis Stream before its feedback call
returns (or, while Redis is unreachable, kept in a bounded local buffer and appended when it is
back). A background thread in each replica reads the stream from where it left off and applies
the other replicas' observations to its own arms: the arms' statistics are sums, so every
replica ends with the same arms whatever order they arrive in (up to rounding).

Periodically a replica writes a checkpoint (the whole policy and the stream position it covers)
and trims the stream behind it; a replica attaching later starts from the checkpoint and replays
only the rest, and so does a replica that finds entries it had not read yet trimmed away.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

from mixllm._core import (
    DuplicateModelError,
    InvalidInputError,
    Policy,
    UnknownModelError,
)
from mixllm._lru import LruCache
from mixllm.errors import StoreError
from mixllm.store.clock import SharedClock
from mixllm.store.decisions import DecisionRecord, DecisionRecords, Recorded
from mixllm.store.lengths import LengthQueue, QueuedLength
from mixllm.store.observation import Observation
from mixllm.store.outbox import Entry, Outbox
from mixllm.store.pool import PoolChange
from mixllm.store.position import StreamPosition, stream_id_key
from mixllm.store.queues import SharedQueues
from mixllm.validation import PROFILE_FIELDS, integer, non_negative, positive

if TYPE_CHECKING:
    import redis

    from mixllm.routing.router import Router

__all__ = ["RedisStore", "StoreError", "StoreStats"]

log = logging.getLogger(__name__)

# Stream entries read per call: bounds the memory of one read and the time the apply lock is held.
_READ_BATCH = 1000
# What a model's configuration and its arm both hold (`Policy.profile`).
# How often the follower checks that no entry it had yet to read was trimmed away (a read that
# does not block always checks).
_GAP_CHECK_S = 0.1
# Recoveries from the latest checkpoint tried one after the other before giving up for a while.
_RECOVERIES_IN_A_ROW = 3
# How long the reader waits before trying an unreachable Redis again, at first and at most.
_RETRY_FIRST_S = 0.05
_RETRY_MAX_S = 1.0
# Closing waits this many of the store's timeouts at most for the lengths still queued (a
# hand-over makes a few calls to Redis, each bounded by the timeout), and again for its own
# last delivery.
_CLOSE_CALLS = 4


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's policy, and the id of each arm added at run time (`Router` arm ids)."""

    policy: Policy
    arms: dict[str, str]
    # The last stream entry the policy holds, and how many entries the stream had been given
    # up to it (None in a checkpoint written before that was recorded).
    covered: str = "0-0"
    seq: int | None = 0


class _Behind(Exception):
    """Entries after the last one this replica read were trimmed before it read them."""


@dataclass(frozen=True)
class StoreStats:
    """A replica's replication counters."""

    # Observations this replica appended to the stream.
    published: int
    # Observations waiting in the local buffer for Redis to come back, and completed requests'
    # lengths not yet learned (they wait a few milliseconds at most while Redis answers).
    buffered: int
    # Observations and lengths lost because their buffer was full (the oldest go first), and
    # lengths whose learning failed.
    dropped: int
    # Other replicas' observations learned from the stream.
    applied: int
    # Stream entries not learned: a duplicate, a model this replica does not have, malformed.
    skipped: int
    # Checkpoints this replica wrote.
    checkpoints: int
    # The last stream entry this replica has read.
    last_id: str
    # Whether the last call to Redis succeeded.
    connected: bool
    # Decision records written for the other replicas, and dropped unwritten.
    decisions_written: int
    decisions_dropped: int
    # Times this replica found entries it had not read trimmed away, and started again from
    # the latest checkpoint.
    recoveries: int = 0


def _ignore(*_: object) -> None:
    pass


def _connections(
    url: str, timeout_s: float, block_s: float
) -> tuple[ModuleType, redis.Redis, redis.Redis]:
    """redis-py, and two clients of ``url``: one that publishes and one that reads."""
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError as err:
        raise StoreError("RedisStore needs redis-py: pip install 'mixllm[redis]'") from err
    # No retries inside redis-py: a failed call falls back to the local buffer at once, and
    # the reader thread does the retrying, with its own bounded backoff.
    common: dict[str, Any] = {
        "socket_connect_timeout": timeout_s,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }
    try:
        publisher = redis.Redis.from_url(url, socket_timeout=timeout_s, **common)
        # Its own connection: a blocking read must not hold up an append.
        reader = redis.Redis.from_url(url, socket_timeout=block_s + timeout_s, **common)
    except ValueError as err:
        raise InvalidInputError(f"url {url!r} is not a Redis URL: {err}") from err
    return redis, publisher, reader


def _check_settings(
    url: object,
    namespace: object,
    *,
    seconds: dict[str, float],
    retain_s: float,
    counts: dict[str, int],
) -> None:
    """Refuses a store's settings before anything connects, naming the first bad one."""
    if not isinstance(url, str) or not url:
        raise InvalidInputError(f"url must be a redis:// URL, got {url!r}")
    if not isinstance(namespace, str) or not namespace:
        raise InvalidInputError(f"namespace must be a non-empty str, got {namespace!r}")
    for name, value in seconds.items():
        positive(name, value)
    non_negative("retain_s", retain_s)
    for name, count in counts.items():
        integer(name, count, minimum=1)


class RedisStore:
    """Shares a Router's learning with the other replicas attached to the same Redis.

    ``url`` is a redis-py URL (``redis://host:port/db``); ``namespace`` prefixes every key, so
    several routers can share one Redis. Every replica must start from the same state (the same
    saved Router, or the checkpoint already in Redis, which attaching loads).

    ``checkpoint_every_s``: how often this replica writes a checkpoint; ``retain_s``: how long
    stream entries are kept after a checkpoint covers them, for replicas that read behind (one
    that finds entries it had not read trimmed away starts again from the latest checkpoint);
    ``max_buffered``: observations kept while Redis is unreachable (beyond that the oldest are
    dropped and counted); ``max_unwritten_decisions``: decision records waiting to be written
    (the same); ``block_s``: how long one read waits for new entries (the replication
    delay when idle is far below it: a read returns as soon as an entry arrives);
    ``timeout_s``: how long a call to Redis may take before Redis counts as unreachable;
    ``queue_refresh_s``: how often this replica publishes its requests in flight and reads the
    others'; ``queue_ttl_s``: how long a replica's published load counts after its last refresh.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "mixllm",
        checkpoint_every_s: float = 30.0,
        retain_s: float = 300.0,
        max_buffered: int = 100_000,
        max_unwritten_decisions: int = 100_000,
        block_s: float = 0.1,
        timeout_s: float = 1.0,
        dedupe_window: int = 100_000,
        queue_refresh_s: float = 0.05,
        queue_ttl_s: float = 0.5,
    ) -> None:
        _check_settings(
            url,
            namespace,
            seconds={
                "checkpoint_every_s": checkpoint_every_s,
                "block_s": block_s,
                "timeout_s": timeout_s,
                "queue_refresh_s": queue_refresh_s,
                "queue_ttl_s": queue_ttl_s,
            },
            retain_s=retain_s,
            counts={
                "max_buffered": max_buffered,
                "max_unwritten_decisions": max_unwritten_decisions,
                "dedupe_window": dedupe_window,
            },
        )
        client, self._publisher, self._reader = _connections(url, timeout_s, block_s)
        self._close_wait_s = _CLOSE_CALLS * float(timeout_s)
        self._redis_error: type[Exception] = client.RedisError
        self._watch_error: type[Exception] = client.WatchError
        self._response_error: type[Exception] = client.ResponseError
        self.url = url
        self.namespace = namespace
        self.replica = secrets.token_hex(8)
        self.stream_key = f"{namespace}:observations"
        self.checkpoint_key = f"{namespace}:checkpoint"
        self._checkpoint_every_s = float(checkpoint_every_s)
        self._retain_ms = int(retain_s * 1000)
        self._block_ms = max(1, int(block_s * 1000))
        # Held around learning one observation and appending it, and while a checkpoint is
        # taken: a checkpoint then never holds an observation the stream does not yet have
        # (which a replica loading it would learn twice).
        self._publish_lock = threading.Lock()
        self._outbox = Outbox(max_buffered)
        # Completed requests' lengths, learned and appended in the background.
        self._lengths = LengthQueue(max_buffered, self._deliver_lengths)
        self._online = True
        self._init_reader_state(dedupe_window)
        self._max_unwritten = max_unwritten_decisions
        self._queue_refresh_s = float(queue_refresh_s)
        self._queue_ttl_s = float(queue_ttl_s)
        self._queues: SharedQueues | None = None
        self._decisions: DecisionRecords | None = None
        # Redis's clock, read by the queues' thread: decision deadlines are shared in it.
        self._clock = SharedClock()
        # Called by the Router on its decision path, so bound to the record writer's own
        # methods once it runs (one call fewer per decision), doing nothing before:
        # `record_decision(id, record)` shares a decision (its model, arm, context, deadline and
        # answer's length, read when it is written, in the background: it never waits on
        # Redis; the context must not change), or replaces what was shared of it;
        # `forget_decision(id)`: a decision ended unanswered (cancelled, dropped), and no
        # replica may take its feedback (deleted in the background, after what was queued).
        self.record_decision: Callable[[str, Recorded], None] = _ignore
        self.forget_decision: Callable[[str], None] = _ignore
        # `queue_length(QueuedLength(...))`: a completed request's length, which this replica
        # learns and every other replica learns from the stream, once (never waits on Redis).
        self.queue_length: Callable[[QueuedLength], None] = self._lengths.put
        self._router: Router | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Set in the thread applying another replica's pool change: the Router must not share
        # it again.
        self._applying = threading.local()

    def _init_reader_state(self, dedupe_window: int) -> None:
        """What the reader keeps: the position it has applied, its gap check, the duplicates it
        skips and the counters `stats` reports."""
        # Guards what the reader has applied: `_last_id` and the counters below.
        self._applied_cond = threading.Condition()
        self._last_id = "0-0"
        # How many entries the stream had been given up to `_last_id` (its "entries-added"
        # then; None: not known yet). The stream is only ever trimmed from its oldest end, so
        # once it counts more entries deleted than this, some were never read here.
        self._seq: int | None = 0
        self._next_gap_check = 0.0
        # One reader at a time: the follower thread, or a checkpoint catching up.
        self._read_lock = threading.Lock()
        self._dedupe_window = dedupe_window
        self._seen: LruCache[str, bool] = LruCache(dedupe_window)
        # This replica's own observations appended but not yet read back (the reader skips
        # them): a saved state holds them, though they lie past the position it records.
        self._unread_own: dict[str, None] = {}
        # The newest stream entry this replica appended (its reply).
        self._appended_id = "0-0"
        # Set when an append failed in a way that may have appended it all the same (a lost
        # reply): the stream position before that append. Delivering the buffer again first
        # looks after it for what arrived, so that nothing is appended twice.
        self._uncertain_from: str | None = None
        # While replaying the stream after a checkpoint in place of this replica's own state:
        # its own entries are learned too (the checkpoint may not hold them).
        self._replaying_own = False
        # Set when a recovery did not finish: the reader starts it again before reading on.
        self._must_recover = False
        self._recoveries = 0
        self._published = 0
        self._applied = 0
        self._skipped = 0
        self._checkpoints = 0
        self._checkpointed_id = "0-0"
        # Whether attaching loaded a checkpoint.
        self._loaded = False

    # -- attaching ------------------------------------------------------------------------------

    def load_checkpoint(self, dim: int, saved: StreamPosition | None = None) -> Checkpoint | None:
        """The latest checkpoint (None when there is none yet: `start` then writes the first),
        and reading resumes after the position it covers. Without one, reading resumes after
        ``saved``, the position a saved state records (for this namespace), skipping the
        observations it lists as learned. Called by `Router.attach_store`."""
        if self._router is not None:
            raise StoreError("this store is already attached to a Router")
        try:
            checkpoint = self._fetch_checkpoint(dim)
        except self._redis_error as err:
            raise StoreError(f"cannot reach Redis at {self.url}: {err}") from err
        if checkpoint is None:
            if saved is not None and saved.namespace == self.namespace:
                with self._applied_cond:
                    self._last_id = saved.last_id
                self._seq = saved.seq
                for observation_id in saved.learned:
                    self._seen.put(observation_id, True)
            return None
        with self._applied_cond:
            self._last_id = checkpoint.covered
            self._checkpointed_id = checkpoint.covered
        self._seq = checkpoint.seq
        self._loaded = True
        return checkpoint

    def _fetch_checkpoint(self, dim: int) -> Checkpoint | None:
        """The checkpoint in Redis, or None; raises StoreError when it is unreadable."""
        # redis-py's annotations cover every reply type; ours are bytes (no decoding).
        raw = cast(dict[bytes, bytes], self._reader.hgetall(self.checkpoint_key))
        if not raw:
            return None
        try:
            policy = Policy.from_bytes(raw[b"state"], dim=dim)
            covered = raw[b"id"].decode()
            stream_id_key(covered)
            arms = json.loads(raw.get(b"arms", b"{}"))
            if not isinstance(arms, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in arms.items()
            ):
                raise InvalidInputError(f"arm ids {arms!r} are not a name -> id mapping")
            seq = int(raw[b"seq"]) if b"seq" in raw else None
            if seq is not None and seq < 0:
                raise InvalidInputError(f"entry count {seq} is negative")
        except (KeyError, ValueError) as err:
            raise StoreError(
                f"the checkpoint under {self.checkpoint_key} is unreadable: {err}"
            ) from err
        return Checkpoint(policy, arms, covered, seq)

    def start(self, router: Router) -> None:
        """Catches up with the stream, then follows it in a background thread. Called by
        `Router.attach_store`."""
        if self._router is not None:
            raise StoreError("this store is already attached to a Router")
        self._router = router
        try:
            # Redis's clock before the first decision's deadline is converted to it.
            self._clock.read(self._publisher)
            if self._loaded:
                with self._publish_lock, self._read_lock:
                    self._catch_up()
            else:
                # The first checkpoint, after replaying the stream from the position a saved
                # state records (its start, without one): a replica restarted from its own
                # saved state then loads it and replays the stream after it, instead of
                # learning its own earlier observations a second time.
                self._checkpoint(first=True)
        except self._redis_error as err:
            self._router = None
            raise StoreError(f"cannot reach Redis at {self.url}: {err}") from err
        except StoreError:
            self._router = None
            raise
        self._decisions = DecisionRecords(
            self._publisher,
            self.namespace,
            capacity=self._max_unwritten,
            redis_error=self._redis_error,
            clock=self._clock,
        )
        self.record_decision = self._decisions.put
        self.forget_decision = self._decisions.delete
        self._queues = SharedQueues(
            self._publisher,
            self.namespace,
            self.replica,
            router,
            refresh_s=self._queue_refresh_s,
            ttl_s=self._queue_ttl_s,
            redis_error=self._redis_error,
            now=router._now,
            clock=self._clock,
        )
        self._thread = threading.Thread(target=self._follow, name="mixllm-store", daemon=True)
        self._thread.start()
        self._lengths.start()

    def close(self) -> None:
        """Stops following the stream, learns the lengths still queued, delivers what is
        buffered if Redis is reachable, and closes the connections."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._router is not None:
            self._lengths.close(self._close_wait_s)
        if self._decisions is not None:
            self._decisions.close()
        if self._queues is not None:
            self._queues.close()
        # Bounded: a hand-over stuck with the lock must not keep the store from closing.
        if self._publish_lock.acquire(timeout=self._close_wait_s):
            try:
                self._flush()
            except self._redis_error as err:
                log.warning("Redis at %s unreachable while closing: %s", self.url, err)
            except Exception:  # closing goes on: the connections are still to close
                log.exception("cannot deliver the buffered observations while closing")
            finally:
                self._publish_lock.release()
        if len(self._outbox):
            log.warning(
                "closing with %d observations never appended to the stream at %s",
                len(self._outbox),
                self.url,
            )
        self._publisher.close()
        self._reader.close()

    # -- publishing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def publishing(self) -> Iterator[None]:
        """Held by the Router around learning an observation and `publish`-ing it."""
        with self._publish_lock:
            yield

    def applying(self) -> bool:
        """Whether this thread is applying another replica's change (not to be shared)."""
        return bool(getattr(self._applying, "active", False))

    def publish(self, observation: Entry) -> None:
        """Appends an observation to the stream (the caller holds `publishing`). When Redis is
        unreachable it is buffered instead, for the reader thread to deliver once Redis is back;
        observations never wait behind a buffer, so they keep their order."""
        if self._online and not len(self._outbox):
            read = self._last_id
            try:
                appended: Any = self._publisher.xadd(self.stream_key, observation.to_fields())  # type: ignore[arg-type]
                self._appended(observation, appended)
                return
            except self._redis_error as err:
                self._online = False
                self._note_uncertain(read)
                log.warning("Redis at %s unreachable, buffering observations: %s", self.url, err)
        self._outbox.put(observation)

    def _deliver_lengths(self, lengths: deque[QueuedLength]) -> None:
        """Learns completed requests' lengths and appends them to the stream, as `feedback`
        learns and publishes an observation (under the publish lock): buffered, and delivered
        by the reader thread, while Redis is unreachable. Takes each length off ``lengths``
        once it is learned and buffered, as `LengthQueue` expects, and stops once closing gave
        up on them."""
        router = self._router
        assert router is not None
        with self._publish_lock:
            while lengths and not self._lengths.given_up:
                observation = router._learn_length(lengths[0])
                if observation is not None:
                    self._outbox.put(observation)
                lengths.popleft()
            if self._lengths.given_up or not self._online or not len(self._outbox):
                return  # closing flushes what is buffered, and closes the connections
            try:
                self._flush()
            except self._redis_error as err:
                self._online = False
                log.warning("Redis at %s unreachable, buffering observations: %s", self.url, err)

    def _appended(self, entry: Entry, stream_id: bytes) -> None:
        """Counts an entry the stream now holds (caller holds the publish lock)."""
        self._published += 1
        self._appended_id = stream_id.decode()
        if isinstance(entry, Observation):
            self._unread_own[entry.id] = None

    def _note_uncertain(self, read: str) -> None:
        """An append failed, perhaps after Redis made it: the buffer's next delivery first
        looks for what arrived, after the newest entry known before it (``read``: the last
        one the reader had read when it was sent; the reader may since have read past it)."""
        if self._uncertain_from is None:
            newest = max(self._appended_id, read, key=stream_id_key)
            self._uncertain_from = newest

    def _flush(self) -> None:
        """Delivers the buffered observations, oldest first (caller holds the publish lock).
        After a failed append, the stream is searched first for the buffered entries that
        arrived all the same (their reply was lost), so that none is appended twice."""
        if len(self._outbox) and self._uncertain_from is not None:
            self._forget_delivered(self._uncertain_from)
        self._uncertain_from = None
        while len(self._outbox):
            batch = self._outbox.peek(_READ_BATCH)
            pipe = self._publisher.pipeline(transaction=False)
            for entry in batch:
                pipe.xadd(self.stream_key, entry.to_fields())  # type: ignore[arg-type]
            read = self._last_id
            try:
                replies: list[Any] = pipe.execute()
            except self._redis_error:
                self._note_uncertain(read)
                raise
            self._outbox.pop(len(batch))
            for entry, stream_id in zip(batch, replies, strict=True):
                self._appended(entry, stream_id)

    def _forget_delivered(self, since: str) -> None:
        """Takes out of the buffer this replica's observations the stream holds after entry
        ``since`` (appended by a call whose reply was lost)."""
        delivered: set[str] = set()
        low = f"({since}"
        while True:
            entries: Any = self._publisher.xrange(self.stream_key, low, "+", count=_READ_BATCH)
            for _, fields in entries:
                identity = Observation.identity(fields)
                if identity is not None and identity[0] == self.replica:
                    delivered.add(identity[1])
            if len(entries) < _READ_BATCH:
                break
            low = f"({entries[-1][0].decode()}"
        if self._trimmed_past(since):
            log.warning(
                "the stream no longer holds entry %s: a buffered observation whose append "
                "seemed to fail but did not may be appended again",
                since,
            )
        found = self._outbox.discard(
            lambda entry: isinstance(entry, Observation) and entry.id in delivered
        )
        if found:
            log.info("%d buffered observations were in the stream already", len(found))
            self._published += len(found)
            self._unread_own.update(
                dict.fromkeys(e.id for e in found if isinstance(e, Observation))
            )

    # -- decisions ------------------------------------------------------------------------------

    def fetch_decision(self, decision_id: str) -> DecisionRecord | None:
        """A decision made on any replica (None when there is none, or it expired)."""
        if self._decisions is None:
            return None
        try:
            return self._decisions.get(decision_id)
        except self._redis_error as err:
            raise StoreError(f"cannot reach Redis at {self.url}: {err}") from err

    def claim(self, decision_id: str, ttl_s: float) -> bool:
        """Whether this is the first feedback for the decision across every replica. While
        Redis is unreachable it is granted here without asking (as a failed claim would be), so
        feedback does not wait on a call bound to time out."""
        if self._decisions is None or not self._online:
            return True
        return self._decisions.claim(decision_id, self.replica, ttl_s)

    # -- following the stream -------------------------------------------------------------------

    def _follow(self) -> None:
        retry_s = _RETRY_FIRST_S
        next_checkpoint = time.monotonic() + self._checkpoint_every_s
        while not self._stop.is_set():
            try:
                if not self._online or len(self._outbox):
                    self._reconnect()
                try:
                    if self._must_recover:
                        raise _Behind
                    self._read(block=True)
                except _Behind:
                    with self._publish_lock, self._read_lock:
                        self._recover()
                if time.monotonic() >= next_checkpoint:
                    self._checkpoint()
                    next_checkpoint = time.monotonic() + self._checkpoint_every_s
                retry_s = _RETRY_FIRST_S
            except self._redis_error as err:
                if self._online:
                    log.warning("Redis at %s unreachable: %s", self.url, err)
                self._online = False
                self._stop.wait(retry_s)
                retry_s = min(2 * retry_s, _RETRY_MAX_S)
            except StoreError as err:
                log.error("%s", err)
                self._stop.wait(retry_s)
                retry_s = min(2 * retry_s, _RETRY_MAX_S)

    def _reconnect(self) -> None:
        self._publisher.ping()
        with self._publish_lock:
            self._flush()
            self._online = True

    def _read(self, *, block: bool) -> int:
        """Reads and applies one batch of entries after the last one read; returns how many."""
        with self._read_lock:
            return self._read_batch(block=block)

    def _read_batch(self, *, block: bool) -> int:
        """`_read` for a caller holding the read lock. Raises `_Behind` when entries after the
        last one read were trimmed away: checked on every read that does not block (catching
        up), and every `_GAP_CHECK_S` on the follower's."""
        if block and time.monotonic() < self._next_gap_check:
            reply: Any = self._reader.xread(
                {self.stream_key: self._last_id}, count=_READ_BATCH, block=self._block_ms
            )
            entries = reply[0][1] if reply else []
            if entries:
                self._apply(entries)
                if self._seq is not None:
                    self._seq += len(entries)
            return len(entries)
        self._next_gap_check = time.monotonic() + _GAP_CHECK_S
        # The batch and the stream's counts, in one transaction, so that they agree.
        pipe = self._reader.pipeline(transaction=True)
        pipe.xinfo_stream(self.stream_key)
        pipe.xread({self.stream_key: self._last_id}, count=_READ_BATCH)
        info, reply = pipe.execute(raise_on_error=False)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(info, Exception):
            if reply:
                raise info
            return 0  # no stream yet
        entries = reply[0][1] if reply else []
        # Redis 7 and Valkey count the entries ever added; older ones do not, and nothing is
        # found missing by this account.
        added: int | None = info.get("entries-added")
        if added is not None:
            if self._seq is None:
                if len(entries) < _READ_BATCH:
                    # Counted from here on (what came before is taken as read in full).
                    self._seq = added - len(entries)
            elif self._lost_entries(added, info["length"], len(entries)):
                raise _Behind
        if entries:
            self._apply(entries)
            if self._seq is not None:
                self._seq += len(entries)
        return len(entries)

    def _lost_entries(self, added: int, length: int, after: int) -> bool:
        """Whether entries after the last one read (``after`` of them still in the stream, up
        to a batch) were trimmed before this replica read them, or were earlier: the stream is
        only trimmed from its oldest end, so ``added - length`` entries are gone, all of the
        oldest. Counting from `_seq` (the entries given up to the last one read, as if every
        one of them was read): with nothing lost, the entries after it are all still there."""
        assert self._seq is not None
        if after < _READ_BATCH:
            return after != added - self._seq
        return added - length > self._seq

    def _trimmed_past(self, stream_id: str) -> bool:
        """Whether the stream's oldest entry is newer than ``stream_id`` (then entries after
        it may have been trimmed)."""
        try:
            info: Any = self._publisher.xinfo_stream(self.stream_key)
        except self._response_error:
            return False  # no stream
        first = info.get("first-entry")
        if not first:
            return bool(info.get("length", 0) == 0 and info.get("entries-added", 0))
        return stream_id_key(first[0].decode()) > stream_id_key(stream_id)

    def _catch_up(self) -> None:
        """Reads to the end of the stream, starting again from the latest checkpoint when this
        replica has fallen behind its trimming (caller holds the publish and read locks)."""
        for _ in range(_RECOVERIES_IN_A_ROW):
            try:
                if self._must_recover:
                    self._recover()
                while self._read_batch(block=False) == _READ_BATCH:
                    pass
                return
            except _Behind:
                self._must_recover = True
        raise StoreError(
            f"the stream {self.stream_key} is trimmed faster than this replica can replay it "
            "from the latest checkpoint"
        )

    def _recover(self) -> None:
        """Starts again from the latest checkpoint: entries this replica had not read were
        trimmed away. Its arms are replaced by the checkpoint's, the stream after it replayed
        (this replica's own entries too, which the checkpoint may lack), then its own buffered
        observations and pool changes made again; its pending decisions stay open (caller
        holds the publish and read locks, so no feedback is half-way)."""
        router = self._router
        assert router is not None
        self._must_recover = True
        checkpoint = self._fetch_checkpoint(router.policy.dim)
        if checkpoint is None:
            raise StoreError(
                f"entries of {self.stream_key} after {self._last_id}, which this replica had not "
                "read, were trimmed away (or that position is another Redis's, where the state "
                f"was saved), and there is no checkpoint under {self.checkpoint_key} to start "
                "again from"
            )
        if checkpoint.policy.models != router.policy.models:
            raise StoreError(
                f"cannot start again from the checkpoint under {self.checkpoint_key}: it has "
                f"models {checkpoint.policy.models}, this replica {router.policy.models} "
                "(the pool changed in entries trimmed before this replica read them); restart it"
            )
        log.warning(
            "entries of %s after %s were trimmed before this replica read them: starting again "
            "from the checkpoint of %s",
            self.stream_key,
            self._last_id,
            checkpoint.covered,
        )
        router._adopt_checkpoint(checkpoint.policy, checkpoint.arms)
        with self._applied_cond:
            self._last_id = checkpoint.covered
        self._seq = checkpoint.seq
        if stream_id_key(checkpoint.covered) > stream_id_key(self._checkpointed_id):
            self._checkpointed_id = checkpoint.covered
        self._seen = LruCache(self._dedupe_window)
        self._unread_own.clear()
        self._replaying_own = True
        try:
            while self._read_batch(block=False) == _READ_BATCH:
                pass
            for entry in self._outbox.peek(len(self._outbox)):
                if isinstance(entry, Observation):
                    self._learn(router, entry)
                else:
                    self._change_pool(router, entry)
        finally:
            self._replaying_own = False
        self._configure_as_arms(router)
        self._must_recover = False
        with self._applied_cond:
            self._recoveries += 1

    def _apply(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        router = self._router
        assert router is not None
        applied = skipped = 0
        for raw_id, fields in entries:
            try:
                if PoolChange.is_one(fields):
                    skipped += not self._change_pool(router, PoolChange.from_fields(fields))
                    continue
                observation = Observation.from_fields(fields)
            except InvalidInputError as err:
                log.warning("skipping stream entry %s: %s", raw_id, err)
                skipped += 1
                continue
            if observation.replica == self.replica:
                self._unread_own.pop(observation.id, None)
                if not self._replaying_own:
                    continue  # learned when it was accepted here
            if self._seen.get(observation.id) is not None:
                skipped += 1
                continue
            self._seen.put(observation.id, True)
            learned = self._learn(router, observation)
            applied += learned
            skipped += not learned
        with self._applied_cond:
            self._last_id = entries[-1][0].decode()
            self._applied += applied
            self._skipped += skipped
            self._applied_cond.notify_all()

    def _configure_as_arms(self, router: Router) -> None:
        """Price and speed changes lost with the trimmed entries are in the checkpoint's arms:
        the Router's configuration follows them (each model keeping its upstream)."""
        self._applying.active = True
        try:
            for model in router.config.models:
                profile = router.policy.profile(model.name)
                changed = {
                    name: type(getattr(model, name))(profile[name])
                    for name in PROFILE_FIELDS
                    if profile[name] != getattr(model, name)
                }
                if changed:
                    router.update_model(replace(model, **changed))
        finally:
            self._applying.active = False

    def _learn(self, router: Router, observation: Observation) -> bool:
        """Learns an observation; returns whether it was learned."""
        # A length alone leaves the decision open: its feedback is still to come.
        feedback = observation.quality is not None
        if (
            observation.model in router.models
            and router._arm_of(observation.model) != observation.arm
        ):
            # Learned into an arm this replica has since removed (and added afresh).
            log.info("skipping observation %s: its arm was replaced", observation.id)
            if feedback:
                router._settle(observation.id)
            return False
        try:
            if observation.quality is None:
                assert observation.output_tokens is not None  # `Observation.from_fields`
                router.policy.update_length(
                    observation.model,
                    observation.context,
                    output_tokens=observation.output_tokens,
                    weight=observation.weight,
                )
            else:
                router.policy.update(
                    observation.model,
                    observation.context,
                    quality=observation.quality,
                    output_tokens=observation.output_tokens,
                    weight=observation.weight,
                )
        except (UnknownModelError, InvalidInputError) as err:
            log.warning("skipping observation %s: %s", observation.id, err)
            return False
        if feedback:
            # Feedback given on another replica for a decision made here: its request is
            # done, and this replica must not accept feedback for it again.
            router._settle(observation.id)
        return True

    def _change_pool(self, router: Router, change: PoolChange) -> bool:
        """Applies another replica's pool change; returns whether it changed anything (a change
        already in a checkpoint this replica loaded, replayed, does not)."""
        if change.replica == self.replica and not self._replaying_own:
            return True
        self._applying.active = True
        try:
            if change.op == "remove":
                router.remove_model(change.name)
            elif isinstance(change.model, str):
                return False
            elif change.op == "add":
                router._add_model(change.model, None, arm=change.arm)
            else:
                router.update_model(change.model)
        except (DuplicateModelError, UnknownModelError) as err:
            log.info("pool change %s of %s already in effect: %s", change.op, change.name, err)
            return False
        finally:
            self._applying.active = False
        return True

    def sync(self, timeout_s: float = 5.0) -> bool:
        """Waits until this replica has applied every entry the stream holds now; returns
        whether it did within ``timeout_s``. Raises StoreError when Redis is unreachable."""
        positive("timeout_s", timeout_s)
        try:
            last: Any = self._publisher.xrevrange(self.stream_key, count=1)
        except self._redis_error as err:
            raise StoreError(f"cannot reach Redis at {self.url}: {err}") from err
        if not last:
            return True
        target = stream_id_key(last[0][0].decode())
        with self._applied_cond:
            return self._applied_cond.wait_for(
                lambda: stream_id_key(self._last_id) >= target, timeout=timeout_s
            )

    @contextlib.contextmanager
    def saving(self) -> Iterator[StreamPosition]:
        """Held by `Router.save` around its copy of the policy: yields the stream position the
        copy holds (after catching up with the stream, when Redis answers), and the ids of this
        replica's own observations in it that may lie past that position."""
        with self._publish_lock, self._read_lock:
            try:
                # Not while Redis is known to be unreachable: the save would wait for a timeout.
                if self._online:
                    self._catch_up()
            except (self._redis_error, StoreError) as err:
                log.warning("saving without catching up with the stream first: %s", err)
            learned = [*self._unread_own]
            learned += [
                e.id for e in self._outbox.peek(len(self._outbox)) if isinstance(e, Observation)
            ]
            yield StreamPosition(self.namespace, self._last_id, self._seq, tuple(learned))

    # -- checkpoints ----------------------------------------------------------------------------

    def checkpoint(self) -> bool:
        """Writes a checkpoint now, unless observations are still buffered; returns whether
        one was written. (The reader thread writes one every ``checkpoint_every_s``.)"""
        try:
            return self._checkpoint()
        except self._redis_error as err:
            raise StoreError(f"cannot reach Redis at {self.url}: {err}") from err

    def _checkpoint(self, *, first: bool = False) -> bool:
        """Writes a checkpoint of what this replica has applied; ``first``: the one written at
        attach when Redis has none, even of an empty stream."""
        router = self._router
        if router is None:
            raise StoreError("attach the store to a Router before writing a checkpoint")
        with self._publish_lock:
            # Buffered observations are in this policy but not yet in the stream: a checkpoint
            # now would have a replica loading it learn them twice once they are delivered.
            if len(self._outbox):
                return False
            # The reader thread must not apply entries between the catch-up and the copy: the
            # checkpoint would hold entries past the position it claims to cover.
            with self._read_lock:
                self._catch_up()
                state = router.policy.to_bytes()
                arms = json.dumps(router._arm_ids()).encode()
                covered, seq = self._last_id, self._seq
        if not first and stream_id_key(covered) <= stream_id_key(self._checkpointed_id):
            return False
        written = self._write_checkpoint(state, covered, seq, arms)
        if written:
            self._checkpointed_id = covered
            self._checkpoints += 1
        return written

    def _write_checkpoint(self, state: bytes, covered: str, seq: int | None, arms: bytes) -> bool:
        """Replaces the checkpoint unless a newer one is there, and trims the stream behind it
        (keeping ``retain_s`` of entries for replicas reading behind), in one transaction."""
        with self._reader.pipeline() as pipe:
            try:
                pipe.watch(self.checkpoint_key)  # type: ignore[no-untyped-call]
                current: Any = pipe.hget(self.checkpoint_key, "id")
                if current is not None and stream_id_key(current.decode()) >= stream_id_key(
                    covered
                ):
                    return False
                seconds, micros = pipe.time()
                retained = (seconds * 1000 + micros // 1000 - self._retain_ms, 0)
                horizon = min(stream_id_key(covered), retained)
                pipe.multi()
                fields: dict[str, bytes | str | int] = {"state": state, "id": covered, "arms": arms}
                if seq is not None:
                    fields["seq"] = seq
                else:
                    pipe.hdel(self.checkpoint_key, "seq")
                pipe.hset(self.checkpoint_key, mapping=fields)  # type: ignore[arg-type]
                pipe.xtrim(self.stream_key, minid=f"{horizon[0]}-{horizon[1]}", approximate=False)
                pipe.execute()
            except self._watch_error:
                return False  # another replica wrote one meanwhile
        return True

    # -- reporting ------------------------------------------------------------------------------

    @property
    def stats(self) -> StoreStats:
        decisions = self._decisions
        with self._publish_lock:
            published, buffered, dropped = (
                self._published,
                len(self._outbox) + len(self._lengths),
                self._outbox.dropped + self._lengths.dropped + self._lengths.unsent,
            )
        with self._applied_cond:
            return StoreStats(
                published=published,
                buffered=buffered,
                dropped=dropped,
                applied=self._applied,
                skipped=self._skipped,
                checkpoints=self._checkpoints,
                last_id=self._last_id,
                connected=self._online,
                decisions_written=0 if decisions is None else decisions.written,
                decisions_dropped=0 if decisions is None else decisions.dropped,
                recoveries=self._recoveries,
            )
