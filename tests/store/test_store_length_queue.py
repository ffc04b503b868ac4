"""LengthQueue on its own: a hand-over that fails loses its batch only, counted, and closing
never raises and never waits longer than it is given, whatever the hand-over does."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import pytest

from mixllm.store.lengths import LengthQueue, QueuedLength
from redis_server import WAIT_S, raised_by, wait_for


def length(i: int) -> QueuedLength:
    pending: Any = None  # the queue never looks inside a decision
    return QueuedLength(f"decision-{i}", pending, float(i))


class FailingDeliver:
    """Takes the lengths handed over one by one, recording each, and raises at the first one
    in ``bad`` (leaving it and those after it in the batch)."""

    def __init__(self, bad: set[float]) -> None:
        self.bad = bad
        self.delivered: list[float] = []

    def __call__(self, batch: deque[QueuedLength]) -> None:
        while batch:
            if batch[0].output_tokens in self.bad:
                raise RuntimeError("the store refused a length")
            self.delivered.append(batch[0].output_tokens)
            del batch[0]


def closed_within_the_deadlock_timeout(queue: LengthQueue, timeout_s: float) -> None:
    assert raised_by(lambda: queue.close(timeout_s), "close") == []


def test_a_failing_hand_over_at_close_is_logged_and_counted_and_raises_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("mixllm.store.lengths._BATCH", 2)
    deliver = FailingDeliver(bad={2.0})
    queue = LengthQueue(100, deliver)
    for i in range(6):
        queue.put(length(i))
    closed_within_the_deadlock_timeout(queue, WAIT_S)
    # The batch [2, 3] is lost, and counted; the batches after it still went.
    assert deliver.delivered == [0.0, 1.0, 4.0, 5.0]
    assert queue.unsent == 2 and len(queue) == 0
    assert "cannot learn the lengths of 2 completed requests" in caplog.text


def test_a_hand_over_failing_part_way_counts_only_what_it_did_not_take(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("mixllm.store.lengths._BATCH", 3)
    deliver = FailingDeliver(bad={1.0})
    queue = LengthQueue(100, deliver)
    for i in range(3):
        queue.put(length(i))
    closed_within_the_deadlock_timeout(queue, WAIT_S)
    # Length 0 was taken before the failure: only 1 and 2 are lost.
    assert deliver.delivered == [0.0]
    assert queue.unsent == 2
    assert "cannot learn the lengths of 2 completed requests" in caplog.text


def test_a_failing_hand_over_in_the_thread_is_counted_and_the_rest_still_goes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    deliver = FailingDeliver(bad={1.0})
    queue = LengthQueue(100, deliver)
    queue.start()
    queue.put(length(1))
    wait_for(lambda: queue.unsent == 1, "the failed batch to be counted")
    queue.put(length(2))
    wait_for(lambda: deliver.delivered == [2.0], "the next length to be handed over")
    closed_within_the_deadlock_timeout(queue, WAIT_S)
    assert "cannot learn the lengths of 1 completed requests" in caplog.text


def test_close_gives_up_on_a_hand_over_that_never_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()
    entered = threading.Event()

    def stuck(batch: deque[QueuedLength]) -> None:
        entered.set()
        release.wait(WAIT_S)

    queue = LengthQueue(100, stuck)
    queue.start()
    queue.put(length(1))
    assert entered.wait(WAIT_S)
    queue.put(length(2))
    try:
        closed_within_the_deadlock_timeout(queue, 0.05)
        # The length it holds and the one it never reached are named; the latter stays queued.
        assert len(queue) == 1
        assert "the lengths of 2 completed requests were not learned" in caplog.text
    finally:
        release.set()


def test_close_stops_handing_over_when_its_time_is_up(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("mixllm.store.lengths._BATCH", 1)
    release = threading.Event()
    seen: list[float] = []

    def slow(batch: deque[QueuedLength]) -> None:
        seen.extend(item.output_tokens for item in batch)
        release.wait(0.2)
        batch.clear()

    queue = LengthQueue(100, slow)
    for i in range(3):
        queue.put(length(i))
    try:
        closed_within_the_deadlock_timeout(queue, 0.1)
        # The first hand-over (if the thread got to it at all) outlasts the time close has: the
        # others are left queued, and all three named.
        assert seen in ([], [0.0]) and len(queue) == 3 - len(seen)
        assert "the lengths of 3 completed requests were not learned" in caplog.text
    finally:
        release.set()


def test_nothing_is_handed_over_once_close_gave_up(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("mixllm.store.lengths._BATCH", 1)
    release = threading.Event()
    entered = threading.Event()
    taken: list[float] = []

    def slow(batch: deque[QueuedLength]) -> None:
        entered.set()
        release.wait(WAIT_S)
        taken.append(batch[0].output_tokens)
        del batch[0]

    queue = LengthQueue(100, slow)
    queue.start()
    for i in range(4):
        queue.put(length(i))
    assert entered.wait(WAIT_S)
    thread = queue._thread
    assert thread is not None
    try:
        # The thread is in a hand-over its periodic drain started, with more queued behind it.
        closed_within_the_deadlock_timeout(queue, 0.05)
    finally:
        release.set()
    thread.join(WAIT_S)
    assert not thread.is_alive()
    # The length in hand when close gave up could still finish; nothing after it went.
    assert taken == [0.0] and len(queue) == 3
    assert "the lengths of 4 completed requests were not learned" in caplog.text
