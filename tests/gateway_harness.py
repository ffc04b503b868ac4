"""A gateway in front of `FakeUpstream`, with a Router on a tiny deterministic embedder, for the
tests where the real sentence encoder is not the point."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

import light_router
from fake_upstream import FakeUpstream, ServerThread
from mixllm.config import ModelConfig, RouterConfig, ServeConfig
from mixllm.routing.router import Router
from mixllm.serving import Gateway, create_app
from mixllm.understanding.projection import LinearProjection

WIDTH = 8
DIM = 4


class HashEmbedder(light_router.HashEmbedder):
    """The tests' stand-in encoder at the gateway routers' width."""

    def __init__(self) -> None:
        super().__init__(WIDTH, unit=False)


def pool_model(name: str, url: str, **changes: Any) -> ModelConfig:
    """A cheap, fast model served at ``url``: the fake upstream's speed, so latency ratios
    start at about 1."""
    settings: dict[str, Any] = {
        "price_in": 1.0,
        "price_out": 1.0,
        "ttft_s": 0.01,
        "tokens_per_s": 1000.0,
        "concurrency": 4,
        "prior_output_tokens": 5.0,
        "base_url": f"{url}/v1",
        "upstream_model": f"{name}-upstream",
    }
    settings.update(changes)
    return ModelConfig(name=name, **settings)


def tiny_router(models: tuple[ModelConfig, ...], **knobs: Any) -> Router:
    config = RouterConfig(models=models, dim=DIM, **knobs)
    projection = LinearProjection(np.eye(DIM, WIDTH), np.zeros(WIDTH))
    return Router(config, embedder=HashEmbedder(), projection=projection)  # type: ignore[arg-type]


@dataclass
class Harness:
    fake: FakeUpstream
    router: Router
    gateway: Gateway
    url: str

    def upstream_name(self, model: str) -> str:
        return f"{model}-upstream"


@contextmanager
def running_gateway(
    names: tuple[str, ...] = ("small", "large"),
    *,
    settings: ServeConfig | None = None,
    model_changes: dict[str, dict[str, Any]] | None = None,
    state_dir: Any = None,
    **knobs: Any,
) -> Iterator[Harness]:
    """A fake upstream and a gateway over ``names``, both on loopback, stopped on exit."""
    fake = FakeUpstream()
    with ServerThread(fake.app) as upstream:
        models = tuple(
            pool_model(n, upstream.url, **(model_changes or {}).get(n, {})) for n in names
        )
        router = tiny_router(models, **knobs)
        settings = settings or ServeConfig()
        app = create_app(router, settings=settings, state_dir=state_dir)
        with ServerThread(app, grace_s=2) as gateway:
            yield Harness(fake, router, app.state.gateway, gateway.url)


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Polls ``condition`` until it holds or ``timeout_s`` passes; returns the last result."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def fast(settings: ServeConfig, **changes: Any) -> ServeConfig:
    return replace(settings, **changes)
