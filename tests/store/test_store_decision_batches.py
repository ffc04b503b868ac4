"""The decision records' writer against a real redis-server: what a batch of queued writes
leaves in Redis, whatever the batch holds and however many batches it takes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from mixllm.routing.ledger import deadline_ms
from mixllm.store.decisions import DecisionRecord, DecisionRecords
from redis_server import WAIT_S, RedisServer, require_redis_server

_SKIP = require_redis_server()
pytestmark = pytest.mark.skipif(bool(_SKIP), reason=_SKIP)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[redis.Redis]:
    with RedisServer(tmp_path) as running:
        connection = redis.Redis.from_url(running.url)
        yield connection
        connection.close()


def records(client: redis.Redis, *, capacity: int = 100_000) -> DecisionRecords:
    return DecisionRecords(client, "ns", capacity=capacity, redis_error=redis.RedisError)


def wait_written(writer: DecisionRecords, count: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while writer.written < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{writer.written} of {count} writes done")
        time.sleep(0.01)


def test_several_batches_of_writes_rewrites_and_deletions_end_as_the_last_write_of_each(
    client: redis.Redis,
) -> None:
    writer = records(client)
    rng = np.random.default_rng(0)
    deadline = deadline_ms(60.0)
    expected: dict[str, DecisionRecord | None] = {}
    writes = 0
    # More than one batch, each decision written, some rewritten and some deleted after, with
    # ids and names beyond ASCII and contexts neither float64 nor contiguous.
    for i in range(2500):
        decision_id = f"é-{i}" if i % 7 == 0 else f"r-{i}"
        model = "modèle" if i % 3 == 0 else f"m{i % 5}"
        context = rng.standard_normal(16)
        if i % 4 == 1:
            context = context.astype(np.float32)
        if i % 4 == 2:
            context = rng.standard_normal(32)[::2]
        record = DecisionRecord(model, context, f"a{i % 2}", deadline + i)
        writer.put(decision_id, record)
        writes += 1
        expected[decision_id] = record
        if i % 5 == 0:
            record = DecisionRecord(model, context, f"a{i % 2}", deadline + i, float(i))
            writer.put(decision_id, record)
            writes += 1
            expected[decision_id] = record
        if i % 11 == 0:
            writer.delete(decision_id)
            writes += 1
            expected[decision_id] = None
    wait_written(writer, writes)
    for decision_id, record in expected.items():
        stored = writer.get(decision_id)
        if record is None:
            assert stored is None, decision_id
            continue
        assert stored is not None, decision_id
        assert (stored.model, stored.arm, stored.deadline_ms, stored.output_tokens) == (
            record.model,
            record.arm,
            record.deadline_ms,
            record.output_tokens,
        )
        np.testing.assert_array_equal(stored.context, record.context.astype(np.float64))
        # Expiring at the decision's deadline, to the millisecond.
        assert client.pexpiretime(f"ns:decision:{decision_id}") == record.deadline_ms
    assert writer.dropped == 0
    writer.close()


def test_a_full_queue_drops_the_oldest_writes_and_counts_them(client: redis.Redis) -> None:
    writer = records(client, capacity=3)
    writer._stop.set()  # no writes: the queue only fills
    writer._thread.join()
    context = np.ones(4)
    for i in range(5):
        writer.put(f"d-{i}", DecisionRecord("m", context, "a", deadline_ms(60.0)))
    writer.delete("d-4")
    assert writer.dropped == 3
    assert [entry[0] for entry in writer._queue] == ["d-3", "d-4", "d-4"]
