"""What a replica learned (observations, pool changes) while Redis was unreachable, waiting to
be delivered."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from mixllm.store.observation import Observation
from mixllm.store.pool import PoolChange

Entry = Observation | PoolChange


class Outbox:
    """A bounded first-in first-out buffer: when full, the oldest observation is dropped (and
    counted), so a long outage costs the oldest learning, never memory without bound.

    Not thread-safe: its owner holds a lock around every call."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[Entry] = deque()
        self.dropped = 0

    def put(self, observation: Entry) -> None:
        if len(self._items) >= self.capacity:
            self._items.popleft()
            self.dropped += 1
        self._items.append(observation)

    def peek(self, count: int) -> list[Entry]:
        """The oldest ``count`` observations, left in place until `pop` says they arrived."""
        return [self._items[i] for i in range(min(count, len(self._items)))]

    def pop(self, count: int) -> None:
        for _ in range(min(count, len(self._items))):
            self._items.popleft()

    def discard(self, matches: Callable[[Entry], bool]) -> list[Entry]:
        """Takes out the entries that match (keeping the others' order); returns them."""
        kept: deque[Entry] = deque()
        taken: list[Entry] = []
        for entry in self._items:
            (taken if matches(entry) else kept).append(entry)
        self._items = kept
        return taken

    def __len__(self) -> int:
        return len(self._items)
