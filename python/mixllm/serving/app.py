"""The gateway as an ASGI app: OpenAI's chat completions in front of the pool's own endpoints.

Every request is routed (`Router.aroute`), counted in its model's queue while the upstream
answers, and completed with the latency measured and the tokens generated, so the router's
queues, service-time ratios and length heads learn from the traffic itself; quality comes
through ``POST /v1/feedback``. A model that fails is replaced by the next best of the same
decision, and one that keeps failing is cooled down for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from mixllm._core import InvalidInputError, NoModelWithinLimitsError, UnknownModelError
from mixllm.config import ModelConfig, ServeConfig
from mixllm.errors import ConfigError, DecisionNotFoundError, StateChangedError
from mixllm.routing.background_refit import BackgroundRefit
from mixllm.routing.router import RouteDecision, Router
from mixllm.serving.chat import (
    ROUTER_MODEL,
    ChatRequest,
    RequestError,
    parse_chat_request,
    parse_json_object,
)
from mixllm.serving.health import Cooldowns
from mixllm.serving.metrics import GatewayMetrics, ObservedSpeed
from mixllm.serving.upstream import (
    Stream,
    Upstream,
    UpstreamFailure,
    UpstreamRejection,
    open_session,
    open_stream,
    post_completion,
    upstream_of,
    upstreams_of,
)

__all__ = ["DECISION_HEADER", "Gateway", "create_app"]

DECISION_HEADER = "x-mixllm-decision-id"
MODEL_HEADER = "x-mixllm-model"
# The status of a request whose client left before its answer (nginx's; never seen by anyone).
_CLIENT_CLOSED_REQUEST = 499
_FEEDBACK_FIELDS = {"decision_id", "quality", "satisfied", "output_tokens"}
log = logging.getLogger("mixllm.serving")


def create_app(
    router: Router,
    *,
    settings: ServeConfig | None = None,
    upstreams: Mapping[str, Upstream] | None = None,
    state_dir: str | Path | None = None,
) -> Starlette:
    """The gateway for ``router``'s pool. ``upstreams`` defaults to the pool models' own
    ``base_url``, ``api_key_env`` and ``upstream_model``, read at each request, so a model
    added, moved or removed since (here, or on another replica sharing a store) is served as
    it is now; an upstream given in ``upstreams`` takes precedence for its model. With
    ``state_dir`` the router is saved there every ``settings.snapshot_every_s`` seconds and at
    shutdown, after requests in flight have had ``settings.drain_timeout_s`` to finish. The
    `Gateway` is ``app.state.gateway``.

    Run as an app of its own, the server runs the gateway's lifespan. Mounted in another
    Starlette app (``Mount("/router", app=app)``), the host runs it, as the host's own lifespan
    (``lifespan=app.state.gateway.lifespan``) or inside it (``async with
    gateway.lifespan(host):``); until it runs, chat completions answer 503 saying so."""
    gateway = Gateway(router, settings or ServeConfig(), upstreams, state_dir)
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", gateway.chat, methods=["POST"]),
            Route("/v1/models", gateway.list_models, methods=["GET"]),
            Route("/v1/feedback", gateway.feedback, methods=["POST"]),
            Route("/healthz", gateway.health, methods=["GET"]),
            Route("/metrics", gateway.prometheus, methods=["GET"]),
        ],
        lifespan=gateway.lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    app.state.gateway = gateway
    return app


async def _http_error(_request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer in OpenAI's error shape too."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "error"
    error = RequestError(status, str(detail), code="not_found" if status == 404 else None)
    return JSONResponse(error.body(), status_code=status)


async def _server_error(_request: Request, exc: Exception) -> Response:
    log.error("unexpected error", exc_info=exc)
    error = RequestError(500, "internal error in the gateway", kind="server_error")
    return JSONResponse(error.body(), status_code=500)


class Gateway:
    """The gateway's state and its endpoints."""

    def __init__(
        self,
        router: Router,
        settings: ServeConfig,
        upstreams: Mapping[str, Upstream] | None,
        state_dir: str | Path | None,
    ) -> None:
        self.router = router
        self.settings = settings
        self._given = dict(upstreams) if upstreams is not None else {}
        self._upstreams: tuple[tuple[ModelConfig, ...], dict[str, Upstream]] | None = None
        if upstreams is None:
            upstreams_of(router.config.models)  # refuses a pool model without a base_url
        missing = [m for m in router.models if m not in self.upstreams()]
        if missing:
            raise ConfigError(f"no upstream for {', '.join(missing)}")
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.metrics = GatewayMetrics()
        if router.store is not None:
            from mixllm.store.metrics import StoreCollector

            self.metrics.registry.register(StoreCollector(router.store))
        self.speed = ObservedSpeed(self.metrics)
        self.cooldowns = Cooldowns(
            failures=settings.cooldown_failures, cooldown_s=settings.cooldown_s
        )
        self.active = 0
        self._idle: asyncio.Event | None = None
        self._drain_deadline: float | None = None
        self._client: aiohttp.ClientSession | None = None
        self._save_lock = threading.Lock()
        self.refitter: BackgroundRefit | None = None
        if settings.refit_every_feedbacks is not None or settings.refit_every_s is not None:
            self.refitter = BackgroundRefit(
                router,
                every_feedbacks=settings.refit_every_feedbacks,
                every_s=settings.refit_every_s,
                on_refit=lambda outcome: self._count_refit(outcome, "scheduled"),
            )
        # Listening while the gateway runs (its lifespan): the router may outlive it, and serve
        # others.
        self._refit_listener = lambda outcome: self._count_refit(outcome, "automatic")

    def _count_refit(self, outcome: str, trigger: str) -> None:
        self.metrics.refits.labels(outcome=outcome, trigger=trigger).inc()

    # -- lifecycle ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette | None = None) -> AsyncIterator[None]:
        """The gateway running: the upstream session open, snapshots and refits scheduled;
        on exit, requests in flight drained, the last snapshot written, the session closed.
        Given to (or entered by) the lifespan of whichever app serves the gateway."""
        if self._client is not None:
            raise RuntimeError("the gateway's lifespan is already running")
        self._idle = asyncio.Event()
        self._idle.set()
        self.router.add_refit_listener(self._refit_listener)
        self._client = open_session(self.settings.connect_timeout_s, self.settings.read_timeout_s)
        saver = None
        if self.state_dir is not None:
            saver = asyncio.create_task(self._snapshot_every(self.settings.snapshot_every_s))
        refits = None if self.refitter is None else asyncio.create_task(self.refitter.run())
        try:
            yield
        finally:
            self.router.remove_refit_listener(self._refit_listener)
            if refits is not None:
                refits.cancel()
            await self.drain(self.settings.drain_timeout_s)
            if saver is not None:
                saver.cancel()
                await asyncio.to_thread(self.snapshot)
            await self._client.close()
            self._client = None

    def stopping(self) -> None:
        """The server has begun to shut down: from now on every drain ends by
        ``drain_timeout_s`` from this moment, so that the server's own wait for requests in
        flight and the lifespan's, one after the other, take no longer together."""
        if self._drain_deadline is None:
            self._drain_deadline = time.monotonic() + self.settings.drain_timeout_s

    async def drain(self, timeout_s: float) -> bool:
        """Waits up to ``timeout_s`` (and, once the server is `stopping`, no later than its
        deadline) for the requests being answered; True if all finished."""
        if self._idle is None or self._idle.is_set():
            return True
        if self._drain_deadline is not None:
            timeout_s = min(timeout_s, max(0.0, self._drain_deadline - time.monotonic()))
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:
            log.warning("%d requests still in flight after %.1f s", self.active, timeout_s)
            return False
        return True

    def snapshot(self) -> Path | None:
        """Saves the router's state into ``state_dir`` (crash-safe: `Router.save`)."""
        if self.state_dir is None:
            return None
        with self._save_lock:
            folder = self.router.save(self.state_dir)
        log.info("router state saved to %s", folder)
        return folder

    async def _snapshot_every(self, period_s: float) -> None:
        while True:
            await asyncio.sleep(period_s)
            try:
                await asyncio.to_thread(self.snapshot)
            except Exception:
                log.exception("saving the router state failed; the next save tries again")

    def _request_started(self) -> None:
        self.active += 1
        if self._idle is not None:
            self._idle.clear()

    def _request_ended(self) -> None:
        self.active -= 1
        if self.active == 0 and self._idle is not None:
            self._idle.set()

    def upstreams(self) -> dict[str, Upstream]:
        """Where each pool model answers now, in pool order. The pool can change while the
        gateway runs (`Router.add_model`, `update_model`, `remove_model`, or the same applied
        from another replica through a store), so it is read afresh; a model with no upstream
        is left out, and so cannot be chosen."""
        models = self.router.config.models
        known = self._upstreams
        # The pool's tuple is replaced whenever a model is added, changed or removed, so the
        # same tuple means the same upstreams: read them once per pool, not once per request.
        if known is not None and known[0] is models:
            return known[1]
        found = {}
        for model in models:
            upstream = self._given.get(model.name) or upstream_of(model)
            if upstream is not None:
                found[model.name] = upstream
        self._upstreams = (models, found)
        return found

    @property
    def running(self) -> bool:
        """Whether the lifespan has started (and not yet ended): only then are requests sent
        upstream."""
        return self._client is not None

    @property
    def client(self) -> aiohttp.ClientSession:
        if self._client is None:
            raise _not_running()
        return self._client

    # -- endpoints ------------------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        self._request_started()
        handed_off = False
        try:
            if not self.running:
                raise _not_running()
            raw = await self._body(request)
            pool = list(self.upstreams())
            chat = parse_chat_request(raw, request.headers, pool, self.settings)
            response = await _unless_client_leaves(request.receive, self._answer(chat, pool))
            handed_off = isinstance(response, _RelayedStream)
            return response
        except RequestError as err:
            self.metrics.rejected.labels(str(err.status)).inc()
            return JSONResponse(err.body(), status_code=err.status)
        finally:
            if not handed_off:
                self._request_ended()

    async def feedback(self, request: Request) -> Response:
        try:
            body = parse_json_object(await self._body(request))
            unknown = sorted(set(body) - _FEEDBACK_FIELDS)
            if unknown:
                raise RequestError(400, f"unknown field(s) {', '.join(unknown)}")
            decision_id = body.get("decision_id")
            if not isinstance(decision_id, str):
                raise RequestError(400, "decision_id must be a string", param="decision_id")
            kind = "satisfied" if "satisfied" in body else "quality"
            learn = functools.partial(
                self.router.feedback,
                decision_id,
                quality=body.get("quality"),
                satisfied=body.get("satisfied"),
                output_tokens=body.get("output_tokens"),
            )
            try:
                # With a store, feedback claims its decision and appends to the stream in
                # Redis: network calls, which must not hold up the event loop.
                learned = learn() if self.router.store is None else await asyncio.to_thread(learn)
            except DecisionNotFoundError as err:
                raise RequestError(404, str(err), param="decision_id") from None
            except InvalidInputError as err:
                raise RequestError(400, str(err)) from None
        except RequestError as err:
            self.metrics.rejected.labels(str(err.status)).inc()
            return JSONResponse(err.body(), status_code=err.status)
        self.metrics.feedback.labels(kind, str(learned).lower()).inc()
        if learned and self.refitter is not None:
            self.refitter.feedback_learned()
        return JSONResponse({"decision_id": decision_id, "learned": learned})

    async def list_models(self, _request: Request) -> Response:
        rows = [{"id": ROUTER_MODEL, "object": "model", "created": 0, "owned_by": "mixllm"}]
        upstreams = self.upstreams()
        for row in self.router.describe_models():
            name = row["name"]
            upstream = upstreams.get(name)
            learned = {
                **row,
                **self.speed.of(name),
                "cooled_down": self.cooldowns.cooled(name),
                "upstream": None if upstream is None else upstream.base_url,
            }
            rows.append(
                {
                    "id": name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "mixllm",
                    "mixllm": _finite_or_null(learned),
                }
            )
        return JSONResponse({"object": "list", "data": rows})

    async def health(self, _request: Request) -> Response:
        models = self.router.models
        return JSONResponse(
            {
                "status": "ok" if self.running else "not_running",
                "in_flight": self.active,
                "models": len(models),
                "available": self.cooldowns.available(models),
            },
            status_code=200 if self.running else 503,
        )

    async def prometheus(self, _request: Request) -> Response:
        # Off the event loop: the store's counters wait on the lock feedback holds while it
        # calls Redis.
        body = await asyncio.to_thread(generate_latest, self.metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def _body(self, request: Request) -> bytes:
        """The request body, refused (413) beyond ``max_body_bytes`` before it is all read."""
        limit = self.settings.max_body_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise RequestError(413, f"the request body is over {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"the request body is over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    # -- answering ------------------------------------------------------------------------------

    async def _answer(self, chat: ChatRequest, pool: list[str]) -> Response:
        decision = await self._route(chat, pool)
        # The chosen model, then the decision's own fallbacks: the models within every limit
        # of this request, by the rule that chose it. A decision whose model could not answer
        # stays open until the next one is opened from it, then is cancelled.
        order = decision.detail.ranking
        failures = []
        for attempt, model in enumerate(order[: self.settings.max_attempts]):
            if attempt > 0:
                self.metrics.fallbacks.labels(order[attempt - 1]).inc()
            upstream = self.upstreams().get(model)
            if upstream is None:
                # Removed from the pool (or left without an upstream) since it was chosen.
                failures.append(f"{model}: removed from the pool")
                continue
            if attempt > 0:
                try:
                    decision = await self._fall_back(chat, decision, model)
                except UnknownModelError:
                    failures.append(f"{model}: removed from the pool")
                    continue
                except BaseException:
                    self._cancel(decision)
                    raise
            self.metrics.decisions.labels(model).inc()
            try:
                if chat.stream:
                    return await self._open_relay(chat, decision, upstream)
                return await self._complete(chat, decision, upstream)
            except UpstreamFailure as err:
                self.metrics.upstream_errors.labels(model, err.kind).inc()
                if self.cooldowns.failed(model):
                    self.metrics.cooldowns.labels(model).inc()
                failures.append(str(err))
                log.warning("upstream failure: %s", err)
            except UpstreamRejection as err:
                self._cancel(decision)
                return Response(err.body, status_code=err.status, media_type=err.content_type)
            except BaseException:
                self._cancel(decision)
                raise
        self._cancel(decision)
        self.metrics.requests.labels(order[0], "error").inc()
        raise RequestError(
            502,
            "no model could answer: " + "; ".join(failures),
            kind="upstream_error",
            code="upstream_unavailable",
        )

    async def _route(self, chat: ChatRequest, pool: list[str]) -> RouteDecision:
        """The request's decision, among the allowed models not cooled down."""
        allowed = list(chat.models or pool)
        # With every allowed model cooled down, trying one beats refusing outright.
        candidates = self.cooldowns.available(allowed) or allowed
        try:
            return await self.router.aroute(
                chat.text,
                willingness_to_pay=chat.willingness_to_pay,
                # Every model of the router's pool needs no list: the core allows them all.
                models=None if len(candidates) == len(self.router.models) else candidates,
                max_cost_usd=chat.max_cost_usd,
                max_latency_s=chat.max_latency_s,
            )
        except NoModelWithinLimitsError as err:
            raise RequestError(400, str(err), code="no_model_within_limits") from None
        except (InvalidInputError, UnknownModelError) as err:
            raise RequestError(400, str(err)) from None

    async def _fall_back(
        self, chat: ChatRequest, failed: RouteDecision, model: str
    ) -> RouteDecision:
        """A decision for ``model`` in place of ``failed``, whose model could not answer:
        opened from ``failed``'s own context (`Router.reroute`), so the prompt is not embedded
        again, then ``failed`` is cancelled. A ``failed`` that expired or was dropped while its
        upstream was tried, or that a fit has outdated, leaves its text to be routed again.
        `UnknownModelError` (``model`` has left the pool) leaves ``failed`` open."""
        try:
            decision = self.router.reroute(failed.id, model)
        except (DecisionNotFoundError, StateChangedError):
            self._cancel(failed)
            return await self.router.aroute(
                chat.text, willingness_to_pay=failed.willingness_to_pay, models=[model]
            )
        self._cancel(failed)
        return decision

    async def _complete(
        self, chat: ChatRequest, decision: RouteDecision, upstream: Upstream
    ) -> Response:
        model = decision.model
        started = time.perf_counter()
        self.metrics.in_flight.labels(model).inc()
        try:
            answer = await post_completion(self.client, upstream, chat.body)
        except asyncio.CancelledError:
            # The client left (or the server is stopping): the upstream call is closed.
            self.metrics.disconnects.labels(model).inc()
            raise
        finally:
            self.metrics.in_flight.labels(model).dec()
        latency = time.perf_counter() - started
        tokens = _completion_tokens(answer.get("usage"))
        self._completed(decision, latency, tokens, ttft_s=None)
        answer["model"] = model
        answer["mixllm"] = {"decision_id": decision.id, "model": model}
        return Response(
            orjson.dumps(answer), media_type="application/json", headers=_decision_headers(decision)
        )

    def _completed(
        self, decision: RouteDecision, latency_s: float, tokens: float | None, ttft_s: float | None
    ) -> None:
        model = decision.model
        # The decision may have expired, or been dropped, while its upstream answered: the
        # answer is still the client's; only its latency and length go unlearned.
        with contextlib.suppress(DecisionNotFoundError):
            self.router.complete(decision.id, latency_s=latency_s, output_tokens=tokens)
        self.cooldowns.succeeded(model)
        self.metrics.requests.labels(model, "ok").inc()
        self.metrics.latency.labels(model).observe(latency_s)
        generation_s = latency_s - (ttft_s or 0.0)
        self.speed.record(
            model, ttft_s=ttft_s, generation_s=generation_s, output_tokens=tokens or 0.0
        )

    def _cancel(self, decision: RouteDecision) -> None:
        """Takes an unanswered decision out of its model's queue; one that has expired or been
        dropped meanwhile has already left it."""
        with contextlib.suppress(DecisionNotFoundError):
            self.router.cancel(decision.id)

    async def _open_relay(
        self, chat: ChatRequest, decision: RouteDecision, upstream: Upstream
    ) -> Response:
        """Opens the upstream stream and waits for its first chunk, so a model that fails
        before answering is replaced before anything is sent to the client."""
        model = decision.model
        started = time.perf_counter()
        self.metrics.in_flight.labels(model).inc()
        try:
            stream = await open_stream(self.client, upstream, chat.body)
            try:
                first = await stream.next_chunk()
            except BaseException:
                await stream.aclose()
                raise
        except BaseException as err:
            self.metrics.in_flight.labels(model).dec()
            if isinstance(err, asyncio.CancelledError):
                # The client left (or the server is stopping) before the first chunk.
                self.metrics.disconnects.labels(model).inc()
            raise
        ttft = time.perf_counter() - started
        self.metrics.ttft.labels(model).observe(ttft)
        return _RelayedStream(self, decision, _Relay(stream, first, started, ttft))

    def _stream_ended(self, relay: _Relay, decision: RouteDecision) -> None:
        latency = time.perf_counter() - relay.started
        self._completed(decision, latency, relay.output_tokens(), ttft_s=relay.ttft_s)

    def _stream_failed(self, decision: RouteDecision, err: UpstreamFailure) -> None:
        model = decision.model
        self._cancel(decision)
        self.metrics.upstream_errors.labels(model, err.kind).inc()
        self.metrics.requests.labels(model, "error").inc()
        if self.cooldowns.failed(model):
            self.metrics.cooldowns.labels(model).inc()
        log.warning("upstream failure mid-stream: %s", err)


@dataclass
class _Relay:
    """An upstream stream being relayed, and what it has produced so far."""

    stream: Stream
    first: dict[str, Any] | None
    started: float
    ttft_s: float
    content_chunks: int = 0
    usage_tokens: float | None = None
    finished: bool = field(default=False)

    def count(self, chunk: dict[str, Any]) -> None:
        choices = chunk.get("choices")
        if isinstance(choices, list) and any(
            isinstance(c, dict) and isinstance(c.get("delta"), dict) and c["delta"].get("content")
            for c in choices
        ):
            self.content_chunks += 1
        tokens = _completion_tokens(chunk.get("usage"))
        if tokens is not None:
            self.usage_tokens = tokens

    def output_tokens(self) -> float:
        """From the stream's ``usage`` when it carries one; else one token per content chunk,
        which is how OpenAI-compatible servers stream."""
        return self.usage_tokens if self.usage_tokens is not None else float(self.content_chunks)


class _RelayedStream(StreamingResponse):
    """Relays an upstream stream as server-sent events. However the response ends (finished,
    the upstream failing, the client leaving) the upstream connection is closed and the
    decision leaves its model's queue."""

    def __init__(self, gateway: Gateway, decision: RouteDecision, relay: _Relay) -> None:
        self._gateway = gateway
        self._decision = decision
        self._relay = relay
        self._closed = False
        super().__init__(
            self._events(),
            media_type="text/event-stream",
            headers=_decision_headers(decision),
        )

    async def _events(self) -> AsyncIterator[bytes]:
        relay, decision = self._relay, self._decision
        stream, first = relay.stream, relay.first
        # Events that have arrived go out together, in one write; none waits for a later one.
        pending: list[bytes] = []
        if first is not None:
            first["mixllm"] = {"decision_id": decision.id, "model": decision.model}
            pending.append(self._event(first))
            try:
                while True:
                    if pending and not stream.ready():
                        yield b"".join(pending)
                        pending.clear()
                    chunk = await stream.next_chunk()
                    if chunk is None:
                        break
                    pending.append(self._event(chunk))
            except UpstreamFailure as err:
                relay.finished = True
                self._gateway._stream_failed(decision, err)
                error = RequestError(502, str(err), kind="upstream_error", code="upstream_failed")
                yield b"".join(pending) + b"data: " + orjson.dumps(error.body()) + b"\n\n"
                return
        relay.finished = True
        self._gateway._stream_ended(relay, decision)
        yield b"".join(pending) + b"data: [DONE]\n\n"

    def _event(self, chunk: dict[str, Any]) -> bytes:
        self._relay.count(chunk)
        chunk["model"] = self._decision.model
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.close()
            self._gateway._request_ended()

    async def close(self) -> None:
        """Closes the upstream call and takes the stream out of its model's count, once; for a
        response never sent as for one sent."""
        gateway, relay, model = self._gateway, self._relay, self._decision.model
        if self._closed:
            return
        self._closed = True
        await relay.stream.aclose()
        gateway.metrics.in_flight.labels(model).dec()
        if not relay.finished:
            # The client left (or the server is stopping): the upstream call is closed above
            # and its slot freed here; nothing is learned from an answer cut short.
            relay.finished = True
            gateway._cancel(self._decision)
            gateway.metrics.disconnects.labels(model).inc()


async def _unless_client_leaves(
    receive: Receive, answering: Coroutine[Any, Any, Response]
) -> Response:
    """``answering``'s response, unless the client closes its connection first: then the answer
    is cancelled (its upstream call closed, its decision out of the queue, at whatever stage it
    was: routing, waiting for a first chunk or for a whole answer, falling back) and a response
    nobody will read is returned. Once a stream is handed back, the relay watches instead."""
    answer = asyncio.ensure_future(answering)
    left = asyncio.ensure_future(_client_left(receive))
    try:
        await asyncio.wait((answer, left), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        # Cancelled itself (the server is stopping): so is the answer, and a stream it opened
        # meanwhile is closed, since it will never be relayed.
        answer.cancel()
        await asyncio.wait((answer,))
        if not answer.cancelled() and answer.exception() is None:
            unsent = answer.result()
            if isinstance(unsent, _RelayedStream):
                await unsent.close()
        raise
    finally:
        left.cancel()
    if not answer.done():
        answer.cancel()
        # The answer's own clean-up runs before the request counts as ended.
        await asyncio.wait((answer,))
        if answer.cancelled():
            return Response(status_code=_CLIENT_CLOSED_REQUEST)
    return answer.result()


async def _client_left(receive: Receive) -> None:
    """Returns once the client has closed its connection (the request's body has been read, so
    the server has nothing else to hand on)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _not_running() -> RequestError:
    return RequestError(
        503,
        "the gateway is not running: its lifespan has not started. Mounted in another app, "
        "run it from the host's: Starlette(..., lifespan=gateway_app.state.gateway.lifespan), "
        "or `async with gateway.lifespan():` inside the host's own lifespan",
        kind="server_error",
        code="gateway_not_running",
    )


def _completion_tokens(usage: Any) -> float | None:
    if not isinstance(usage, dict):
        return None
    tokens = usage.get("completion_tokens")
    if isinstance(tokens, bool) or not isinstance(tokens, (int, float)):
        return None
    return float(tokens) if math.isfinite(tokens) and tokens >= 0 else None


def _decision_headers(decision: RouteDecision) -> dict[str, str]:
    return {DECISION_HEADER: decision.id, MODEL_HEADER: decision.model}


def _finite_or_null(value: Any) -> Any:
    """Strict JSON: non-finite numbers become null."""
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
