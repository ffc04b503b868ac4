"""`mixllm serve` replicas sharing their learning through a real redis-server: feedback given
to one gateway teaches the other, and a Redis that cannot be reached is refused at start."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from fake_upstream import FakeUpstream, ServerThread
from gateway_harness import pool_model, running_gateway, tiny_router, wait_until
from mixllm.config import ServeConfig
from mixllm.serving import create_app, gateway_router
from mixllm.store import RedisStore
from redis_server import RedisServer, free_port, require_redis_server

_SKIP = require_redis_server()
pytestmark = pytest.mark.skipif(bool(_SKIP), reason=_SKIP)

USER = [{"role": "user", "content": "Which is heavier, a kilogram of feathers or of iron?"}]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as running:
        yield running


def test_feedback_given_to_one_gateway_teaches_the_other(server: RedisServer) -> None:
    with ExitStack() as stack:
        a = stack.enter_context(running_gateway())
        b = stack.enter_context(running_gateway())
        for harness in (a, b):
            harness.router.attach_store(RedisStore(server.url, block_s=0.05))
            stack.callback(harness.router.store.close)  # type: ignore[union-attr]
        reply = httpx.post(
            a.url + "/v1/chat/completions", json={"model": "mixllm", "messages": USER}, timeout=30
        )
        assert reply.status_code == 200
        model = reply.headers["x-mixllm-model"]
        decision_id = reply.headers["x-mixllm-decision-id"]
        before = b.router.policy.inspect(model)["observations"]
        learned = httpx.post(
            a.url + "/v1/feedback", json={"decision_id": decision_id, "quality": 0.9}
        )
        assert learned.json()["learned"] is True
        assert wait_until(lambda: b.router.policy.inspect(model)["observations"] == before + 1)
        got, want = b.router.policy.inspect(model), a.router.policy.inspect(model)
        assert (got["b_quality"] == want["b_quality"]).all()


def test_serve_refuses_a_redis_it_cannot_reach(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text(
        '[[models]]\nname = "m"\nprice_in = 1.0\nprice_out = 1.0\nttft_s = 0.1\n'
        'tokens_per_s = 10.0\nconcurrency = 1\nbase_url = "http://127.0.0.1:9/v1"\n',
        encoding="utf-8",
    )
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    result = subprocess.run(
        [sys.executable, "-m", "mixllm", "serve", "--config", str(config), "--redis", nobody],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert f"cannot reach Redis at {nobody}" in result.stderr


def test_the_gateway_reports_the_store_in_its_metrics(server: RedisServer) -> None:
    fake = FakeUpstream()
    with ServerThread(fake.app) as upstream:
        models = tuple(pool_model(name, upstream.url) for name in ("small", "large"))
        router = tiny_router(models)
        router.attach_store(RedisStore(server.url, block_s=0.05))
        app = create_app(router, settings=ServeConfig())
        with ServerThread(app, grace_s=2) as gateway:
            reply = httpx.post(
                gateway.url + "/v1/chat/completions",
                json={"model": "mixllm", "messages": USER},
                timeout=30,
            )
            decision_id = reply.headers["x-mixllm-decision-id"]
            httpx.post(
                gateway.url + "/v1/feedback", json={"decision_id": decision_id, "quality": 1}
            )
            metrics = httpx.get(gateway.url + "/metrics").text
    assert "mixllm_store_published_total 1.0" in metrics
    assert "mixllm_store_connected 1.0" in metrics
    assert "mixllm_store_dropped_total 0.0" in metrics
    router.store.close()  # type: ignore[union-attr]


def _serve_config(path: Path, price: float) -> Path:
    path.write_text(
        "".join(
            f'[[models]]\nname = "{name}"\nprice_in = {price}\nprice_out = {price}\n'
            "ttft_s = 0.4\ntokens_per_s = 60.0\nconcurrency = 8\n"
            'base_url = "http://127.0.0.1:9/v1"\n'
            for name in ("claude-instant-v1", "claude-v1")
        ),
        encoding="utf-8",
    )
    return path


def test_a_gateway_attaching_to_a_checkpoint_keeps_its_configured_prices(
    server: RedisServer, tmp_path: Path
) -> None:
    first, _ = gateway_router(_serve_config(tmp_path / "first.toml", 1.0))
    first.attach_store(RedisStore(server.url, block_s=0.05))
    # A checkpoint of the first replica's state, past the start of the stream.
    first.update_model(first.config.models[0])
    assert first.store is not None and first.store.checkpoint()
    second, _ = gateway_router(_serve_config(tmp_path / "second.toml", 9.0))
    second.attach_store(RedisStore(server.url, block_s=0.05))
    for router in (second, first):
        assert router.store is not None and router.store.sync(10.0)
        for name in router.models:
            assert router.policy.inspect(name)["profile"]["price_in"] == 9.0
            assert next(m for m in router.config.models if m.name == name).price_in == 9.0
    for router in (first, second):
        router.store.close()  # type: ignore[union-attr]
