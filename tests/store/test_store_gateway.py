"""`mixllm serve` replicas sharing their learning through a real redis-server: feedback given
to one gateway teaches the other, a model added, moved or removed on one is served as it is now
by the other, a Redis slow to answer holds up feedback but not the gateway, and a Redis that
cannot be reached is refused at start."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from fake_upstream import FakeUpstream, ServerThread
from gateway_harness import Harness, pool_model, running_gateway, tiny_router, wait_until
from mixllm.config import ServeConfig
from mixllm.serving import create_app, gateway_router
from redis_server import RedisServer, free_port, require_redis_server
from store_replica import replica_store

_SKIP = require_redis_server()
pytestmark = pytest.mark.skipif(bool(_SKIP), reason=_SKIP)

USER = [{"role": "user", "content": "Which is heavier, a kilogram of feathers or of iron?"}]


def test_feedback_given_to_one_gateway_teaches_the_other(server: RedisServer) -> None:
    with ExitStack() as stack:
        a = stack.enter_context(running_gateway())
        b = stack.enter_context(running_gateway())
        for harness in (a, b):
            harness.router.attach_store(replica_store(server.url))
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


def _replicas(
    stack: ExitStack, server: RedisServer, names: tuple[str, ...], **options: Any
) -> tuple[Harness, Harness]:
    """Two gateways over the same pool, sharing it through ``server``."""
    replicas = []
    for _ in range(2):
        harness = stack.enter_context(running_gateway(names, **options))
        harness.router.attach_store(replica_store(server.url))
        stack.callback(harness.router.store.close)  # type: ignore[union-attr]
        replicas.append(harness)
    return replicas[0], replicas[1]


def _upstream_url(harness: Harness) -> str:
    """Where ``harness``'s fake upstream listens (without the ``/v1``)."""
    base_url = harness.router.config.models[0].base_url
    assert base_url is not None
    return base_url.removesuffix("/v1")


def _ask(harness: Harness, model: str = "mixllm") -> httpx.Response:
    return httpx.post(
        harness.url + "/v1/chat/completions",
        json={"model": model, "messages": USER},
        timeout=30,
    )


def test_a_model_added_updated_and_removed_on_another_replica_is_served(
    server: RedisServer,
) -> None:
    with ExitStack() as stack:
        a, b = _replicas(stack, server, ("small", "large"))
        b.router.add_model(pool_model("extra", _upstream_url(a)))
        assert wait_until(lambda: "extra" in a.router.models)

        listed = httpx.get(a.url + "/v1/models")
        assert listed.status_code == 200
        rows = {row["id"]: row for row in listed.json()["data"]}
        assert rows["extra"]["mixllm"]["upstream"] == _upstream_url(a) + "/v1"
        reply = _ask(a, "extra")
        assert reply.status_code == 200
        assert reply.json()["model"] == "extra"
        assert a.fake.requests("extra-upstream") == 1

        # Moved to another upstream on the other replica: this one follows.
        b.router.update_model(pool_model("extra", _upstream_url(b), upstream_model="moved"))
        assert wait_until(lambda: a.router.config.models[-1].base_url == _upstream_url(b) + "/v1")
        assert _ask(a, "extra").status_code == 200
        assert b.fake.requests("moved") == 1
        assert a.fake.requests("extra-upstream") == 1

        b.router.remove_model("extra")
        assert wait_until(lambda: "extra" not in a.router.models)
        assert "extra" not in {row["id"] for row in httpx.get(a.url + "/v1/models").json()["data"]}
        assert _ask(a, "extra").status_code == 404
        assert _ask(a).status_code == 200


def test_a_fallback_removed_on_another_replica_meanwhile_is_passed_over(
    server: RedisServer,
) -> None:
    slow_to_fail = ServeConfig(read_timeout_s=2.0)
    with ExitStack() as stack:
        a, b = _replicas(stack, server, ("small", "large", "spare"), settings=slow_to_fail)
        # Ties go to the first model: "small" is chosen, hangs, and its fallbacks come next.
        a.fake.behaviour("small-upstream").hang = True
        replies: list[httpx.Response] = []
        asking = threading.Thread(target=lambda: replies.append(_ask(a)))
        asking.start()
        try:
            assert wait_until(lambda: a.fake.requests("small-upstream") == 1)
            b.router.remove_model("large")
            assert wait_until(lambda: "large" not in a.router.models)
        finally:
            asking.join(timeout=30)
        assert not asking.is_alive()
        (reply,) = replies
        assert reply.status_code == 200
        assert reply.json()["model"] == "spare"
        assert a.fake.requests("large-upstream") == 0
        assert a.router.pending() == 1


def _blocked_writes(client: redis.Redis) -> int:
    """Calls to Redis held up by ``CLIENT PAUSE ... WRITE``."""
    rows: Any = client.client_list()
    return sum(1 for row in rows if "b" in row["flags"] and row["cmd"] in ("set", "xadd"))


def test_feedback_and_scrapes_waiting_on_redis_leave_the_gateway_answering(
    server: RedisServer,
) -> None:
    # Redis that holds every write for a while (a slow or failing-over server): feedback, which
    # claims its decision and appends to the stream, waits on it, and so does a scrape of the
    # store's counters; other requests must not.
    admin = redis.Redis.from_url(server.url)
    results: dict[str, httpx.Response] = {}

    def call(url: str, name: str, method: str, path: str, **kwargs: Any) -> threading.Thread:
        def run() -> None:
            results[name] = httpx.request(method, url + path, timeout=30, **kwargs)

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    with ExitStack() as stack:
        upstream = stack.enter_context(ServerThread(FakeUpstream().app))
        router = tiny_router(tuple(pool_model(name, upstream.url) for name in ("small", "large")))
        store = replica_store(server.url, timeout_s=5.0)
        router.attach_store(store)
        stack.callback(store.close)
        url = stack.enter_context(
            ServerThread(create_app(router, settings=ServeConfig()), grace_s=2)
        ).url
        reply = httpx.post(
            url + "/v1/chat/completions", json={"model": "mixllm", "messages": USER}, timeout=30
        )
        decision_id = reply.headers["x-mixllm-decision-id"]
        # The answer's length, appended in the background, is in the stream before the pause.
        assert wait_until(lambda: store.stats.published == 1 and not store.stats.buffered, 5)

        admin.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
        stack.callback(admin.execute_command, "CLIENT", "UNPAUSE")
        feedback = call(
            url, "feedback", "POST", "/v1/feedback", json={"decision_id": decision_id, "quality": 1}
        )
        # The queue's refresh is one held write; the feedback's claim is the other.
        assert wait_until(lambda: _blocked_writes(admin) >= 2, 5)
        scrape = call(url, "metrics", "GET", "/metrics")
        scrape.join(timeout=0.2)  # time for the scrape to reach the gateway
        health = httpx.get(url + "/healthz", timeout=30)
        waiting = feedback.is_alive(), scrape.is_alive()
        admin.execute_command("CLIENT", "UNPAUSE")
        feedback.join(timeout=30)
        scrape.join(timeout=30)
    assert health.status_code == 200
    assert waiting == (True, True)
    assert results["feedback"].json()["learned"] is True
    # The answer's length and the feedback.
    assert "mixllm_store_published_total 2.0" in results["metrics"].text


def test_feedback_while_redis_is_unreachable_does_not_wait_on_a_claim(
    server: RedisServer,
) -> None:
    # Writes held far longer than the store waits for them: the first feedback finds Redis
    # unreachable; the next ones must be taken locally without trying Redis again.
    admin = redis.Redis.from_url(server.url)
    with ExitStack() as stack:
        upstream = stack.enter_context(ServerThread(FakeUpstream().app))
        router = tiny_router(tuple(pool_model(name, upstream.url) for name in ("small", "large")))
        # No queue refreshes during the test: every held SET is then a claim.
        store = replica_store(server.url, timeout_s=0.5, queue_refresh_s=3600.0)
        router.attach_store(store)
        stack.callback(store.close)
        url = stack.enter_context(
            ServerThread(create_app(router, settings=ServeConfig()), grace_s=2)
        ).url
        first, second = (
            httpx.post(
                url + "/v1/chat/completions",
                json={"model": "mixllm", "messages": USER},
                timeout=30,
            ).headers["x-mixllm-decision-id"]
            for _ in range(2)
        )
        admin.execute_command("CLIENT", "PAUSE", 20_000, "WRITE")
        stack.callback(admin.execute_command, "CLIENT", "UNPAUSE")
        rated = httpx.post(
            url + "/v1/feedback", json={"decision_id": first, "quality": 1}, timeout=30
        )
        assert rated.json()["learned"] is True
        assert not store.stats.connected

        replies: list[httpx.Response] = []
        feedback = threading.Thread(
            target=lambda: replies.append(
                httpx.post(
                    url + "/v1/feedback", json={"decision_id": second, "quality": 1}, timeout=30
                )
            )
        )
        feedback.start()
        claims_sent = 0
        deadline = time.monotonic() + 10
        while feedback.is_alive() and time.monotonic() < deadline:
            claims_sent = max(claims_sent, _held_claims(admin))
            time.sleep(0.01)
        feedback.join(timeout=30)
    assert claims_sent == 0
    assert replies[0].json()["learned"] is True


def _held_claims(client: redis.Redis) -> int:
    rows: Any = client.client_list()
    return sum(1 for row in rows if "b" in row["flags"] and row["cmd"] == "set")


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
        router.attach_store(replica_store(server.url))
        app = create_app(router, settings=ServeConfig())
        with ServerThread(app, grace_s=2) as gateway:
            reply = httpx.post(
                gateway.url + "/v1/chat/completions",
                json={"model": "mixllm", "messages": USER},
                timeout=30,
            )
            decision_id = reply.headers["x-mixllm-decision-id"]
            store = router.store
            assert store is not None
            # The answer's length, appended in the background, then the feedback.
            assert wait_until(lambda: store.stats.published == 1, 5)
            httpx.post(
                gateway.url + "/v1/feedback", json={"decision_id": decision_id, "quality": 1}
            )
            metrics = httpx.get(gateway.url + "/metrics").text
    assert "mixllm_store_published_total 2.0" in metrics
    assert "mixllm_store_connected 1.0" in metrics
    assert "mixllm_store_dropped_total 0.0" in metrics
    assert "mixllm_store_recoveries_total 0.0" in metrics
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
    first.attach_store(replica_store(server.url))
    # A checkpoint of the first replica's state, past the start of the stream.
    first.update_model(first.config.models[0])
    assert first.store is not None and first.store.checkpoint()
    second, _ = gateway_router(_serve_config(tmp_path / "second.toml", 9.0))
    second.attach_store(replica_store(server.url))
    for router in (second, first):
        assert router.store is not None and router.store.sync(10.0)
        for name in router.models:
            assert router.policy.inspect(name)["profile"]["price_in"] == 9.0
            assert next(m for m in router.config.models if m.name == name).price_in == 9.0
    for router in (first, second):
        router.store.close()  # type: ignore[union-attr]
