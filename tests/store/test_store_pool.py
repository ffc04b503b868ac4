"""Pool changes made on one replica reach the others through a real redis-server, in order
with the observations."""

from __future__ import annotations

from typing import Any

import pytest

from mixllm.config import ModelConfig
from mixllm.errors import ConfigError
from redis_server import WAIT_S, RedisServer, require_redis_server
from store_replica import close, outcome, replica, text

_SKIP = require_redis_server()
pytestmark = pytest.mark.skipif(bool(_SKIP), reason=_SKIP)

EXTRA = ModelConfig(
    name="extra", price_in=0.5, price_out=1.5, ttft_s=0.2, tokens_per_s=80.0, concurrency=2
)


def test_a_model_added_updated_and_removed_on_one_replica_changes_every_pool(
    server: RedisServer,
) -> None:
    a, b = replica(server.url), replica(server.url)
    assert a.store is not None and b.store is not None
    a.add_model(EXTRA)
    # Learned on a right after adding it: b must add the model before learning this.
    decision = a.route(text(1), prompt_tokens=100.0, models=["extra"])
    quality, tokens = outcome(1, "small")
    a.feedback(decision.id, quality=quality, output_tokens=tokens)
    assert b.store.sync(WAIT_S)
    assert b.models == a.models == ["small", "medium", "large", "extra"]
    assert b.config.models[-1] == EXTRA
    assert b.policy.inspect("extra")["observations"] == 1
    assert (b.policy.inspect("extra")["a_inv"] == a.policy.inspect("extra")["a_inv"]).all()
    cheaper = ModelConfig(**{**EXTRA.__dict__, "price_in": 0.1})
    a.update_model(cheaper)
    assert b.store.sync(WAIT_S)
    assert b.policy.profile("extra")["price_in"] == 0.1
    a.remove_model("extra")
    assert b.store.sync(WAIT_S)
    assert b.models == ["small", "medium", "large"]
    # None of it came back to a, and b shared none of it again.
    assert a.models == b.models and a.store.stats.skipped == 0
    for router in (a, b):
        close(router)


def test_a_warm_start_is_refused_with_a_store(server: RedisServer, routerbench: Any) -> None:
    a = replica(server.url)
    with pytest.raises(ConfigError, match="warm-started"):
        a.add_model(EXTRA, examples=routerbench)
    assert "extra" not in a.models
    close(a)


def test_fitting_a_router_with_a_store_is_refused(server: RedisServer, routerbench: Any) -> None:
    a = replica(server.url)
    before = a.policy
    with pytest.raises(ConfigError, match="before attaching the store"):
        a.fit(routerbench)
    assert a.policy is before
    close(a)
