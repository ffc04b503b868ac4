"""Background refits in the gateway: feedback through ``/v1/feedback`` triggers a refit in a
worker thread, whose new state routes afterwards while requests keep being answered."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import httpx
import pytest

from fake_upstream import ServerThread
from gateway_harness import Harness, running_gateway, tiny_router, wait_until
from mixllm.config import ServeConfig, load_serve_config
from mixllm.errors import ConfigError
from mixllm.routing.background_refit import BackgroundRefit
from mixllm.serving import Gateway, create_app
from refit_data import dataset


def chat(harness: Harness, text: str) -> httpx.Response:
    body = {"model": "mixllm", "messages": [{"role": "user", "content": text}]}
    return httpx.post(harness.url + "/v1/chat/completions", json=body, timeout=30)


def refits(harness: Harness, outcome: str = "ok", trigger: str = "scheduled") -> float:
    text = httpx.get(harness.url + "/metrics").text
    for line in text.splitlines():
        if line.startswith(f'mixllm_refits_total{{outcome="{outcome}",trigger="{trigger}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_feedback_triggers_a_refit_whose_state_routes_afterwards() -> None:
    settings = ServeConfig(refit_every_feedbacks=4)
    with running_gateway(settings=settings) as harness:
        policy, projection = harness.router.policy, harness.router.projection
        answered: list[int] = []
        stop = threading.Event()

        def keep_asking() -> None:
            i = 0
            while not stop.is_set():
                answered.append(chat(harness, f"question {i} while refitting").status_code)
                i += 1

        for i in range(3):
            decision = chat(harness, f"question {i}").headers["x-mixllm-decision-id"]
            httpx.post(harness.url + "/v1/feedback", json={"decision_id": decision, "quality": 1})
        assert refits(harness) == 0  # three of four: not due yet
        asker = threading.Thread(target=keep_asking)
        asker.start()
        try:
            decision = chat(harness, "question 3").headers["x-mixllm-decision-id"]
            learned = httpx.post(
                harness.url + "/v1/feedback", json={"decision_id": decision, "quality": 0.5}
            )
            assert learned.json()["learned"] is True
            assert wait_until(lambda: refits(harness) == 1, timeout_s=60)
        finally:
            stop.set()
            asker.join()
        assert answered and set(answered) == {200}
        # The refit swapped in a new projection and new arms, fitted on the four feedbacks.
        assert harness.router.policy is not policy
        assert harness.router.projection is not projection
        observed = {m: harness.router.policy.inspect(m)["observations"] for m in ("small", "large")}
        assert sum(observed.values()) == 4
        # The new state routes: a decision made now is learned by the new arms.
        after = chat(harness, "after the refit")
        model = after.json()["model"]
        httpx.post(
            harness.url + "/v1/feedback",
            json={"decision_id": after.headers["x-mixllm-decision-id"], "quality": 1},
        )
        assert harness.router.policy.inspect(model)["observations"] == observed[model] + 1
        assert refits(harness, "failed") == 0


def test_a_refit_every_few_seconds_waits_for_feedback() -> None:
    settings = ServeConfig(refit_every_s=0.2)
    with running_gateway(settings=settings) as harness:
        policy = harness.router.policy
        assert not wait_until(lambda: refits(harness) > 0, timeout_s=0.6)
        for i in range(2):
            decision = chat(harness, f"question {i}").headers["x-mixllm-decision-id"]
            httpx.post(harness.url + "/v1/feedback", json={"decision_id": decision, "quality": 1})
        assert wait_until(lambda: refits(harness) == 1, timeout_s=60)
        assert harness.router.policy is not policy


def test_the_router_s_own_refits_are_counted_apart() -> None:
    with running_gateway(refit_growth=1.0) as harness:
        rows = dataset(8)
        harness.router.fit(replace(rows, models=["small", "large"]))
        for i in range(8):
            decision = chat(harness, f"question {i}").headers["x-mixllm-decision-id"]
            httpx.post(harness.url + "/v1/feedback", json={"decision_id": decision, "quality": 1})
        assert harness.router.wait_for_refit(60)
        assert harness.router.automatic_refits == 1
        assert refits(harness, trigger="automatic") == 1
        assert refits(harness, trigger="scheduled") == 0


def counted(gateway: Gateway, trigger: str) -> float:
    value = gateway.metrics.registry.get_sample_value(
        "mixllm_refits_total", {"outcome": "ok", "trigger": trigger}
    )
    return value or 0.0


def test_a_second_gateway_on_the_same_router_counts_its_refits_alone() -> None:
    with running_gateway(refit_growth=1.0) as first:
        router = first.router
    second = create_app(router, settings=ServeConfig())
    with ServerThread(second, grace_s=2):
        router.fit(replace(dataset(8), models=["small", "large"]))
        for i in range(8):
            decision = router.route(f"question {i}")
            router.feedback(decision.id, quality=1.0)
        assert router.wait_for_refit(60)
        assert router.automatic_refits == 1
        assert counted(second.state.gateway, "automatic") == 1
    # The first gateway, shut down, no longer hears the router's refits; nor, now, the second.
    assert counted(first.gateway, "automatic") == 0
    assert router._refit_listeners == []


def test_the_refit_listener_lives_as_long_as_each_run_of_the_gateway() -> None:
    with running_gateway() as harness:
        router = harness.router
    gateway = create_app(router, settings=ServeConfig()).state.gateway

    async def run_twice() -> None:
        for _ in range(2):  # a host may run the lifespan again after it ended
            async with gateway.lifespan():
                assert router._refit_listeners == [gateway._refit_listener]
            assert router._refit_listeners == []

    asyncio.run(run_twice())


def test_refits_are_off_by_default_and_bad_settings_are_refused() -> None:
    assert ServeConfig().refit_every_feedbacks is None and ServeConfig().refit_every_s is None
    with pytest.raises(ConfigError, match=r"serve.refit_every_feedbacks"):
        ServeConfig(refit_every_feedbacks=0)
    with pytest.raises(ConfigError, match=r"serve.refit_every_s"):
        ServeConfig(refit_every_s=-1.0)
    router = tiny_router(())
    with pytest.raises(ConfigError, match="every_feedbacks, every_s or both"):
        BackgroundRefit(router)
    with running_gateway() as harness:
        assert harness.gateway.refitter is None
    # A store's replicas cannot follow a refit.
    router._store = object()  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="refit without a store"):
        BackgroundRefit(router, every_s=1.0)


def test_the_serve_table_sets_the_refits(tmp_path) -> None:
    path = tmp_path / "mixllm.toml"
    path.write_text("[serve]\nrefit_every_feedbacks = 500\nrefit_every_s = 600.0\n")
    settings = load_serve_config(path)
    assert (settings.refit_every_feedbacks, settings.refit_every_s) == (500, 600.0)
    path.write_text("[serve]\nrefit_every_feedbacks = 1.5\n")
    with pytest.raises(ConfigError, match=r"refit_every_feedbacks must be an integer"):
        load_serve_config(path)
