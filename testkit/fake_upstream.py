"""A fake OpenAI-compatible upstream for the gateway's tests: a real server on 127.0.0.1 whose
models answer with a configurable time to first token, speed and length, fail with 500s at a
configurable rate or always with a given status and message, or hang (before answering, or
mid-stream); it records what it was sent, the tokens it streamed, and which calls their client
left. `ServerThread` runs any ASGI app (this one, or the gateway) on loopback in a thread that
stops by itself."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

# Longest a hang lasts: a server under test must give up well before.
HANG_S = 20.0


@dataclass
class Behaviour:
    """How one model answers."""

    ttft_s: float = 0.0
    tokens_per_s: float = 10_000.0
    output_tokens: int = 5
    error_rate: float = 0.0  # share of requests answered 500
    status: int | None = None  # every request answered with this status (429, 500, ...)
    error_message: str | None = None  # the error body's message (default: "fake <status>")
    hang: bool = False  # never answers (until HANG_S)
    fail_mid_stream: bool = False  # drops the connection after the first token
    hang_after_tokens: int | None = None  # a stream stops sending after this many (until HANG_S)


class VirtualClock:
    """A ``time``-like clock (``perf_counter`` only) that moves only when a `FakeUpstream`
    given it makes a request wait, by exactly that wait: what a server under test measures
    with it is the upstream's behaviour, never how busy the machine running the test is."""

    def __init__(self) -> None:
        self._now = 0.0
        self._lock = threading.Lock()

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    def perf_counter(self) -> float:
        with self._lock:
            return self._now


@dataclass
class Record:
    bodies: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    streams_finished: int = 0
    streams_left: int = 0  # streams whose client went away before the end
    chunks_sent: int = 0  # streamed tokens produced, over every stream
    answers_left: int = 0  # non-streamed requests whose client went away before the answer


class FakeUpstream:
    """Per model (the request's ``model``): a `Behaviour` to set and a `Record` to read."""

    def __init__(self, seed: int = 0) -> None:
        # Advanced by every wait the models make, when set.
        self.clock: VirtualClock | None = None
        self.behaviours: dict[str, Behaviour] = {}
        self.records: dict[str, Record] = {}
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])

    def behaviour(self, model: str) -> Behaviour:
        return self.behaviours.setdefault(model, Behaviour())

    def record(self, model: str) -> Record:
        with self._lock:
            return self.records.setdefault(model, Record())

    def requests(self, model: str) -> int:
        return len(self.record(model).bodies)

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        model = body["model"]
        how = self.behaviour(model)
        record = self.record(model)
        with self._lock:
            record.bodies.append(body)
            record.authorizations.append(request.headers.get("authorization"))
            fails = self._random.random() < how.error_rate
        if how.hang:
            await asyncio.sleep(HANG_S)
        if how.status is not None or fails:
            status = how.status or 500
            message = how.error_message or f"fake {status}"
            return JSONResponse({"error": {"message": message}}, status_code=status)
        created = int(time.time())
        if body.get("stream"):
            return StreamingResponse(
                self._stream(model, how, record, created), media_type="text/event-stream"
            )
        if await self._client_leaves_within(
            request, how.ttft_s + how.output_tokens / how.tokens_per_s
        ):
            with self._lock:
                record.answers_left += 1
            return Response(status_code=499)
        return JSONResponse(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "tok " * how.output_tokens},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": 3,
                    "completion_tokens": how.output_tokens,
                    "total_tokens": 3 + how.output_tokens,
                },
            }
        )

    async def _wait(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock.advance(seconds)
        await asyncio.sleep(seconds)

    async def _client_leaves_within(self, request: Request, seconds: float) -> bool:
        """Waits ``seconds`` (as `_wait` does), or less if the client leaves: whether it did."""
        if self.clock is not None:
            self.clock.advance(seconds)
        try:
            await asyncio.wait_for(_client_left(request), seconds)
        except asyncio.TimeoutError:
            return False
        return True

    async def _stream(
        self, model: str, how: Behaviour, record: Record, created: int
    ) -> AsyncIterator[bytes]:
        finished = False
        try:
            await self._wait(how.ttft_s)
            for i in range(how.output_tokens):
                if i > 0:
                    await self._wait(1 / how.tokens_per_s)
                if i == 1 and how.fail_mid_stream:
                    raise ConnectionAbortedError("the fake upstream drops the stream")
                if i == how.hang_after_tokens:
                    await asyncio.sleep(HANG_S)
                chunk = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": {"content": "tok "}, "finish_reason": None}],
                }
                with self._lock:
                    record.chunks_sent += 1
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            with self._lock:
                if finished:
                    record.streams_finished += 1
                else:
                    record.streams_left += 1


async def _client_left(request: Request) -> None:
    """Returns once the client of ``request`` (its body read) has closed its connection."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class InstantUpstream:
    """The cheapest OpenAI-compatible upstream for throughput benchmarks: a bare ASGI app (no
    framework, no routing) that answers every chat completion at once with ``output_tokens``
    tokens, streamed or not, from bytes built once; so that calling it directly is never what
    limits a benchmark of what sits in front of it."""

    def __init__(self, output_tokens: int = 5) -> None:
        self._completion = json.dumps(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 0,
                "model": "fake",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "tok " * output_tokens},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": 3,
                    "completion_tokens": output_tokens,
                    "total_tokens": 3 + output_tokens,
                },
            }
        ).encode()
        chunk = json.dumps(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "fake",
                "choices": [{"index": 0, "delta": {"content": "tok "}, "finish_reason": None}],
            }
        )
        self._stream = (f"data: {chunk}\n\n" * output_tokens + "data: [DONE]\n\n").encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        streamed = b'"stream":true' in body.replace(b" ", b"")
        payload = self._stream if streamed else self._completion
        kind = b"text/event-stream" if streamed else b"application/json"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", kind),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


class ServerThread:
    """Runs an ASGI app with uvicorn on 127.0.0.1 (a free port) in a daemon thread; a context
    manager that stops it on exit (in-flight requests get ``grace_s``)."""

    def __init__(self, app: Any, *, grace_s: int = 1) -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=grace_s,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
