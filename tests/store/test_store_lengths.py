"""Answers' lengths measured by `complete` on one replica, learned by every replica exactly once,
through a real redis-server: without feedback, with feedback afterwards on either replica, across
a restart, a recovery from the checkpoint and a lost append reply; and refused when bad."""

from __future__ import annotations

import math
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from mixllm._core import InvalidInputError
from mixllm.errors import DecisionNotFoundError
from mixllm.routing.router import Router
from redis_server import WAIT_S, RedisServer, raised_by, require_redis_server, wait_for
from store_replica import (
    arms,
    assert_same_arms,
    build_router,
    close,
    replica,
    replica_store,
    restart,
    restart_without_checkpoint,
    store_of,
    text,
)

_SKIP = require_redis_server()
pytestmark = pytest.mark.skipif(bool(_SKIP), reason=_SKIP)


def length(i: int) -> float:
    return float(10 + zlib.crc32(f"length {i}".encode()) % 490)


@dataclass
class Oracle:
    """A Router without a store, fed the same requests: each routed to the model a replica
    chose, completed with the same length, and given the same feedback."""

    router: Router

    @classmethod
    def new(cls) -> Oracle:
        return cls(build_router())

    def complete(self, i: int, model: str) -> str:
        decision = self.router.route(text(i), prompt_tokens=100.0, models=[model])
        self.router.complete(decision.id, output_tokens=length(i))
        return decision.id

    def learned(self, completed: dict[int, str]) -> dict[str, Any]:
        for i, model in sorted(completed.items()):
            self.complete(i, model)
        return arms(self.router)


def complete(router: Router, indices: range | list[int]) -> dict[int, str]:
    """Routes each query and completes it with its length; returns index -> model chosen."""
    chosen = {}
    for i in indices:
        decision = router.route(text(i), prompt_tokens=100.0)
        router.complete(decision.id, output_tokens=length(i))
        chosen[i] = decision.model
    return chosen


def delivered(*routers: Router) -> None:
    """Waits until every replica has learned and appended its lengths, and read the others'."""
    for router in routers:
        wait_for(lambda r=router: store_of(r).stats.buffered == 0, "the lengths to be appended")  # type: ignore[misc]
    for router in routers:
        assert store_of(router).sync(WAIT_S)


def prior_arms() -> dict[str, Any]:
    return arms(build_router())


def test_lengths_completed_on_one_replica_reach_every_replica_once(server: RedisServer) -> None:
    a, b = replica(server.url), replica(server.url)
    completed = complete(a, range(20))
    delivered(a, b)
    want = Oracle.new().learned(completed)
    for model in set(completed.values()):  # learned, not left at the prior
        assert arms(b)[model]["theta_log_length"] != prior_arms()[model]["theta_log_length"]
    assert_same_arms(arms(a), want)
    assert_same_arms(arms(b), want)
    # Lengths teach no quality: no model has an observation yet.
    assert all(arms(b)[m]["observations"] == 0 for m in b.models)
    assert store_of(a).stats.published == 20 and store_of(b).stats.applied == 20
    close(a, b)


def test_feedback_after_the_length_teaches_quality_only_on_either_replica(
    server: RedisServer,
) -> None:
    a, b = replica(server.url), replica(server.url)
    oracle = Oracle.new()
    for i in range(12):
        decision = a.route(text(i), prompt_tokens=100.0)
        a.complete(decision.id, output_tokens=length(i))
        oracle_id = oracle.complete(i, decision.model)
        quality = 0.3 + 0.05 * i
        if i % 3 == 0:
            continue  # no feedback: the length alone
        if i % 3 == 1:
            assert a.feedback(decision.id, quality=quality)
        else:
            # On the other replica, once the record is there.
            wait_for(lambda d=decision.id: store_of(b).fetch_decision(d) is not None, "the record")  # type: ignore[misc]
            assert b.feedback(decision.id, quality=quality)
        assert oracle.router.feedback(oracle_id, quality=quality)
    delivered(a, b)
    want = arms(oracle.router)
    assert sum(want[m]["observations"] for m in want) == 8
    assert_same_arms(arms(a), want)
    assert_same_arms(arms(b), want)
    close(a, b)


def test_feedback_giving_its_own_length_teaches_it_again_as_without_a_store(
    server: RedisServer,
) -> None:
    a, b = replica(server.url), replica(server.url)
    oracle = Oracle.new()
    decision = a.route(text(1), prompt_tokens=100.0)
    a.complete(decision.id, output_tokens=length(1))
    oracle_id = oracle.complete(1, decision.model)
    wait_for(lambda: store_of(b).fetch_decision(decision.id) is not None, "the record")
    assert b.feedback(decision.id, quality=0.7, output_tokens=55.0)
    assert oracle.router.feedback(oracle_id, quality=0.7, output_tokens=55.0)
    delivered(a, b)
    assert_same_arms(arms(a), arms(oracle.router))
    assert_same_arms(arms(b), arms(oracle.router))
    close(a, b)


def test_feedback_before_the_completion_leaves_the_completion_refused_as_without_a_store(
    server: RedisServer,
) -> None:
    a, b = replica(server.url), replica(server.url)
    decision = a.route(text(1), prompt_tokens=100.0)
    assert a.feedback(decision.id, quality=0.6)
    with pytest.raises(DecisionNotFoundError, match="already answered"):
        a.complete(decision.id, output_tokens=length(1))
    oracle = build_router()
    first = oracle.route(text(1), prompt_tokens=100.0, models=[decision.model])
    assert oracle.feedback(first.id, quality=0.6)
    with pytest.raises(DecisionNotFoundError, match="already answered"):
        oracle.complete(first.id, output_tokens=length(1))
    delivered(a, b)
    assert_same_arms(arms(a), arms(oracle))
    assert_same_arms(arms(b), arms(oracle))
    close(a, b)


@pytest.mark.parametrize("added_again", [False, True])
def test_a_length_for_a_model_removed_meanwhile_is_learned_nowhere(
    server: RedisServer, added_again: bool
) -> None:
    a, b = replica(server.url), replica(server.url)
    decision = a.route(text(1), prompt_tokens=100.0)
    wait_for(lambda: store_of(a).stats.decisions_written == 1, "the decision record")
    model = next(m for m in a.config.models if m.name == decision.model)
    a.remove_model(model.name)
    if added_again:
        a.add_model(model)
    a.complete(decision.id, output_tokens=length(1))
    delivered(a, b)
    # The pool changes, and no length.
    assert store_of(a).stats.published == 1 + added_again
    want = prior_arms()
    if not added_again:
        del want[model.name]
    for router in (a, b):
        assert_same_arms(arms(router), want)
    assert b.feedback(decision.id, quality=0.5) is False
    close(a, b)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, 1e300, "many"])
def test_a_refused_length_changes_nothing(server: RedisServer, bad: Any) -> None:
    a, b = replica(server.url), replica(server.url)
    decision = a.route(text(1), prompt_tokens=100.0)
    with pytest.raises(InvalidInputError, match="output_tokens"):
        a.complete(decision.id, output_tokens=bad)
    # Still in flight, still to complete, with nothing queued, appended or learned.
    assert a.policy.in_flight(decision.model) == 1
    assert store_of(a).stats.buffered == 0
    delivered(a, b)
    assert store_of(a)._publisher.xlen(store_of(a).stream_key) == 0
    for router in (a, b):
        assert_same_arms(arms(router), prior_arms())
    a.complete(decision.id, output_tokens=length(1))
    assert a.policy.in_flight(decision.model) == 0
    delivered(a, b)
    want = Oracle.new().learned({1: decision.model})
    assert_same_arms(arms(b), want)
    close(a, b)


@pytest.mark.parametrize("checkpoint", [True, False])
def test_a_replica_restarted_from_its_own_state_learns_each_length_once(
    server: RedisServer, tmp_path: Path, checkpoint: bool
) -> None:
    a, other = replica(server.url), replica(server.url)
    completed = complete(a, range(6))
    delivered(a, other)
    a.save(tmp_path / "state")
    close(a)
    if not checkpoint:
        # Redis keeps the stream but loses the checkpoint: the saved position is replayed from.
        store_of(other)._publisher.delete(store_of(other).checkpoint_key)
    completed |= complete(other, range(6, 9))
    restarted = restart(tmp_path / "state", server.url)
    delivered(restarted, other)
    want = Oracle.new().learned(completed)
    assert_same_arms(arms(restarted), want)
    assert_same_arms(arms(other), want)
    close(restarted, other)


def test_a_state_saved_while_redis_was_down_holds_its_buffered_lengths_once(
    server: RedisServer, tmp_path: Path
) -> None:
    a = replica(server.url)
    completed = complete(a, range(2))
    delivered(a)
    server.stop()
    completed |= complete(a, range(2, 5))  # learned and buffered: saved, not yet in the stream
    wait_for(lambda: store_of(a).stats.buffered == 3, "the lengths to be learned and buffered")
    assert store_of(a).stats.published == 2
    a.save(tmp_path / "state")
    server.start()
    restarted, stream_length = restart_without_checkpoint(a, tmp_path / "state", server.url)
    assert stream_length == 5
    assert_same_arms(arms(restarted), Oracle.new().learned(completed))
    close(restarted)


def test_a_replica_recovering_from_the_checkpoint_learns_each_length_once(
    server: RedisServer,
) -> None:
    a = build_router(store=replica_store(server.url, retain_s=0.0))
    behind = replica(server.url)
    completed = complete(a, range(5)) | complete(behind, range(5, 8))
    delivered(a, behind)
    waiting = behind.route(text(99), prompt_tokens=100.0)
    # The replica's reader is held back while the other appends, checkpoints and trims past it.
    with store_of(behind)._read_lock:
        completed |= complete(a, range(8, 15))
        wait_for(lambda: store_of(a).stats.buffered == 0, "a's lengths to be appended")
        assert store_of(a).checkpoint()
        completed |= complete(a, range(15, 18))
        completed |= complete(behind, range(18, 21))  # its own, after the checkpoint
        wait_for(lambda: store_of(behind).stats.published == 6, "its own lengths")
        # And its own, learned while Redis seemed unreachable: buffered, in no checkpoint.
        store_of(behind)._online = False
        completed |= complete(behind, range(21, 24))
        wait_for(lambda: store_of(behind).stats.buffered == 3, "its lengths to be buffered")
    wait_for(lambda: store_of(behind).stats.recoveries == 1, "the replica to start again")
    delivered(a, behind)
    # Its decision pending across the recovery completes into the new arms, once.
    behind.complete(waiting.id, output_tokens=length(99))
    completed[99] = waiting.model
    delivered(a, behind)
    want = Oracle.new().learned(completed)
    assert_same_arms(arms(behind), want)
    assert_same_arms(arms(a), want)
    close(a, behind)


def test_a_length_whose_append_reply_was_lost_is_learned_once(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = replica(server.url), replica(server.url)
    completed = complete(a, range(3))
    delivered(a, b)
    publisher = store_of(a)._publisher
    pipeline, ping = publisher.pipeline, publisher.ping
    reconnect = threading.Event()

    def reply_lost(*args: Any, **kwargs: Any) -> Any:
        # The appends' pipeline only: the queues' thread shares the client.
        pipe = pipeline(*args, **kwargs)
        execute, xadd = pipe.execute, pipe.xadd
        appends: list[object] = []

        def counted(*a: Any, **k: Any) -> Any:
            appends.append(a)
            return xadd(*a, **k)

        def appended_then_lost(*a: Any, **k: Any) -> Any:
            replies = execute(*a, **k)
            if not appends:
                return replies
            monkeypatch.setattr(publisher, "pipeline", pipeline)
            raise redis.ConnectionError("connection reset before the reply")

        pipe.xadd = counted  # type: ignore[method-assign]
        pipe.execute = appended_then_lost  # type: ignore[method-assign]
        return pipe

    def ping_when_told(*args: Any, **kwargs: Any) -> Any:
        assert reconnect.wait(WAIT_S)
        return ping(*args, **kwargs)

    monkeypatch.setattr(publisher, "pipeline", reply_lost)
    monkeypatch.setattr(publisher, "ping", ping_when_told)
    completed |= complete(a, [3])  # appended, but a cannot know: buffered
    wait_for(lambda: store_of(a).stats.buffered == 1, "the length to be buffered")
    # Another replica checkpoints the stream, first copy included, before a delivers it again.
    assert store_of(b).sync(WAIT_S) and store_of(b).checkpoint()
    reconnect.set()
    completed |= complete(a, range(4, 6))
    delivered(a, b)
    late = replica(server.url)
    delivered(late)
    want = Oracle.new().learned(completed)
    for router in (a, b, late):
        assert_same_arms(arms(router), want)
    assert publisher.xlen(store_of(a).stream_key) == len(completed)
    close(a, b, late)


def store_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("mixllm-")}


def test_closing_with_redis_gone_raises_nothing_and_names_what_was_not_sent(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    before = store_threads()
    a = build_router(store=replica_store(server.url, timeout_s=0.2))
    complete(a, range(2))
    delivered(a)
    server.stop()
    complete(a, range(2, 5))
    assert raised_by(store_of(a).close, "closing the store") == []
    assert store_threads() == before  # every thread of its own stopped
    # Learned here, never appended: still counted, and said.
    assert store_of(a).stats.buffered == 3 and store_of(a).stats.published == 2
    assert "closing with 3 observations never appended to the stream" in caplog.text


def test_lengths_learned_before_their_hand_over_fails_are_buffered_not_lost(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    a = build_router(store=replica_store(server.url))
    store = store_of(a)

    def broken() -> None:
        raise RuntimeError("the append failed")

    with monkeypatch.context() as patch:
        patch.setattr(store, "_flush", broken)
        complete(a, range(3))
        wait_for(lambda: "failed" in caplog.text, "the hand-over to fail")
        # Learned and kept to share: buffered, not also counted as lost.
        assert store.stats.buffered == 3 and store.stats.dropped == 0
    delivered(a)
    close(a)


def test_closing_gives_up_on_lengths_it_cannot_hand_over_in_time(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    a = build_router(store=replica_store(server.url, timeout_s=0.05))
    complete(a, range(2))
    delivered(a)
    server.stop()
    before = arms(a)
    lengths_thread = store_of(a)._lengths._thread
    assert lengths_thread is not None
    # Learning and appending a length waits for the publish lock: a feedback holding it and
    # never letting go keeps the lengths from being learned.
    with store_of(a).publishing():
        complete(a, range(2, 5))
        assert raised_by(store_of(a).close, "closing the store") == []
    assert "the lengths of 3 completed requests were not learned" in caplog.text
    # The hand-over that waited for the lock finds the store closed: nothing is learned or
    # buffered after close returned.
    lengths_thread.join(WAIT_S)
    assert not lengths_thread.is_alive()
    assert_same_arms(arms(a), before)
    assert len(store_of(a)._outbox) == 0
