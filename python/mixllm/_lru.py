"""A small thread-safe LRU map (the embedding cache, the Router's context cache and the Redis
store's record of the observations it has seen), and what the two text caches share: how a text
is keyed and what an entry costs besides its bytes."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


# What an entry costs beyond its key and value bytes (the objects around them), counted
# against a cache's byte budget.
ENTRY_OVERHEAD = 256


def text_key(encoded: bytes) -> bytes:
    """The cache key of a text's UTF-8 bytes: a digest, so a cache never keeps texts."""
    return hashlib.blake2b(encoded, digest_size=16).digest()


class LruCache(Generic[K, V]):
    """Keeps the most recently used entries: at most ``capacity`` of them (0 disables the
    cache), and, when ``max_bytes`` is given, at most that many bytes as the callers account
    them (each `put` says what its entry weighs; an entry heavier than the whole budget is not
    kept)."""

    def __init__(self, capacity: int, *, max_bytes: int | None = None) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            self._data.move_to_end(key)
            return entry[0]

    def put(self, key: K, value: V, nbytes: int = 0) -> None:
        if self.capacity <= 0 or (self.max_bytes is not None and nbytes > self.max_bytes):
            return
        with self._lock:
            previous = self._data.pop(key, None)
            if previous is not None:
                self._bytes -= previous[1]
            self._data[key] = (value, nbytes)
            self._bytes += nbytes
            while len(self._data) > self.capacity or (
                self.max_bytes is not None and self._bytes > self.max_bytes
            ):
                _, (_, dropped) = self._data.popitem(last=False)
                self._bytes -= dropped

    @property
    def nbytes(self) -> int:
        """The bytes the entries held now are accounted as."""
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0
