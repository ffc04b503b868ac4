"""Calls to the models' own OpenAI-compatible endpoints, over one shared httpx client.

A failure the next model could answer instead (no connection, a timeout, 429 or a 5xx) is an
`UpstreamFailure`; any other 4xx is the caller's request at fault and goes back to it as it
came (`UpstreamRejection`). Keys are read from the environment when a request is sent and
never kept in an error message, a log line or a snapshot.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from mixllm.config import ModelConfig
from mixllm.errors import ConfigError

__all__ = [
    "Upstream",
    "UpstreamFailure",
    "UpstreamRejection",
    "open_stream",
    "post_completion",
    "upstream_of",
    "upstreams_of",
]


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
            return {}
        key = os.environ.get(self.api_key_env)
        if not key:
            raise UpstreamFailure(self.name, "auth", f"${self.api_key_env} is not set")
        return {"Authorization": f"Bearer {key}"}


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
    (``connect``, ``timeout``, ``status_429``, ``status_5xx``, ``protocol``, ``auth``)."""

    def __init__(self, model: str, kind: str, detail: str) -> None:
        super().__init__(f"{model}: {kind}: {detail}")
        self.model = model
        self.kind = kind


class UpstreamRejection(Exception):
    """The upstream refused the request itself (a 4xx other than 429): the caller's fault."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.body = body
        self.content_type = content_type


def _request_body(upstream: Upstream, body: Mapping[str, Any]) -> dict[str, Any]:
    return {**body, "model": upstream.model}


async def _check_status(upstream: Upstream, response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    content = await response.aread()
    if response.status_code == 429 or response.status_code >= 500:
        kind = "status_429" if response.status_code == 429 else "status_5xx"
        raise UpstreamFailure(upstream.name, kind, f"HTTP {response.status_code}")
    raise UpstreamRejection(
        response.status_code, content, response.headers.get("content-type", "application/json")
    )


def _failure(upstream: Upstream, err: httpx.HTTPError) -> UpstreamFailure:
    if isinstance(err, httpx.TimeoutException):
        return UpstreamFailure(upstream.name, "timeout", type(err).__name__)
    if isinstance(err, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError)):
        return UpstreamFailure(upstream.name, "connect", type(err).__name__)
    return UpstreamFailure(upstream.name, "protocol", type(err).__name__)


async def post_completion(
    client: httpx.AsyncClient, upstream: Upstream, body: Mapping[str, Any]
) -> dict[str, Any]:
    """A non-streaming chat completion, as the upstream's JSON."""
    try:
        response = await client.post(
            upstream.url, json=_request_body(upstream, body), headers=upstream.headers()
        )
        await _check_status(upstream, response)
        answer = response.json()
    except httpx.HTTPError as err:
        raise _failure(upstream, err) from None
    except ValueError:
        raise UpstreamFailure(upstream.name, "protocol", "the answer is not JSON") from None
    if not isinstance(answer, dict):
        raise UpstreamFailure(upstream.name, "protocol", "the answer is not a JSON object")
    return answer


class Stream:
    """An open streaming completion: its server-sent events' data, one JSON chunk at a time."""

    def __init__(self, upstream: Upstream, response: httpx.Response) -> None:
        self._upstream = upstream
        self._response = response
        self._lines = response.aiter_lines()

    async def next_chunk(self) -> dict[str, Any] | None:
        """The next chunk, or None at the end of the stream (``data: [DONE]``, or EOF)."""
        try:
            async for line in self._lines:
                if not line.startswith("data:"):
                    continue  # blank separators, comments, event names
                data = line[5:].strip()
                if data == "[DONE]":
                    return None
                chunk = json.loads(data)
                if not isinstance(chunk, dict):
                    raise ValueError("a chunk is not a JSON object")
                if "error" in chunk:
                    raise UpstreamFailure(self._upstream.name, "protocol", "error event")
                return chunk
        except httpx.HTTPError as err:
            raise _failure(self._upstream, err) from None
        except ValueError:
            raise UpstreamFailure(self._upstream.name, "protocol", "bad chunk") from None
        return None

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        while (chunk := await self.next_chunk()) is not None:
            yield chunk

    async def aclose(self) -> None:
        """Closes the connection: an upstream still generating stops (for a client gone)."""
        await self._response.aclose()


async def open_stream(
    client: httpx.AsyncClient, upstream: Upstream, body: Mapping[str, Any]
) -> Stream:
    """Starts a streaming completion and checks its status."""
    request = client.build_request(
        "POST", upstream.url, json=_request_body(upstream, body), headers=upstream.headers()
    )
    try:
        response = await client.send(request, stream=True)
    except httpx.HTTPError as err:
        raise _failure(upstream, err) from None
    try:
        await _check_status(upstream, response)
    except httpx.HTTPError as err:
        await response.aclose()
        raise _failure(upstream, err) from None
    except BaseException:
        await response.aclose()
        raise
    return Stream(upstream, response)
