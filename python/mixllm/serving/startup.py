"""Starting the gateway: the Router it routes with, and the server it runs in.

The pool is the configuration file's. The learned state comes from the state folder when it
holds one (a restart carries on where the last snapshot left off), else from the router shipped
with the package; a model of the file that the state does not know starts with a fresh arm at
its priors (``prior_quality`` decides how eagerly it is tried), and a model the file no longer
lists leaves the pool.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from pathlib import Path

from mixllm.config import EmbedderConfig, ServeConfig, load_config, load_serve_config
from mixllm.errors import ConfigError
from mixllm.routing.router import Router
from mixllm.serving.upstream import Upstream, upstreams_of

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = ["gateway_router", "serve"]

log = logging.getLogger("mixllm.serving")


# What decides the vector space a learned projection works in: a different encoder (or
# weights) gives vectors the projection was never fitted on. The rest (int8 or float32 of the
# same model, threads, cache, window) only runs it differently.
_ENCODER_IDENTITY = ("model_dir", "encoder", "hf_repo")


def _check_same_encoder(
    learned: EmbedderConfig, configured: EmbedderConfig, config_path: str | Path
) -> None:
    """Refuses an ``[embedder]`` table naming another encoder than the learned state's."""
    for key in _ENCODER_IDENTITY:
        if getattr(learned, key) != getattr(configured, key):
            raise ConfigError(
                f"{config_path}: [embedder] {key} is {getattr(configured, key)!r} but the learned "
                f"state was fitted with {getattr(learned, key)!r}: its projection only works on "
                "that encoder's vectors (train a state with this encoder: mixllm train --config "
                "FILE --out DIR, then serve it with --state DIR)"
            )


def gateway_router(
    config_path: str | Path, state_dir: str | Path | None = None
) -> tuple[Router, ServeConfig]:
    """The Router and settings `mixllm serve --config FILE [--state DIR]` runs with."""
    config = load_config(config_path)
    settings = load_serve_config(config_path)
    upstreams_of(config.models)  # every model needs an upstream: refused before anything loads
    saved = state_dir is not None and (Path(state_dir) / "CURRENT").is_file()
    router = Router.load(state_dir) if saved and state_dir is not None else Router.default()
    log.info("learned state from %s", state_dir if saved else "the router shipped with mixllm")
    raw = tomllib.loads(Path(config_path).read_text(encoding="utf-8"))
    if "embedder" in raw:
        _check_same_encoder(router.config.embedder, config.embedder, config_path)
        loaded = router
        router = Router(
            replace(router.config, embedder=config.embedder),
            projection=router.projection,
            policy=router.policy,
        )
        router.take_refit_inputs(loaded)
    wanted = {m.name for m in config.models}
    for model in config.models:
        if model.name in router.models:
            router.update_model(model)
        else:
            log.info("%s: not in the learned state, starts at its priors", model.name)
            router.add_model(model)
    for name in [m for m in router.models if m not in wanted]:
        router.remove_model(name)
    if "willingness_to_pay" in raw.get("router", {}):
        router = router.with_config(willingness_to_pay=config.willingness_to_pay)
    return router, settings


def serve(
    router: Router,
    settings: ServeConfig,
    *,
    upstreams: dict[str, Upstream] | None = None,
    state_dir: str | Path | None = None,
) -> None:
    """Runs the gateway until SIGINT or SIGTERM; then requests in flight get
    ``settings.drain_timeout_s`` to finish and the state is saved (with ``state_dir``)."""
    import uvicorn
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    from mixllm.serving.app import create_app
    from mixllm.serving.server import DrainingServer

    app = create_app(router, settings=settings, upstreams=upstreams, state_dir=state_dir)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        access_log=False,
        log_level="info",
    )
    # One BLAS thread: the projections it computes are small, and on a machine with few cores
    # its spinning helper threads take the cores the event loop and the encoder need.
    with threadpool_limits(limits=1, user_api="blas"):
        DrainingServer(config, app.state.gateway).run()
