"""Batches work that arrives from many coroutines into one call in a worker thread.

An asyncio service must never run the sentence encoder on its event loop: one embedding takes
milliseconds, and every other request would wait for it. `Batcher` runs the work in a thread,
and while one batch is being computed the items that arrive queue up and go together in the
next: under load the encoder sees batches (cheaper per item), and when idle an item starts at
once, with no timer to wait out.

The hand-off is as short as a thread hand-off can be, since it is paid by every request of an
idle service: an item that finds the worker idle is handed to it by `submit` itself, and the
worker hands the results back in one callback on the loop that sets every caller's future and
starts the next batch. No task sits in between to be woken on the way in or out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

from mixllm._core import InvalidInputError

__all__ = ["Batcher"]

In = TypeVar("In")
Out = TypeVar("Out")


class Batcher(Generic[In, Out]):
    """Calls ``compute(items) -> results`` (one result per item, in order) in ``executor`` on
    batches of at most ``max_batch`` items, one batch at a time. Bound to the event loop it is
    first awaited in."""

    def __init__(
        self,
        compute: Callable[[Sequence[In]], Sequence[Out]],
        executor: Executor,
        *,
        max_batch: int = 64,
    ) -> None:
        if max_batch < 1:
            raise InvalidInputError(f"max_batch must be >= 1, got {max_batch}")
        self._compute = compute
        self._executor = executor
        self._max_batch = max_batch
        self._queue: deque[tuple[In, asyncio.Future[Out]]] = deque()
        # Whether a batch is with the worker: items that arrive meanwhile wait for the next.
        self._busy = False

    async def submit(self, item: In) -> Out:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Out] = loop.create_future()
        self._queue.append((item, future))
        if not self._busy:
            self._start(loop)
        return await future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hands the queued items (up to ``max_batch``) to the worker; on the loop."""
        batch: list[tuple[In, asyncio.Future[Out]]] = []
        while self._queue and len(batch) < self._max_batch:
            item, future = self._queue.popleft()
            if not future.done():  # a caller that went away needs no result
                batch.append((item, future))
        if not batch:
            return
        try:
            self._executor.submit(self._work, loop, batch)
        except RuntimeError as err:  # the executor is shut down: these callers get the error
            for _, future in batch:
                future.set_exception(err)
            return
        self._busy = True

    def _work(
        self, loop: asyncio.AbstractEventLoop, batch: list[tuple[In, asyncio.Future[Out]]]
    ) -> None:
        """Computes a batch; in the worker thread. Whatever the computation raises reaches every
        caller of the batch; what is more than an error (`KeyboardInterrupt`, `SystemExit`, a
        cancellation) is raised again here too, for the executor to see, as its callers would
        have seen it had they called ``compute`` themselves."""
        outcome: Sequence[Out] | BaseException
        try:
            outcome = self._compute([item for item, _ in batch])
        except BaseException as err:  # a caller left waiting would wait for ever
            outcome = err
        # A closed loop has cancelled its callers with it: no one is left to deliver to.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._deliver, loop, batch, outcome)
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            raise outcome

    def _deliver(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[In, asyncio.Future[Out]]],
        outcome: Sequence[Out] | BaseException,
    ) -> None:
        """Gives each caller of a batch its result (or the batch's error), then starts the
        next batch with what has queued up meanwhile; on the loop."""
        self._busy = False
        if not isinstance(outcome, BaseException) and len(outcome) != len(batch):
            outcome = RuntimeError(f"a batch of {len(batch)} items gave {len(outcome)} results")
        for index, (_, future) in enumerate(batch):
            if future.done():
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome[index])
        if self._queue:
            self._start(loop)
