"""Batches work that arrives from many coroutines into one call in a worker thread.

An asyncio service must never run the sentence encoder on its event loop: one embedding takes
milliseconds, and every other request would wait for it. `Batcher` runs the work in a thread,
and while one batch is being computed the items that arrive queue up and go together in the
next: under load the encoder sees batches (cheaper per item), and when idle an item starts at
once, with no timer to wait out.
"""

from __future__ import annotations

import asyncio
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
    batches of at most ``max_batch`` items. Bound to the event loop it is first awaited in."""

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
        self._draining: asyncio.Task[None] | None = None

    async def submit(self, item: In) -> Out:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Out] = loop.create_future()
        self._queue.append((item, future))
        if self._draining is None:
            self._draining = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch: list[tuple[In, asyncio.Future[Out]]] = []
                while self._queue and len(batch) < self._max_batch:
                    item, future = self._queue.popleft()
                    if not future.done():  # a caller that went away needs no result
                        batch.append((item, future))
                if not batch:
                    continue
                try:
                    results = await loop.run_in_executor(
                        self._executor, self._compute, [item for item, _ in batch]
                    )
                except asyncio.CancelledError:
                    for _, future in batch:
                        future.cancel()
                    raise
                except Exception as err:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(err)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._draining = None
            # Whatever is still queued (the loop is shutting down) fails rather than hangs.
            while self._queue:
                _, future = self._queue.popleft()
                if not future.done():
                    future.cancel()
