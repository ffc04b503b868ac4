"""Replicas sharing what they learn through a real redis-server (started by each test on a
free loopback port, in a temporary folder): learning as one, joining late, and the faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from mixllm.errors import ConfigError, DecisionNotFoundError
from mixllm.routing.router import Router
from mixllm.store import Observation, RedisStore, StoreError
from redis_server import WAIT_S, RedisServer, require_redis_server, wait_for
from store_replica import (
    DIM,
    arms,
    assert_same_arms,
    build_router,
    close,
    decisions,
    outcome,
    replica,
    replica_store,
    text,
)

_SKIP = require_redis_server()
pytestmark = pytest.mark.skipif(bool(_SKIP), reason=_SKIP)

REPLICA = str(Path(__file__).parents[1].joinpath("store_replica.py"))


def feed(router: Router, indices: range | list[int]) -> list[tuple[int, str]]:
    """Routes each query and sends its feedback; returns (index, model) learned."""
    learned = []
    for i in indices:
        decision = router.route(text(i), prompt_tokens=100.0)
        quality, tokens = outcome(i, decision.model)
        assert router.feedback(decision.id, quality=quality, output_tokens=tokens)
        learned.append((i, decision.model))
    return learned


def reference(learned: list[tuple[int, str]]) -> Router:
    """One Router without a store, fed every observation."""
    router = build_router()
    assert router.projection is not None
    for i, model in sorted(learned):
        quality, tokens = outcome(i, model)
        context = router.projection.context(router.embedder.embed([text(i)]))[0]
        router.policy.update(model, context, quality=quality, output_tokens=tokens)
    return router


def test_three_replica_processes_learn_as_one_router(server: RedisServer, tmp_path: Path) -> None:
    total = 60
    outs = [tmp_path / f"replica-{r}.json" for r in range(3)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                REPLICA,
                server.url,
                str(out),
                "--total",
                str(total),
                "--indices",
                ",".join(str(i) for i in range(r, total, 3)),
            ],
            stdout=subprocess.DEVNULL,
        )
        for r, out in enumerate(outs)
    ]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    results = [json.loads(out.read_text()) for out in outs]
    learned = [tuple(row) for result in results for row in result["learned"]]
    assert sorted(i for i, _ in learned) == list(range(total))
    single = reference(learned)  # type: ignore[arg-type]
    want_decisions = decisions(single, range(1000, 1020))
    for result in results:
        assert result["recoveries"] == 0
        assert_same_arms(result["arms"], arms(single))
        assert [d[0] for d in result["decisions"]] == [d[0] for d in want_decisions]
        np.testing.assert_allclose(
            [d[1] for d in result["decisions"]], [d[1] for d in want_decisions], rtol=1e-9
        )


def test_a_replica_joining_late_starts_from_the_checkpoint_and_replays_the_rest(
    server: RedisServer,
) -> None:
    first = build_router(store=replica_store(server.url, retain_s=0.0))
    learned = feed(first, range(30))
    assert first.store is not None and first.store.checkpoint()
    # The stream was trimmed behind the checkpoint: a late replica can only catch up through it.
    assert first.store._publisher.xlen(first.store.stream_key) <= 1
    learned += feed(first, range(30, 40))
    late = replica(server.url)
    assert late.store is not None and late.store.sync(WAIT_S)
    assert late.store.stats.applied == 10
    assert_same_arms(arms(late), arms(reference(learned)))
    assert_same_arms(arms(late), arms(first))
    # And it keeps following: what the first learns next reaches it.
    learned += feed(first, range(40, 45))
    assert late.store.sync(WAIT_S)
    assert_same_arms(arms(late), arms(reference(learned)))
    # The trimming behind the checkpoint took nothing either had yet to read.
    assert late.store.stats.recoveries == first.store.stats.recoveries == 0
    for router in (first, late):
        close(router)


def test_a_checkpoint_for_another_pool_is_refused(server: RedisServer) -> None:
    first = replica(server.url)
    feed(first, range(5))
    assert first.store is not None and first.store.checkpoint()
    other = build_router()
    other.remove_model("large")
    with pytest.raises(ConfigError, match="checkpoint has models"):
        other.attach_store(replica_store(server.url))
    assert other.store is None
    close(first)


def test_replicas_reconnect_by_themselves_after_redis_restarts(server: RedisServer) -> None:
    a, b = replica(server.url), replica(server.url)
    learned = feed(a, range(20))
    assert b.store is not None and b.store.sync(WAIT_S)
    server.stop()
    server.start()  # same port and folder: the append-only file brings the stream back
    learned += feed(a, range(20, 40))
    assert a.store is not None
    wait_for(lambda: a.store.stats.buffered == 0, "a to deliver what it buffered")  # type: ignore[union-attr]
    assert b.store.sync(WAIT_S)
    assert a.store._publisher.xlen(a.store.stream_key) == 40
    assert_same_arms(arms(b), arms(reference(learned)))
    assert_same_arms(arms(a), arms(reference(learned)))
    close(a)
    close(b)


def test_with_redis_down_routing_goes_on_and_observations_are_delivered_when_it_is_back(
    server: RedisServer,
) -> None:
    a = build_router(store=replica_store(server.url, max_buffered=15))
    b = replica(server.url)
    before = feed(a, range(10))
    assert b.store is not None and b.store.sync(WAIT_S)
    server.stop()
    during = feed(a, range(10, 30))  # routing and learning go on, locally
    assert a.store is not None
    stats = a.store.stats
    assert (stats.buffered, stats.dropped, stats.connected) == (15, 5, False)
    # A checkpoint now would hold observations the stream lacks: none is written.
    assert not a.store.checkpoint()
    assert_same_arms(arms(a), arms(reference(before + during)))
    server.start()
    wait_for(lambda: a.store.stats.buffered == 0, "a to deliver what it buffered")  # type: ignore[union-attr]
    assert b.store.sync(WAIT_S)
    # b learned everything but the 5 oldest observations the full buffer dropped.
    assert_same_arms(arms(b), arms(reference(before + during[5:])))
    assert a.store.stats.connected
    close(a)
    close(b)


def test_a_replica_killed_with_sigkill_loses_no_acknowledged_observation(
    server: RedisServer, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            REPLICA,
            server.url,
            str(tmp_path / "out.json"),
            "--total",
            "10000",
            "--indices",
            ",".join(str(i) for i in range(10000)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    acked: list[tuple[int, str]] = []
    while len(acked) < 25:
        line = proc.stdout.readline()
        assert line, "the replica exited early"
        _, index, model = line.split()
        acked.append((int(index), model))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=WAIT_S)
    reader = RedisStore(server.url)
    entries = reader._publisher.xrange(reader.stream_key)
    in_stream = {
        (o.model, o.context.tobytes()) for o in (Observation.from_fields(f) for _, f in entries)
    }
    router = build_router()
    assert router.projection is not None
    for i, model in acked:
        context = router.projection.context(router.embedder.embed([text(i)]))[0]
        assert (model, context.tobytes()) in in_stream, i
    assert len(entries) >= len(acked)
    reader.close()


def test_bad_store_settings_are_refused_with_their_name() -> None:
    with pytest.raises(ValueError, match="max_buffered"):
        RedisStore("redis://127.0.0.1:1/0", max_buffered=0)
    with pytest.raises(ValueError, match="url"):
        RedisStore("")
    assert DIM == 6


def test_feedback_for_a_decision_made_on_one_replica_is_accepted_on_another_once(
    server: RedisServer,
) -> None:
    a, b = replica(server.url), replica(server.url)
    assert a.store is not None and b.store is not None
    decision = a.route(text(1), prompt_tokens=100.0)
    assert a.policy.in_flight(decision.model) == 1
    wait_for(lambda: a.store.stats.decisions_written == 1, "the decision record")  # type: ignore[union-attr]
    quality, tokens = outcome(1, decision.model)
    assert b.feedback(decision.id, quality=quality, output_tokens=tokens)
    with pytest.raises(DecisionNotFoundError, match="already answered"):
        b.feedback(decision.id, quality=quality)
    assert a.store.sync(WAIT_S)
    # The replica that made the decision learned it from the stream and let its request go.
    assert a.pending() == 0 and a.policy.in_flight(decision.model) == 0
    with pytest.raises(DecisionNotFoundError, match="another replica"):
        a.feedback(decision.id, quality=quality)
    want = arms(reference([(1, decision.model)]))
    assert_same_arms(arms(a), want)
    assert_same_arms(arms(b), want)
    with pytest.raises(DecisionNotFoundError, match="no decision with id"):
        b.feedback("never-issued", quality=0.5)
    close(a)
    close(b)


def test_feedback_sent_to_every_replica_at_once_is_learned_once(server: RedisServer) -> None:
    replicas = [replica(server.url) for _ in range(3)]
    decisions_made = [replicas[0].route(text(i), prompt_tokens=100.0) for i in range(10)]
    origin = replicas[0].store
    assert origin is not None
    wait_for(lambda: origin.stats.decisions_written == 10, "the decision records")
    results: list[bool | str] = []
    lock = threading.Lock()

    def answer(router: Router, decision_id: str) -> None:
        try:
            outcome_ = router.feedback(decision_id, quality=0.5)
        except DecisionNotFoundError as err:
            outcome_ = str(err)
        with lock:
            results.append(outcome_)

    for decision in decisions_made:
        threads = [threading.Thread(target=answer, args=(r, decision.id)) for r in replicas]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S)
    assert results.count(True) == 10 and len(results) == 30
    for router in replicas:
        assert router.store is not None and router.store.sync(WAIT_S)
        assert sum(router.policy.inspect(m)["observations"] for m in router.models) == 10
    assert replicas[0].pending() == 0
    for router in replicas:
        close(router)


def test_with_config_is_refused_while_a_store_is_attached(server: RedisServer) -> None:
    # A copy would share the store, but the store's reader settles decisions and applies pool
    # changes only on the Router it was attached to.
    a = replica(server.url)
    before = a.config
    with pytest.raises(ConfigError, match=r"with_config.*store"):
        a.with_config(willingness_to_pay=0.001)
    assert a.config == before
    # Changing the settings before attaching still works.
    cheap = build_router().with_config(willingness_to_pay=0.001)
    cheap.attach_store(replica_store(server.url))
    assert cheap.store is not None and cheap.config.willingness_to_pay == 0.001
    for router in (a, cheap):
        close(router)


def test_checkpoints_are_written_periodically_and_only_forward(server: RedisServer) -> None:
    a = build_router(store=replica_store(server.url, checkpoint_every_s=0.1))
    b = replica(server.url)
    feed(a, range(5))
    assert a.store is not None and b.store is not None
    # The first checkpoint is written at attach, of the empty stream; then the periodic ones.
    last = a.store._publisher.xrevrange(a.store.stream_key, count=1)[0][0]
    wait_for(
        lambda: a.store._publisher.hget(a.store.checkpoint_key, "id") == last,  # type: ignore[union-attr]
        "a periodic checkpoint of every entry",
    )
    covered = a.store._publisher.hget(a.store.checkpoint_key, "id")
    # b has applied the same entries: its checkpoint would not be newer, so it is not written.
    assert b.store.sync(WAIT_S)
    assert not b.store.checkpoint()
    assert a.store._publisher.hget(a.store.checkpoint_key, "id") == covered
    for router in (a, b):
        close(router)


def test_a_store_serves_one_router(server: RedisServer) -> None:
    shared = replica_store(server.url)
    a = build_router(store=shared)
    other = build_router()
    with pytest.raises(StoreError, match="already attached"):
        other.attach_store(shared)
    assert other.store is None
    with pytest.raises(ConfigError, match="already has a store"):
        a.attach_store(replica_store(server.url))
    shared.close()


def test_a_replica_that_falls_behind_the_trimming_starts_again_from_the_checkpoint(
    server: RedisServer,
) -> None:
    a = build_router(store=replica_store(server.url, retain_s=0.0))
    behind = replica(server.url)
    assert a.store is not None and behind.store is not None
    learned = feed(a, range(10)) + feed(behind, range(10, 15))
    assert behind.store.sync(WAIT_S)
    waiting = behind.route(text(99), prompt_tokens=100.0)
    # The replica's reader is held back while the other appends, checkpoints and trims past it.
    small = next(m for m in a.config.models if m.name == "small")
    with behind.store._read_lock:
        learned += feed(a, range(15, 30))
        a.update_model(replace(small, price_in=0.2))  # a price change it will never read
        assert a.store.checkpoint()
        info: Any = a.store._publisher.xinfo_stream(a.store.stream_key)
        assert info["length"] <= 1  # what the held-back replica had not read is gone
        learned += feed(a, range(30, 35))
        learned += feed(behind, range(35, 40))  # its own, appended after the checkpoint
        # And its own, accepted while Redis seemed unreachable: buffered, in no checkpoint.
        behind.store._online = False
        learned += feed(behind, range(40, 45))
        assert behind.store.stats.buffered == 5
    # It finds the gap within a check interval of reading past it, and starts again.
    wait_for(lambda: behind.store.stats.recoveries == 1, "the replica to start again")  # type: ignore[union-attr]
    wait_for(lambda: behind.store.stats.buffered == 0, "its buffer to be delivered")  # type: ignore[union-attr]
    assert behind.store.sync(WAIT_S) and a.store.sync(WAIT_S)
    assert_same_arms(arms(behind), arms(reference(learned)))
    assert_same_arms(arms(a), arms(reference(learned)))
    # The price change it lost came with the checkpoint, to its arms and its configuration.
    assert behind.policy.profile("small")["price_in"] == 0.2
    assert next(m for m in behind.config.models if m.name == "small").price_in == 0.2
    # Its pending decision still counts in its model's queue, and still takes feedback.
    assert behind.policy.in_flight(waiting.model) == 1
    quality, tokens = outcome(99, waiting.model)
    assert behind.feedback(waiting.id, quality=quality, output_tokens=tokens)
    assert behind.policy.in_flight(waiting.model) == 0
    learned.append((99, waiting.model))
    assert a.store.sync(WAIT_S)
    assert_same_arms(arms(a), arms(reference(learned)))
    assert_same_arms(arms(behind), arms(reference(learned)))
    assert a.store.stats.recoveries == 0
    for router in (a, behind):
        close(router)


def test_an_append_whose_reply_was_lost_is_not_learned_twice_from_a_later_checkpoint(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = replica(server.url), replica(server.url)
    assert a.store is not None and b.store is not None
    learned = feed(a, range(5))
    publisher = a.store._publisher
    append, ping = publisher.xadd, publisher.ping
    reconnect = threading.Event()

    def reply_lost(*args: Any, **kwargs: Any) -> Any:
        append(*args, **kwargs)
        monkeypatch.setattr(publisher, "xadd", append)
        raise redis.ConnectionError("connection reset before the reply")

    def ping_when_told(*args: Any, **kwargs: Any) -> Any:
        assert reconnect.wait(WAIT_S)
        return ping(*args, **kwargs)

    monkeypatch.setattr(publisher, "xadd", reply_lost)
    monkeypatch.setattr(publisher, "ping", ping_when_told)
    learned += feed(a, range(5, 6))  # appended, but a cannot know: buffered
    assert a.store.stats.buffered == 1
    # Another replica checkpoints the stream, first copy included, before a delivers it again.
    assert b.store.sync(WAIT_S) and b.store.checkpoint()
    reconnect.set()
    wait_for(lambda: a.store.stats.buffered == 0, "a to deliver what it buffered")  # type: ignore[union-attr]
    learned += feed(a, range(6, 8))
    late = replica(server.url)
    assert late.store is not None
    for router in (a, b, late):
        assert router.store is not None and router.store.sync(WAIT_S)
        assert_same_arms(arms(router), arms(reference(learned)))
    assert publisher.xlen(a.store.stream_key) == len(learned)
    for router in (a, b, late):
        close(router)


def test_trimming_right_behind_the_readers_takes_nothing_they_had_yet_to_read(
    server: RedisServer,
) -> None:
    # Checkpoints every 50 ms, each trimming the stream up to the entry it covers, while both
    # replicas append and read: a reader just behind the trim point has lost nothing.
    a = build_router(store=replica_store(server.url, checkpoint_every_s=0.05, retain_s=0.0))
    b = replica(server.url)
    assert a.store is not None and b.store is not None
    learned = []
    for i in range(60):
        learned += feed(a if i % 2 else b, [i])
        time.sleep(0.005)
    assert a.store.stats.checkpoints > 1
    assert a.store.sync(WAIT_S) and b.store.sync(WAIT_S)
    assert a.store.stats.recoveries == b.store.stats.recoveries == 0
    for router in (a, b):
        assert_same_arms(arms(router), arms(reference(learned)))
        close(router)
