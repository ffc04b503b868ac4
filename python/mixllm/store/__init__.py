"""Sharing what a Router learns between replicas of a service.

`RedisStore` appends every observation a replica learns from to a Redis Stream, applies the
other replicas' observations to its own arms, and keeps a checkpoint of the whole state so a new
or restarted replica catches up from it instead of from the stream's beginning.
"""

from __future__ import annotations

from mixllm.errors import StoreError
from mixllm.store.observation import Observation
from mixllm.store.redis_store import RedisStore, StoreStats

__all__ = ["Observation", "RedisStore", "StoreError", "StoreStats"]
