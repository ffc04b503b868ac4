"""Queues shared between replicas through a real redis-server: requests in flight on one
replica raise the wait another predicts, and a replica that stops refreshing leaves none."""

from __future__ import annotations

import pytest

from mixllm.routing.router import Router
from mixllm.store import RedisStore
from redis_server import RedisServer, require_redis_server, wait_for
from store_replica import build_router, close, replica_store, text

_SKIP = require_redis_server()
pytestmark = pytest.mark.skipif(bool(_SKIP), reason=_SKIP)


def replica(server: RedisServer) -> Router:
    return build_router(store=replica_store(server.url, queue_ttl_s=0.3))


def test_requests_in_flight_on_one_replica_raise_the_wait_predicted_on_the_other(
    server: RedisServer,
) -> None:
    a, b = replica(server), replica(server)
    assert b.policy.predicted_wait_s("large") == 0.0
    # Six requests on four slots: the next one waits.
    sent = [a.route(text(i), prompt_tokens=100.0, models=["large"]) for i in range(6)]
    own = a.policy.predicted_wait_s("large")
    assert own > 0
    wait_for(lambda: b.policy.predicted_wait_s("large") > 0, "b to see a's queue")

    def same_backlog() -> bool:
        # b's copy is a refresh old: between the backlog a sees now and the one it saw first.
        seen = b.policy.predicted_wait_s("large")
        return a.policy.predicted_wait_s("large") - 1e-6 <= seen <= own + 1e-6

    wait_for(same_backlog, "b's copy of a's backlog")
    assert b.policy.in_flight("large") == 0  # its own count is untouched
    assert b.policy.predicted_wait_s("small") == 0.0
    for decision in sent:
        a.cancel(decision.id)
    wait_for(lambda: b.policy.predicted_wait_s("large") == 0.0, "a's queue to empty on b")
    for router in (a, b):
        close(router)


def test_a_replica_that_stops_leaves_no_phantom_requests(server: RedisServer) -> None:
    a, b = replica(server), replica(server)
    for i in range(6):
        a.route(text(i), prompt_tokens=100.0, models=["large"])
    wait_for(lambda: b.policy.predicted_wait_s("large") > 0, "b to see a's queue")
    close(a)  # no more refreshes, as if it had died
    wait_for(lambda: b.policy.predicted_wait_s("large") == 0.0, "a's load to expire")
    close(b)


def test_bad_queue_settings_are_refused_with_their_name() -> None:
    with pytest.raises(ValueError, match="queue_refresh_s"):
        RedisStore("redis://127.0.0.1:1/0", queue_refresh_s=0)


def test_a_bad_remote_load_is_refused_and_changes_nothing() -> None:
    router = build_router()
    router.policy.set_remote_load("large", 2, 1.5)
    with pytest.raises(ValueError, match="work_s"):
        router.policy.set_remote_load("large", 9, float("nan"))
    with pytest.raises(ValueError, match="work_s"):
        router.policy.set_remote_load("large", 9, -1.0)
    with pytest.raises(KeyError, match="nope"):
        router.policy.set_remote_load("nope", 1, 1.0)
    # Two requests of another router on four slots: no wait yet; the report was kept.
    assert router.policy.predicted_wait_s("large") == 0.0
    for i in range(2):
        router.route(text(i), prompt_tokens=100.0, models=["large"])
    assert router.policy.predicted_wait_s("large") >= 1.5
