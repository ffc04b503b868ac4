"""The gateway's shutdown: one deadline, ``drain_timeout_s`` from the moment the server begins
to stop, however many waits it is spread over (the server's own, then the lifespan's)."""

from __future__ import annotations

import asyncio

from gateway_harness import pool_model, tiny_router
from mixllm.config import ServeConfig
from mixllm.serving import create_app

# Longer than any test may run: a drain that waits for it has not kept to the deadline.
AN_HOUR_S = 3600.0


def test_a_drain_after_the_shutdown_deadline_waits_no_longer() -> None:
    async def shut_down() -> tuple[bool, bool]:
        router = tiny_router((pool_model("small", "http://127.0.0.1:9"),))
        app = create_app(router, settings=ServeConfig(drain_timeout_s=0.1))
        gateway = app.state.gateway
        async with gateway.lifespan(app):
            # A request that never ends, as one whose upstream hangs.
            gateway._request_started()
            gateway.stopping()
            # The server's own wait takes the whole drain.
            await asyncio.sleep(0.2)
            # The timeout detects a deadlock: without the shared deadline this waits an hour.
            drained = await asyncio.wait_for(gateway.drain(AN_HOUR_S), 30)
            gateway._request_ended()
            finished = await asyncio.wait_for(gateway.drain(AN_HOUR_S), 30)
        return drained, finished

    assert asyncio.run(shut_down()) == (False, True)


def test_a_drain_before_any_shutdown_waits_for_the_requests_in_flight() -> None:
    async def answer_then_drain() -> bool:
        router = tiny_router((pool_model("small", "http://127.0.0.1:9"),))
        app = create_app(router, settings=ServeConfig(drain_timeout_s=0.1))
        gateway = app.state.gateway
        async with gateway.lifespan(app):
            gateway._request_started()
            asyncio.get_running_loop().call_later(0.2, gateway._request_ended)
            # Beyond drain_timeout_s: the deadline only starts with the shutdown.
            return await asyncio.wait_for(gateway.drain(AN_HOUR_S), 30)

    assert asyncio.run(answer_then_drain()) is True
