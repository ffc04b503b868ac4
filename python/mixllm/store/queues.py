"""Queues shared between replicas: each publishes its own requests in flight and predicted work
per model under a key that expires when it stops refreshing it (a dead replica leaves no phantom
requests), and reads the others' into its policy, where every wait it predicts includes them.

All of it runs in a background thread: a decision reads the policy's local copy and never waits
on Redis.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mixllm._core import UnknownModelError

if TYPE_CHECKING:
    import redis

    from mixllm.routing.router import Router
    from mixllm.store.clock import SharedClock

__all__ = ["SharedQueues"]

log = logging.getLogger(__name__)


class SharedQueues:
    """Every ``refresh_s``: publishes this replica's load, then sets the sum of the other live
    replicas' on each model of the pool. A replica's load expires ``ttl_s`` after its last
    refresh."""

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        replica: str,
        router: Router,
        *,
        refresh_s: float,
        ttl_s: float,
        redis_error: type[Exception],
        now: Callable[[], float],
        clock: SharedClock,
    ) -> None:
        self._clock = clock
        self._client = client
        self._replica = replica
        self._router = router
        self._members = f"{namespace}:replicas"
        self._prefix = f"{namespace}:load:"
        self._refresh_s = refresh_s
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._redis_error = redis_error
        self._now = now
        self._stop = threading.Event()
        self.refreshes = 0
        self._thread = threading.Thread(target=self._run, name="mixllm-queues", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _own_load(self) -> dict[str, list[float]]:
        """Per model: this replica's requests in flight and its predicted work per slot, s."""
        policy = self._router.policy
        now = self._now()
        load = {}
        for name in policy.models:
            state = policy.inspect(name)
            clears_at = state["clears_at_s"]
            work_s = 0.0 if clears_at is None else max(0.0, clears_at - now)
            load[name] = [state["in_flight"], work_s]
        return load

    def refresh(self) -> None:
        """One round: publish, then read the others (raises the client's error when Redis is
        unreachable; the others' last loads then stay until it is back)."""
        now_ms = self._clock.read(self._client)
        pipe = self._client.pipeline(transaction=False)
        pipe.set(self._prefix + self._replica, json.dumps(self._own_load()), px=self._ttl_ms)
        pipe.zadd(self._members, {self._replica: now_ms})
        # Replicas silent for long are forgotten; their load keys have expired long before.
        pipe.zremrangebyscore(self._members, "-inf", now_ms - 100 * self._ttl_ms)
        pipe.zrangebyscore(self._members, now_ms - self._ttl_ms, "+inf")
        replies: Any = pipe.execute()
        others = [m.decode() for m in replies[-1] if m.decode() != self._replica]
        totals: dict[str, list[float]] = {}
        if others:
            loads: Any = self._client.mget([self._prefix + r for r in others])
            for raw in loads:
                if raw is None:
                    continue  # expired: that replica is gone
                for name, (in_flight, work_s) in json.loads(raw).items():
                    total = totals.setdefault(name, [0, 0.0])
                    total[0] += int(in_flight)
                    total[1] += float(work_s)
        policy = self._router.policy
        for name in policy.models:
            in_flight, work_s = totals.get(name, (0, 0.0))
            policy.set_remote_load(name, int(in_flight), float(work_s))
        self.refreshes += 1

    def _forget_others(self) -> None:
        """Without Redis the others' loads cannot be refreshed: past their time to live they
        count as gone, as they would in Redis."""
        policy = self._router.policy
        for name in policy.models:
            with contextlib.suppress(UnknownModelError):
                policy.set_remote_load(name, 0, 0.0)

    def _run(self) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(self._refresh_s):
            try:
                self.refresh()
                last_ok = time.monotonic()
            except self._redis_error as err:
                log.debug("cannot share queues: %s", err)
                if time.monotonic() - last_ok > self._ttl_ms / 1000:
                    self._forget_others()
            except Exception:  # a bad entry from another replica must not stop the thread
                log.exception("sharing queues failed")
