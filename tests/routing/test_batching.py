"""Batcher: a lone item goes to the worker at once, a burst goes in one batch, and every caller
gets its own result or its batch's error."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import pytest

from mixllm._core import InvalidInputError
from mixllm.routing.batching import Batcher

# Every wait on a caller is bounded by this: a caller left unanswered fails the test instead of
# hanging it.
WAIT_S = 20.0


class RecordingExecutor(Executor):
    """Runs each call in a thread of its own once the test opens the gate, and records when the
    call was handed over and what it gave (whatever it raised, as `ThreadPoolExecutor` does)."""

    def __init__(self) -> None:
        self.handed: list[Callable[..., Any]] = []
        self.futures: list[Future[Any]] = []
        self.gate = threading.Event()
        self.gate.set()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.handed.append(fn)
        future: Future[Any] = Future()
        self.futures.append(future)

        def run() -> None:
            self.gate.wait()
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as err:
                future.set_exception(err)

        threading.Thread(target=run, daemon=True).start()
        return future


class Doubler:
    """Doubles numbers, remembering each batch it was given."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __call__(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        return [2 * item for item in items]


def test_a_lone_item_is_handed_to_the_worker_by_submit_itself() -> None:
    executor = RecordingExecutor()
    batcher: Batcher[int, int] = Batcher(Doubler(), executor)

    async def run() -> int:
        task = asyncio.create_task(batcher.submit(21))
        await asyncio.sleep(0)  # one step: the task runs up to its first wait
        # Already with the worker: no other callback had to run on the loop first.
        assert len(executor.handed) == 1
        return await task

    assert asyncio.run(run()) == 42


def test_no_task_of_the_batcher_waits_on_the_loop_while_a_batch_computes() -> None:
    executor = RecordingExecutor()
    executor.gate.clear()
    batcher: Batcher[int, int] = Batcher(Doubler(), executor)

    async def run() -> int:
        task = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0)
        # The worker hands the results back in one callback: nothing in between to wake.
        assert asyncio.all_tasks() == {asyncio.current_task(), task}
        executor.gate.set()
        return await task

    assert asyncio.run(run()) == 2


def test_items_arriving_during_a_batch_go_together_in_the_next() -> None:
    executor = RecordingExecutor()
    executor.gate.clear()
    compute = Doubler()
    batcher: Batcher[int, int] = Batcher(compute, executor, max_batch=4)

    async def run() -> list[int]:
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0)
        rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 7)]
        await asyncio.sleep(0)
        assert len(executor.handed) == 1  # one batch at a time
        executor.gate.set()
        return await asyncio.gather(first, *rest)

    assert asyncio.run(run()) == [0, 2, 4, 6, 8, 10, 12]
    assert compute.batches == [[0], [1, 2, 3, 4], [5, 6]]


def test_an_error_reaches_every_caller_of_its_batch_and_the_next_batch_still_runs() -> None:
    calls: list[list[int]] = []

    def fails_on_odd(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        if any(item % 2 for item in items):
            raise ValueError("odd")
        return list(items)

    executor = RecordingExecutor()
    executor.gate.clear()
    batcher: Batcher[int, int] = Batcher(fails_on_odd, executor)

    async def run() -> tuple[list[Any], int]:
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0)
        both = [asyncio.create_task(batcher.submit(i)) for i in (3, 5)]
        await asyncio.sleep(0)
        executor.gate.set()
        outcomes = await asyncio.gather(first, *both, return_exceptions=True)
        return outcomes, await batcher.submit(4)

    outcomes, after = asyncio.run(run())
    assert all(isinstance(o, ValueError) for o in outcomes), outcomes
    assert after == 4
    assert calls == [[1], [3, 5], [4]]


class Interrupted(BaseException):
    """Raised by the computation, and more than an error: `except Exception` lets it through."""


def failing_with(raised: BaseException) -> Callable[[Sequence[int]], list[int]]:
    def compute(items: Sequence[int]) -> list[int]:
        if items[0] > 0:
            raise raised
        return [2 * item for item in items]

    return compute


async def three_callers(batcher: Batcher[int, int], executor: RecordingExecutor) -> list[Any]:
    """The outcomes of three callers (one batch of one, then one of two), bounded by a deadlock
    timeout."""
    executor.gate.clear()
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    both = [asyncio.create_task(batcher.submit(i)) for i in (2, 3)]
    await asyncio.sleep(0)
    executor.gate.set()
    gathered = asyncio.gather(first, *both, return_exceptions=True)
    return await asyncio.wait_for(gathered, WAIT_S)


@pytest.mark.parametrize("raised", [Interrupted("stop"), asyncio.CancelledError("stop")])
def test_more_than_an_error_from_the_computation_reaches_every_caller(
    raised: BaseException,
) -> None:
    executor = RecordingExecutor()
    batcher: Batcher[int, int] = Batcher(failing_with(raised), executor)

    async def run() -> tuple[list[Any], int]:
        outcomes = await three_callers(batcher, executor)
        # The batcher is not left busy: the next batch runs.
        return outcomes, await asyncio.wait_for(batcher.submit(0), WAIT_S)

    outcomes, after = asyncio.run(run())
    assert [type(o) for o in outcomes] == [type(raised)] * 3, outcomes
    assert after == 0
    # Raised again in the worker, for the executor to see.
    assert [f.exception(WAIT_S) for f in executor.futures[:2]] == [raised, raised]


@pytest.mark.parametrize("raised", [KeyboardInterrupt(), SystemExit(3)])
def test_an_interrupt_from_the_computation_reaches_the_callers_and_stops_the_loop(
    raised: BaseException,
) -> None:
    executor = RecordingExecutor()
    batcher: Batcher[int, int] = Batcher(failing_with(raised), executor)
    # As when a coroutine itself raises it: asyncio ends the loop with it.
    with pytest.raises(type(raised)):
        asyncio.run(three_callers(batcher, executor))
    assert executor.futures[0].exception(WAIT_S) is raised


def test_a_caller_that_left_while_queued_is_not_computed() -> None:
    executor = RecordingExecutor()
    executor.gate.clear()
    compute = Doubler()
    batcher: Batcher[int, int] = Batcher(compute, executor)

    async def run() -> list[int]:
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0)
        gone = asyncio.create_task(batcher.submit(2))
        kept = asyncio.create_task(batcher.submit(3))
        await asyncio.sleep(0)
        gone.cancel()
        executor.gate.set()
        return await asyncio.gather(first, kept)

    assert asyncio.run(run()) == [2, 6]
    assert compute.batches == [[1], [3]]


def test_a_shut_down_executor_fails_the_caller_and_changes_nothing() -> None:
    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    batcher: Batcher[int, int] = Batcher(Doubler(), pool)
    with pytest.raises(RuntimeError, match="shutdown"):
        asyncio.run(batcher.submit(1))
    # The batcher is not left waiting for a batch that never started.
    with ThreadPoolExecutor(1) as working:
        batcher._executor = working
        assert asyncio.run(batcher.submit(2)) == 4


def test_max_batch_below_one_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="max_batch must be >= 1, got 0"):
        Batcher(Doubler(), ThreadPoolExecutor(1), max_batch=0)
