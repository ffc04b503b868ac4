"""Calls to the models' own OpenAI-compatible endpoints, over one shared aiohttp session
(its C parser and connection pool keep the gateway's own cost per call small).

A failure the next model could answer instead (no connection, a timeout, 429, a 5xx, or a 401
or 403: the key the gateway holds for that model was refused) is an `UpstreamFailure`; any other
4xx is the caller's request at fault and goes back to it as it came (`UpstreamRejection`). Keys
are read from the environment when a request is sent and never kept in an error message, a log
line or a snapshot; nor is the body of a 401 or 403, which may echo part of the key.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from mixllm.config import ModelConfig
from mixllm.errors import ConfigError

__all__ = [
    "Upstream",
    "UpstreamFailure",
    "UpstreamRejection",
    "open_session",
    "open_stream",
    "post_completion",
    "upstream_of",
    "upstreams_of",
]

_JSON = {"Content-Type": "application/json"}
# Longest server-sent event line taken from an upstream (a big tool call in one chunk fits).
MAX_EVENT_BYTES = 2**20


@dataclass(frozen=True)
class Upstream:
    """Where one pool model answers."""

    name: str
    base_url: str
    model: str
    api_key_env: str | None = None

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def headers(self) -> dict[str, str]:
        if self.api_key_env is None:
            return _JSON
        key = os.environ.get(self.api_key_env)
        if not key:
            raise UpstreamFailure(self.name, "auth", f"${self.api_key_env} is not set")
        return {**_JSON, "Authorization": f"Bearer {key}"}


def open_session(connect_timeout_s: float, read_timeout_s: float) -> aiohttp.ClientSession:
    """The session every upstream call goes through: connections kept alive and reused, no
    limit on their number (the models' own concurrency is the router's business), a bound on
    connecting and on the wait for each chunk of an answer, and no proxy or netrc settings read
    from the environment."""
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
    )
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        trust_env=False,
        skip_auto_headers=("User-Agent",),
    )


def upstreams_of(models: tuple[ModelConfig, ...]) -> dict[str, Upstream]:
    """Each pool model's upstream; a model without a ``base_url`` is a configuration error."""
    missing = [m.name for m in models if m.base_url is None]
    if missing:
        raise ConfigError(
            f"no upstream for {', '.join(missing)}: give each [[models]] a base_url "
            "(and api_key_env, upstream_model where needed)"
        )
    return {m.name: upstream for m in models if (upstream := upstream_of(m)) is not None}


def upstream_of(model: ModelConfig) -> Upstream | None:
    """Where ``model`` answers, or None when it has no ``base_url``."""
    if model.base_url is None:
        return None
    upstream_model = model.upstream_model or model.name
    return Upstream(model.name, model.base_url, upstream_model, model.api_key_env)


class UpstreamFailure(Exception):
    """The model could not answer; another one may. ``kind`` is what went wrong
    (``connect``, ``timeout``, ``status_429``, ``status_5xx``, ``protocol``, ``auth``: the key
    is not set, or the upstream refused it with a 401 or 403)."""

    def __init__(self, model: str, kind: str, detail: str) -> None:
        super().__init__(f"{model}: {kind}: {detail}")
        self.model = model
        self.kind = kind


class UpstreamRejection(Exception):
    """The upstream refused the request itself (a 4xx other than 401, 403 and 429): the
    caller's fault."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.body = body
        self.content_type = content_type


def _request_body(upstream: Upstream, body: Mapping[str, Any]) -> bytes:
    return orjson.dumps({**body, "model": upstream.model})


# What an upstream answers when the key it was sent is missing, wrong, expired or not allowed
# the model.
_KEY_REFUSED = (401, 403)


async def _check_status(upstream: Upstream, response: aiohttp.ClientResponse) -> None:
    if response.status < 400:
        return
    content = await response.read()
    if response.status == 429 or response.status >= 500:
        kind = "status_429" if response.status == 429 else "status_5xx"
        raise UpstreamFailure(upstream.name, kind, f"HTTP {response.status}")
    if response.status in _KEY_REFUSED:
        # The gateway's own credentials, not the caller's request: named by status only, as
        # the body may quote the key ("Incorrect API key provided: sk-...abcd").
        raise UpstreamFailure(upstream.name, "auth", f"HTTP {response.status}")
    raise UpstreamRejection(
        response.status, content, response.headers.get("content-type", "application/json")
    )


def _failure(upstream: Upstream, err: Exception) -> UpstreamFailure:
    if isinstance(err, asyncio.TimeoutError):
        return UpstreamFailure(upstream.name, "timeout", type(err).__name__)
    if isinstance(
        err,
        (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError),
    ):
        return UpstreamFailure(upstream.name, "connect", type(err).__name__)
    return UpstreamFailure(upstream.name, "protocol", type(err).__name__)


# What a call to an upstream can raise that another model could answer instead.
_CALL_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


async def post_completion(
    session: aiohttp.ClientSession, upstream: Upstream, body: Mapping[str, Any]
) -> dict[str, Any]:
    """A non-streaming chat completion, as the upstream's JSON."""
    try:
        async with session.post(
            upstream.url, data=_request_body(upstream, body), headers=upstream.headers()
        ) as response:
            await _check_status(upstream, response)
            answer = orjson.loads(await response.read())
    except _CALL_ERRORS as err:
        raise _failure(upstream, err) from None
    except orjson.JSONDecodeError:
        raise UpstreamFailure(upstream.name, "protocol", "the answer is not JSON") from None
    if not isinstance(answer, dict):
        raise UpstreamFailure(upstream.name, "protocol", "the answer is not a JSON object")
    return answer


class Stream:
    """An open streaming completion: its server-sent events' data, one JSON chunk at a time."""

    def __init__(self, upstream: Upstream, response: aiohttp.ClientResponse) -> None:
        self._upstream = upstream
        self._response = response
        self._ended = False
        # Bytes received and not yet split into lines.
        self._buffer = bytearray()

    def ready(self) -> bool:
        """Whether `next_chunk` can answer without waiting: the next event (or the end) has
        arrived already. Relays send what has arrived together, in one write."""
        if self._ended:
            return True
        try:
            self._buffer += self._response.content.read_nowait()
        except Exception:  # the connection failed: `next_chunk` says how, at once
            return True
        start = self._buffer.find(b"data:")
        return (start >= 0 and self._buffer.find(b"\n", start) >= 0) or (
            not self._buffer and self._response.content.at_eof()
        )

    async def _line(self) -> bytes | None:
        """The next line (without its end), or None at the end of the stream."""
        content = self._response.content
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > MAX_EVENT_BYTES:
                raise ValueError("an event longer than the limit")
            data = content.read_nowait() or await content.readany()
            if not data:  # the end: a last line without its newline is still a line
                last = bytes(self._buffer)
                self._buffer.clear()
                return last or None
            self._buffer += data
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line

    async def next_chunk(self) -> dict[str, Any] | None:
        """The next chunk, or None at the end of the stream (``data: [DONE]``, or EOF)."""
        try:
            while (line := await self._line()) is not None:
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments, event names
                data = line[5:].strip()
                if data == b"[DONE]":
                    self._ended = True
                    return None
                chunk = orjson.loads(data)
                if not isinstance(chunk, dict):
                    raise ValueError("a chunk is not a JSON object")
                if "error" in chunk:
                    raise UpstreamFailure(self._upstream.name, "protocol", "error event")
                return chunk
        except _CALL_ERRORS as err:
            raise _failure(self._upstream, err) from None
        except ValueError:  # orjson.JSONDecodeError is one
            raise UpstreamFailure(self._upstream.name, "protocol", "bad chunk") from None
        self._ended = True
        return None

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        while (chunk := await self.next_chunk()) is not None:
            yield chunk

    async def aclose(self) -> None:
        """Ends the call. A stream read to its end gives its connection back to the pool; one
        cut short closes it, so an upstream still generating stops (for a client gone)."""
        if self._ended:
            self._response.release()
        else:
            self._response.close()


async def open_stream(
    session: aiohttp.ClientSession, upstream: Upstream, body: Mapping[str, Any]
) -> Stream:
    """Starts a streaming completion and checks its status."""
    try:
        response = await session.post(
            upstream.url, data=_request_body(upstream, body), headers=upstream.headers()
        )
    except _CALL_ERRORS as err:
        raise _failure(upstream, err) from None
    try:
        await _check_status(upstream, response)
    except _CALL_ERRORS as err:
        response.close()
        raise _failure(upstream, err) from None
    except BaseException:
        response.close()
        raise
    return Stream(upstream, response)
