"""One replica of a small Router sharing its learning through Redis, as a separate process.

    python store_replica.py URL OUT --total K --indices 0,3,6 [--checkpoint-every S]
        [--retain S] [--pause-after N --pause-s S]

routes query i and sends its feedback for each index given, waits until every one of the K
observations (its own and the other replicas') is learned, and writes to OUT (JSON) what it
learned from (index, model) and its arms. The test process builds the same Router (`build_router`)
to compare with one Router fed every observation.

The store tests build their replicas in the test process with the same pieces: `replica`,
`replica_store`, `restart`, `store_of`, `close` and `assert_same_arms`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import redis

from light_router import HashEmbedder
from mixllm.config import ModelConfig, RouterConfig
from mixllm.routing.router import Router
from mixllm.store import RedisStore
from mixllm.understanding.projection import LinearProjection

WIDTH = 16
DIM = 6
PROMPT_TOKENS = 100.0
WTP = 0.05
# Reading the arms from many processes: every wait is bounded.
SYNC_TIMEOUT_S = 20.0


def build_router(*, store: RedisStore | None = None, **settings: Any) -> Router:
    """The replicas' Router; ``settings`` change its configuration (``feedback_ttl_s``...)."""
    models = tuple(
        ModelConfig(
            name=name,
            price_in=price,
            price_out=3 * price,
            ttft_s=0.3,
            tokens_per_s=60.0,
            concurrency=4,
        )
        for name, price in (("small", 0.1), ("medium", 1.0), ("large", 10.0))
    )
    config = RouterConfig(models=models, dim=DIM, willingness_to_pay=WTP, **settings)
    q, _ = np.linalg.qr(np.random.default_rng(7).standard_normal((WIDTH, DIM)))
    projection = LinearProjection(q.T, np.zeros(WIDTH))
    return Router(
        config,
        embedder=HashEmbedder(WIDTH, unit=False),
        projection=projection,
        store=store,
    )


def replica_store(url: str, **options: Any) -> RedisStore:
    """A store of ``url`` (``options`` as `RedisStore`'s) reading the stream in short blocks:
    closing a store waits for its read to end."""
    options.setdefault("block_s", 0.05)
    return RedisStore(url, **options)


def replica(url: str, **settings: Any) -> Router:
    """`build_router` with ``settings``, attached to a `replica_store` of ``url``."""
    return build_router(store=replica_store(url), **settings)


def restart(state: Path, url: str) -> Router:
    """A replica loaded from the state saved in ``state``, attached to ``url`` again."""
    router = Router.load(state, embedder=build_router().embedder)
    router.attach_store(replica_store(url))
    return router


def restart_without_checkpoint(router: Router, state: Path, url: str) -> tuple[Router, int]:
    """Once ``router`` has delivered what it buffered: closes it, deletes the stream's
    checkpoint (so a restart must replay the stream from the position saved in ``state``), and
    returns a replica restarted from ``state`` and synced, with the stream's length."""
    from redis_server import WAIT_S, wait_for

    store = store_of(router)
    wait_for(lambda: store.stats.buffered == 0, "the replica to deliver what it buffered")
    close(router)
    client: Any = redis.Redis.from_url(url)
    client.delete(f"{store.namespace}:checkpoint")
    length = int(client.xlen(store.stream_key))
    client.close()
    restarted = restart(state, url)
    assert store_of(restarted).sync(WAIT_S)
    return restarted, length


def store_of(router: Router) -> RedisStore:
    assert router.store is not None
    return router.store


def close(*routers: Router) -> None:
    for router in routers:
        store_of(router).close()


def assert_same_arms(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Equal within 1e-9 relative (norm-wise): the same sums, added in another order."""
    assert got.keys() == want.keys()
    for model in want:
        assert got[model]["observations"] == want[model]["observations"], model
        for key in ("a_inv", "theta_quality", "theta_log_length", "length_a_inv"):
            a, b = np.asarray(got[model][key]), np.asarray(want[model][key])
            assert np.linalg.norm(a - b) <= 1e-9 * np.linalg.norm(b), (model, key)


def text(i: int) -> str:
    return f"query number {i}"


def outcome(i: int, model: str) -> tuple[float, float]:
    """The quality and output tokens query ``i`` gets from ``model``."""
    rng = np.random.default_rng(zlib.crc32(f"{i}/{model}".encode()))
    base = {"small": 0.4, "medium": 0.6, "large": 0.8}[model]
    return float(np.clip(base + 0.2 * rng.standard_normal(), 0, 1)), float(rng.integers(10, 500))


def arms(router: Router) -> dict[str, dict[str, list[Any]]]:
    out = {}
    for name in router.models:
        state = router.policy.inspect(name)
        out[name] = {
            k: np.asarray(state[k]).tolist()
            for k in ("a_inv", "theta_quality", "theta_log_length", "length_a_inv")
        }
        out[name]["observations"] = state["observations"]
    return out


def decisions(router: Router, queries: range) -> list[list[Any]]:
    """The model each query would go to, and the scores, with nothing in flight."""
    projection = router.projection
    assert projection is not None
    rows = []
    for i in queries:
        context = projection.context(router.embedder.embed([text(i)]))[0]
        detail = router.policy.decide(
            context, prompt_tokens=PROMPT_TOKENS, willingness_to_pay=WTP, now_s=0.0
        )
        rows.append([detail.model, detail.score.tolist()])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("--total", type=int, required=True)
    parser.add_argument("--indices", default="")
    parser.add_argument("--checkpoint-every", type=float, default=30.0)
    parser.add_argument("--retain", type=float, default=300.0)
    parser.add_argument("--pause-after", type=int, default=-1)
    parser.add_argument("--pause-s", type=float, default=0.0)
    args = parser.parse_args()
    store = RedisStore(
        args.url, checkpoint_every_s=args.checkpoint_every, retain_s=args.retain, block_s=0.05
    )
    router = build_router(store=store)
    learned = []
    indices = [int(i) for i in args.indices.split(",") if i]
    for n, i in enumerate(indices):
        if n == args.pause_after:
            print("paused", flush=True)
            time.sleep(args.pause_s)
        decision = router.route(text(i), prompt_tokens=PROMPT_TOKENS)
        quality, tokens = outcome(i, decision.model)
        router.feedback(decision.id, quality=quality, output_tokens=tokens)
        learned.append([i, decision.model])
        # The parent reads this line: observation i is acknowledged.
        print(f"acked {i} {decision.model}", flush=True)
    deadline = time.monotonic() + SYNC_TIMEOUT_S
    while time.monotonic() < deadline:
        seen = sum(router.policy.inspect(m)["observations"] for m in router.models)
        if seen >= args.total and not store.stats.buffered:
            break
        time.sleep(0.01)
    else:
        sys.exit(f"only {store.stats} of {args.total} observations arrived")
    result = {
        "learned": learned,
        "arms": arms(router),
        "decisions": decisions(router, range(1000, 1020)),
        "recoveries": store.stats.recoveries,
    }
    args.out.write_text(json.dumps(result))
    store.close()


if __name__ == "__main__":
    main()
