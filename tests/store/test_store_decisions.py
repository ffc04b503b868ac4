"""Decisions made on one replica and answered on another, through a real redis-server: the
decision's time to live, its end (cancelled, dropped), the arm it was made with, and an answer's
length a record of an earlier version carries."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mixllm import Policy
from mixllm.errors import DecisionNotFoundError
from mixllm.routing.router import Router
from mixllm.store import StoreError
from redis_server import WAIT_S, RedisServer, require_redis_server, wait_for
from store_replica import (
    arms,
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


def test_a_decision_past_its_time_to_live_is_refused_on_another_replica(
    server: RedisServer,
) -> None:
    # A time to live under a second, which whole-second expiry would round up.
    a, b = replica(server.url, feedback_ttl_s=0.3), replica(server.url, feedback_ttl_s=0.3)
    decision = a.route(text(1), prompt_tokens=100.0)
    wait_for(lambda: store_of(a).stats.decisions_written == 1, "the decision record")
    time.sleep(0.45)
    with pytest.raises(DecisionNotFoundError):
        b.feedback(decision.id, quality=0.5)
    assert all(b.policy.inspect(m)["observations"] == 0 for m in b.models)
    close(a, b)


def test_a_cancelled_decision_is_refused_on_another_replica(server: RedisServer) -> None:
    a, b = replica(server.url), replica(server.url)
    decision = a.route(text(1), prompt_tokens=100.0)
    wait_for(lambda: store_of(a).stats.decisions_written == 1, "the decision record")
    a.cancel(decision.id)
    wait_for(lambda: store_of(b).fetch_decision(decision.id) is None, "the record to go")
    with pytest.raises(DecisionNotFoundError):
        b.feedback(decision.id, quality=0.5)
    close(a, b)


def test_a_decision_dropped_by_the_pending_cap_is_refused_on_another_replica(
    server: RedisServer,
) -> None:
    a, b = replica(server.url, max_pending=1), replica(server.url, max_pending=1)
    first = a.route(text(1), prompt_tokens=100.0)
    a.route(text(2), prompt_tokens=100.0)  # over the cap: the first is dropped
    wait_for(lambda: store_of(a).stats.decisions_written >= 1, "the decision records")
    wait_for(lambda: store_of(b).fetch_decision(first.id) is None, "the dropped record to go")
    with pytest.raises(DecisionNotFoundError):
        b.feedback(first.id, quality=0.5)
    close(a, b)


def test_feedback_on_another_replica_for_a_model_removed_and_added_again_is_a_no_op(
    server: RedisServer,
) -> None:
    a, b = replica(server.url), replica(server.url)
    decision = a.route(text(1), prompt_tokens=100.0)
    wait_for(lambda: store_of(a).stats.decisions_written == 1, "the decision record")
    model = next(m for m in a.config.models if m.name == decision.model)
    a.remove_model(model.name)
    a.add_model(model)
    assert store_of(b).sync(WAIT_S)
    assert model.name in b.models
    assert b.feedback(decision.id, quality=0.5) is False
    assert store_of(a).sync(WAIT_S)
    for router in (a, b):
        assert router.policy.inspect(model.name)["observations"] == 0
    close(a, b)


def test_a_length_in_a_record_of_an_earlier_version_is_learned_with_the_feedback(
    server: RedisServer,
) -> None:
    # Replicas that shared a completed request's length only in its decision's record.
    a, b = replica(server.url), replica(server.url)
    decision = a.route(text(1), prompt_tokens=100.0)
    wait_for(lambda: store_of(a).stats.decisions_written == 1, "the decision record")
    record = store_of(b).fetch_decision(decision.id)
    assert record is not None and record.output_tokens is None
    store_of(a).record_decision(decision.id, replace(record, output_tokens=321.0))
    wait_for(lambda: store_of(a).stats.decisions_written == 2, "the completed record")
    assert b.feedback(decision.id, quality=0.5)
    want = build_router()
    assert want.projection is not None
    context = want.projection.context(want.embedder.embed([text(1)]))[0]
    want.policy.update(decision.model, context, quality=0.5, output_tokens=321.0)
    assert store_of(a).sync(WAIT_S)
    for router in (a, b):
        got = arms(router)[decision.model]
        assert got["observations"] == 1
        assert got["theta_log_length"] == arms(want)[decision.model]["theta_log_length"]
    close(a, b)


def test_a_replica_restarted_from_its_own_state_learns_nothing_twice(
    server: RedisServer, tmp_path: Path
) -> None:
    a = replica(server.url)
    for i in range(5):
        decision = a.route(text(i), prompt_tokens=100.0)
        assert a.feedback(decision.id, quality=0.5)
    a.save(tmp_path / "state")
    close(a)
    restarted = restart(tmp_path / "state", server.url)
    assert store_of(restarted).sync(WAIT_S)
    assert sum(restarted.policy.inspect(m)["observations"] for m in restarted.models) == 5
    close(restarted)


def test_a_replica_restarted_from_its_own_state_without_a_checkpoint_learns_nothing_twice(
    server: RedisServer, tmp_path: Path
) -> None:
    a, other = replica(server.url), replica(server.url)
    for i in range(5):
        decision = a.route(text(i), prompt_tokens=100.0)
        assert a.feedback(decision.id, quality=0.5)
    assert store_of(other).sync(WAIT_S)
    a.save(tmp_path / "state")
    close(a)
    # Redis keeps the stream but loses the checkpoint; the others go on learning.
    store_of(other)._publisher.delete(store_of(other).checkpoint_key)
    for i in range(5, 8):
        decision = other.route(text(i), prompt_tokens=100.0)
        assert other.feedback(decision.id, quality=0.5)
    restarted = restart(tmp_path / "state", server.url)
    assert store_of(restarted).sync(WAIT_S) and store_of(other).sync(WAIT_S)
    # Its own 5 once, and the 3 learned elsewhere since it saved.
    assert arms(restarted) == arms(other)
    assert sum(restarted.policy.inspect(m)["observations"] for m in restarted.models) == 8
    close(restarted, other)


def test_a_state_saved_while_redis_was_down_holds_its_buffered_observations_once(
    server: RedisServer, tmp_path: Path
) -> None:
    a = replica(server.url)
    for i in range(2):
        decision = a.route(text(i), prompt_tokens=100.0)
        assert a.feedback(decision.id, quality=0.5)
    server.stop()
    for i in range(2, 5):  # learned and buffered: in the saved state, not yet in the stream
        decision = a.route(text(i), prompt_tokens=100.0)
        assert a.feedback(decision.id, quality=0.5)
    assert store_of(a).stats.buffered == 3
    a.save(tmp_path / "state")
    server.start()
    restarted, stream_length = restart_without_checkpoint(a, tmp_path / "state", server.url)
    assert stream_length == 5
    assert sum(restarted.policy.inspect(m)["observations"] for m in restarted.models) == 5
    close(restarted)


def test_a_saved_position_trimmed_away_with_no_checkpoint_is_refused_at_attach(
    server: RedisServer, tmp_path: Path
) -> None:
    a = build_router(store=replica_store(server.url, retain_s=0.0))
    decision = a.route(text(0), prompt_tokens=100.0)
    assert a.feedback(decision.id, quality=0.5)
    a.save(tmp_path / "state")
    for i in range(1, 4):
        decision = a.route(text(i), prompt_tokens=100.0)
        assert a.feedback(decision.id, quality=0.5)
    assert store_of(a).checkpoint()  # trims the stream behind the last entry
    store_of(a)._publisher.delete(store_of(a).checkpoint_key)
    close(a)
    restarted = Router.load(tmp_path / "state", embedder=build_router().embedder)
    before = arms(restarted)
    with pytest.raises(StoreError, match=r"trimmed away.*no checkpoint"):
        restarted.attach_store(replica_store(server.url))
    assert restarted.store is None and arms(restarted) == before


def test_attaching_keeps_the_configured_prices_over_the_checkpoints(server: RedisServer) -> None:
    a = replica(server.url)
    decision = a.route(text(1), prompt_tokens=100.0)
    assert a.feedback(decision.id, quality=0.5)
    assert store_of(a).checkpoint()
    b = build_router()
    dearer = replace(b.config.models[0], price_in=7.0, price_out=21.0)
    b.update_model(dearer)
    b.attach_store(replica_store(server.url))
    assert b.policy.inspect(dearer.name)["profile"]["price_in"] == 7.0
    assert b.config.models[0].price_in == 7.0
    # The checkpoint's learning came with it.
    assert sum(b.policy.inspect(m)["observations"] for m in b.models) == 1
    # And the other replicas take the configured prices too.
    assert store_of(a).sync(WAIT_S)
    assert a.policy.inspect(dearer.name)["profile"]["price_in"] == 7.0
    # A replica attaching later with the first prices keeps them (over the update in the
    # stream after the checkpoint), and so do the others.
    c = replica(server.url)
    assert c.policy.inspect(dearer.name)["profile"]["price_in"] == 0.1
    assert c.config.models[0].price_in == 0.1
    for router in (a, b):
        assert store_of(router).sync(WAIT_S)
        assert router.policy.inspect(dearer.name)["profile"]["price_in"] == 0.1
    # Attaching with the configuration already in effect shares nothing.
    length = store_of(a)._publisher.xlen(store_of(a).stream_key)
    d = replica(server.url)
    assert store_of(d)._publisher.xlen(store_of(d).stream_key) == length
    close(a, b, c, d)


class _SlowCopy:
    """A policy whose copy takes a while to return, as a large one's does, to widen the window
    in which the reader thread could apply entries between a checkpoint's copy of the policy and
    its reading of the stream position."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)

    def to_bytes(self) -> bytes:
        state = self._policy.to_bytes()
        time.sleep(0.3)
        return state


def test_a_checkpoint_holds_exactly_the_entries_up_to_the_position_it_records(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = replica(server.url), replica(server.url)
    slow = property(lambda r: _SlowCopy(r._policy) if r is a else r._policy)
    monkeypatch.setattr(Router, "policy", slow)
    stop = threading.Event()

    def feed_b() -> None:
        for i in range(200):
            if stop.is_set():
                return
            decision = b.route(text(i), prompt_tokens=100.0)
            b.feedback(decision.id, quality=0.5)
            time.sleep(0.005)

    feeder = threading.Thread(target=feed_b)
    feeder.start()
    try:
        wait_for(lambda: store_of(a).stats.applied >= 3, "a to apply b's first observations")
        assert store_of(a).checkpoint()
    finally:
        stop.set()
        feeder.join(WAIT_S)
    client = store_of(a)._publisher
    raw: Any = client.hgetall(store_of(a).checkpoint_key)
    policy = Policy.from_bytes(raw[b"state"], dim=a.policy.dim)
    covered = raw[b"id"].decode()
    in_stream = len(client.xrange(store_of(a).stream_key, "-", covered))
    assert sum(policy.inspect(m)["observations"] for m in policy.models) == in_stream
    close(a, b)


def test_an_unreadable_decision_record_is_no_decision(server: RedisServer) -> None:
    b = replica(server.url)
    store_of(b)._publisher.set(f"{store_of(b).namespace}:decision:x-1", b"small\x00")
    with pytest.raises(DecisionNotFoundError, match="no decision with id"):
        b.feedback("x-1", quality=0.5)
    assert all(b.policy.inspect(m)["observations"] == 0 for m in b.models)
    close(b)


# A replica on a machine whose wall clock is `offset` seconds off: it makes two decisions,
# prints their ids once their records are written, and waits for a line on stdin to end.
SKEWED_REPLICA = """
import sys, time
offset = float(sys.argv[2])
true_time = time.time
time.time = lambda: true_time() + offset
sys.path.insert(0, sys.argv[3])
from store_replica import replica, text
router = replica(sys.argv[1], feedback_ttl_s=2.0)
ids = [router.route(text(i), prompt_tokens=100.0).id for i in range(2)]
while router.store.stats.decisions_written < 2:
    time.sleep(0.01)
print(" ".join(ids), flush=True)
sys.stdin.readline()
router.store.close()
"""


@pytest.mark.parametrize("offset_s", [-10.0, 10.0])
def test_replicas_agree_on_a_deadline_whatever_their_clocks_say(
    server: RedisServer, offset_s: float
) -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SKEWED_REPLICA,
            server.url,
            str(offset_s),
            str(Path(__file__).parents[1]),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        line = child.stdout.readline()
        assert line, "the replica exited early"
        early, late = line.split()
        b = replica(server.url, feedback_ttl_s=2.0)
        # Within its time to live, by Redis's clock: accepted here, though the deciding
        # replica's clock says otherwise (10 s behind, its deadline was already past).
        assert b.feedback(early, quality=0.5)
        time.sleep(2.5)
        # Past it: refused, though the deciding replica's clock, 10 s ahead, says it is not.
        with pytest.raises(DecisionNotFoundError):
            b.feedback(late, quality=0.5)
        close(b)
    finally:
        child.stdin.write("done\n")
        child.stdin.close()
        child.wait(timeout=WAIT_S)
