"""The gateway mounted in another Starlette app, over real HTTP on loopback: the host runs the
gateway's lifespan (as its own, or inside its own) and the gateway answers, snapshots and
drains as it does on its own; without the lifespan a chat completion is a 503 saying how to
run it, and nothing is routed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from fake_upstream import FakeUpstream, ServerThread
from gateway_harness import HashEmbedder, pool_model, tiny_router, wait_until
from mixllm.config import ServeConfig
from mixllm.routing.router import Router
from mixllm.serving import Gateway, create_app

USER = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass
class Mounted:
    fake: FakeUpstream
    router: Router
    gateway: Gateway
    host: ServerThread

    @property
    def base_url(self) -> str:
        return self.host.url + "/router/v1"

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key="unused", max_retries=0)


async def _ping(_request: Request) -> Response:
    return PlainTextResponse("pong")


@contextmanager
def mounted(
    how: str, *, settings: ServeConfig | None = None, state_dir: Path | None = None
) -> Iterator[Mounted]:
    """A host app on loopback with the gateway under ``/router``. ``how`` runs the gateway's
    lifespan as the host's own (``"as_lifespan"``), inside the host's own (``"inside"``), or
    not at all (``"none"``)."""
    fake = FakeUpstream()
    with ServerThread(fake.app) as upstream:
        router = tiny_router((pool_model("small", upstream.url), pool_model("large", upstream.url)))
        app = create_app(router, settings=settings, state_dir=state_dir)
        gateway: Gateway = app.state.gateway

        @asynccontextmanager
        async def hosts_own(host: Starlette) -> AsyncIterator[None]:
            async with gateway.lifespan(host):
                yield

        lifespans: dict[str, Any] = {"as_lifespan": gateway.lifespan, "inside": hosts_own}
        host = Starlette(
            routes=[Route("/ping", _ping), Mount("/router", app=app)],
            lifespan=lifespans.get(how),
        )
        with ServerThread(host, grace_s=2) as server:
            yield Mounted(fake, router, gateway, server)


@pytest.mark.parametrize("how", ["as_lifespan", "inside"])
def test_a_mounted_gateway_answers_and_completes_its_decision(how: str) -> None:
    with mounted(how) as m:
        before = {row["name"]: row for row in m.router.describe_models()}
        raw = m.client().chat.completions.with_raw_response.create(model="mixllm", messages=USER)
        assert raw.http_response.status_code == 200
        completion = raw.parse()
        model = completion.model
        assert model in m.router.models
        assert completion.choices[0].message.content == "tok " * 5
        after = {row["name"]: row for row in m.router.describe_models()}
        # Completed: out of the queue, its latency learned, its decision awaiting feedback.
        assert after[model]["in_flight"] == 0
        assert after[model]["mean_service_s"] != before[model]["mean_service_s"]
        feedback = httpx.post(
            m.base_url + "/feedback",
            json={"decision_id": raw.headers["x-mixllm-decision-id"], "quality": 1.0},
        )
        assert feedback.json()["learned"] is True
        streamed = m.client().chat.completions.create(model="mixllm", messages=USER, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        assert httpx.get(m.host.url + "/router/healthz").json()["status"] == "ok"
        assert httpx.get(m.host.url + "/ping").text == "pong"


def test_without_its_lifespan_a_mounted_gateway_answers_503_saying_how() -> None:
    with mounted("none") as m:
        response = httpx.post(
            m.base_url + "/chat/completions", json={"model": "mixllm", "messages": USER}
        )
        assert response.status_code == 503
        error = response.json()["error"]
        assert "lifespan" in error["message"] and error["code"] == "gateway_not_running"
        with pytest.raises(openai.InternalServerError, match="lifespan"):
            m.client().chat.completions.create(model="mixllm", messages=USER, stream=True)
        # Refused before routing: nothing decided, nothing sent.
        assert m.router.pending() == 0
        assert all(m.router.policy.in_flight(name) == 0 for name in m.router.models)
        assert m.fake.requests("small-upstream") == m.fake.requests("large-upstream") == 0
        health = httpx.get(m.host.url + "/router/healthz")
        assert health.status_code == 503 and health.json()["status"] == "not_running"
        assert m.gateway.active == 0


def test_the_hosts_lifespan_saves_snapshots_periodically(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with mounted("inside", settings=ServeConfig(snapshot_every_s=0.2), state_dir=state) as m:
        assert wait_until(lambda: (state / "CURRENT").is_file(), 5)
        first = (state / "CURRENT").read_text()
        m.client().chat.completions.create(model="small", messages=USER)
        assert wait_until(lambda: (state / "CURRENT").read_text() != first, 5)


def test_the_hosts_lifespan_drains_and_saves_at_shutdown(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # Periodic saves far apart: the one checked below is the shutdown's.
    settings = ServeConfig(snapshot_every_s=3600)
    answers: list[int] = []
    with mounted("as_lifespan", settings=settings, state_dir=state) as m:
        m.fake.behaviour("small-upstream").ttft_s = 0.5

        def call() -> None:
            response = httpx.post(
                m.base_url + "/chat/completions",
                json={"model": "small", "messages": USER},
                timeout=30,
            )
            answers.append(response.status_code)

        thread = threading.Thread(target=call)
        thread.start()
        assert wait_until(lambda: m.router.policy.in_flight("small") == 1, 5)
        assert not (state / "CURRENT").exists()
    thread.join(timeout=30)
    # The request in flight at shutdown was answered, then what it taught was saved.
    assert answers == [200]
    assert not m.gateway.running
    saved = Router.load(state, embedder=HashEmbedder())
    served = {row["name"]: row for row in m.router.describe_models()}
    assert served["small"]["mean_service_s"] > 0.4
    assert {row["name"]: row for row in saved.describe_models()}["small"]["mean_service_s"] == (
        served["small"]["mean_service_s"]
    )


def test_the_lifespan_runs_once_at_a_time() -> None:
    with mounted("none") as m:

        async def twice() -> None:
            async with m.gateway.lifespan():
                assert m.gateway.running
                with pytest.raises(RuntimeError, match="already running"):
                    async with m.gateway.lifespan():
                        pass
            assert not m.gateway.running

        asyncio.run(twice())
