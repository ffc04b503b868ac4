"""Reading a chat completion request: what to route on, where it may go, and how much the
caller will pay. Anything malformed is a `RequestError` (an HTTP 4xx with an OpenAI-style
body); nothing has changed when one is raised."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from mixllm.config import ServeConfig

__all__ = ["ROUTER_MODEL", "ChatRequest", "RequestError", "parse_chat_request"]

# The model name that asks the gateway to choose; ``mixllm:<λ or name>`` picks an operating point.
ROUTER_MODEL = "mixllm"
# Per-request settings as headers (the body's ``mixllm`` object says the same).
HEADER_WTP = "x-mixllm-willingness-to-pay"
HEADER_MODELS = "x-mixllm-models"
HEADER_MAX_COST = "x-mixllm-max-cost-usd"
HEADER_MAX_LATENCY = "x-mixllm-max-latency-s"


class RequestError(Exception):
    """A request the gateway refuses, with the HTTP status and the OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True)
class ChatRequest:
    """A checked request: the body to forward (without the gateway's own ``mixllm`` field),
    the text to route on and the limits of this request."""

    body: dict[str, Any]
    stream: bool
    text: str
    willingness_to_pay: float | None
    models: tuple[str, ...] | None
    max_cost_usd: float | None
    max_latency_s: float | None


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise RequestError(400, f"the request body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    return body


def parse_chat_request(
    raw: bytes, headers: Mapping[str, str], pool: Sequence[str], settings: ServeConfig
) -> ChatRequest:
    body = parse_json_object(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "model must be a non-empty string", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages must be a non-empty array", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(
                400, f"messages[{i}] must be an object with a role", param=f"messages[{i}]"
            )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "stream must be true or false", param="stream")
    # null is taken as absent, as OpenAI's own optional fields take it.
    extension = body.pop("mixllm", None)
    if extension is None:
        extension = {}
    if not isinstance(extension, dict):
        raise RequestError(
            400, f"mixllm must be an object (or null), got {_json_type(extension)}", param="mixllm"
        )
    unknown = sorted(set(extension) - {"willingness_to_pay", "models", "max_cost_usd",
                                       "max_latency_s"})  # fmt: skip
    if unknown:
        raise RequestError(400, f"mixllm has unknown field(s) {', '.join(unknown)}", param="mixllm")

    wtp = _number(extension, headers, "willingness_to_pay", HEADER_WTP, allow_inf=True)
    if model == ROUTER_MODEL or model.startswith(ROUTER_MODEL + ":"):
        point = model.partition(":")[2]
        # Checked even when unused: a bad suffix is refused whatever else the request says.
        suffix = _operating_point(point, settings) if point else None
        # The most explicit value wins: the body's field, the header, the model's suffix, the
        # configured operating point.
        if wtp is None:
            wtp = suffix if suffix is not None else settings.willingness_to_pay
        allowed = _models(extension, headers, pool)
    elif model in pool:
        allowed = (model,)
    else:
        raise RequestError(
            404,
            f"model {model!r} is neither {ROUTER_MODEL!r} nor in the pool ({', '.join(pool)})",
            param="model",
            code="model_not_found",
        )
    return ChatRequest(
        body=body,
        stream=stream,
        text=route_text(messages, settings),
        willingness_to_pay=wtp,
        models=allowed,
        max_cost_usd=_number(extension, headers, "max_cost_usd", HEADER_MAX_COST),
        max_latency_s=_number(extension, headers, "max_latency_s", HEADER_MAX_LATENCY),
    )


def route_text(messages: Sequence[Mapping[str, Any]], settings: ServeConfig) -> str:
    """The text routed on: the messages ``route_on`` names, text parts only, at most
    ``max_route_chars`` characters (the end, nearest the question)."""
    if settings.route_on == "all":
        chosen = list(messages)
    else:
        chosen = [m for m in messages if m.get("role") == "user"]
        if settings.route_on == "last_user":
            chosen = chosen[-1:]
    text = "\n".join(_text_of(m.get("content")) for m in chosen)
    return text[-settings.max_route_chars :]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # parts: text ones are routed on, images and audio are not
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(
                part.get("text"), str)
        )  # fmt: skip
    return ""


def _operating_point(point: str, settings: ServeConfig) -> float:
    if point in settings.operating_points:
        return float(settings.operating_points[point])
    try:
        value = float(point)
    except ValueError:
        names = ", ".join(sorted(settings.operating_points)) or "none configured"
        raise RequestError(
            400,
            f"{ROUTER_MODEL}:{point} names no operating point: give a willingness to pay in "
            f"USD per quality point ({ROUTER_MODEL}:0.01) or a configured name ({names})",
            param="model",
        ) from None
    if not value > 0 or math.isnan(value):
        raise RequestError(400, f"the willingness to pay must be > 0, got {point}", param="model")
    return value


def _number(
    extension: Mapping[str, Any],
    headers: Mapping[str, str],
    key: str,
    header: str,
    *,
    allow_inf: bool = False,
) -> float | None:
    value: Any = extension.get(key)
    where = f"mixllm.{key}"
    if value is None and header in headers:
        where = header
        try:
            value = float(headers[header])
        except ValueError:
            raise RequestError(400, f"{header} must be a number", param=header) from None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(400, f"{where} must be a number, got {value!r}", param=where)
    if math.isnan(value) or value <= 0 or (math.isinf(value) and not allow_inf):
        raise RequestError(400, f"{where} must be a positive number, got {value}", param=where)
    return float(value)


def _json_type(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words (the value itself may be long)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else type(value).__name__


def _models(
    extension: Mapping[str, Any], headers: Mapping[str, str], pool: Sequence[str]
) -> tuple[str, ...] | None:
    value: Any = extension.get("models")
    where = "mixllm.models"
    if value is None and HEADER_MODELS in headers:
        where = HEADER_MODELS
        value = [m.strip() for m in headers[HEADER_MODELS].split(",") if m.strip()]
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(m, str) for m in value):
        raise RequestError(400, f"{where} must be a non-empty list of model names", param=where)
    unknown = [m for m in value if m not in pool]
    if unknown:
        raise RequestError(
            400, f"{where}: {', '.join(unknown)} not in the pool", param=where,
            code="model_not_found",
        )  # fmt: skip
    return tuple(dict.fromkeys(value))
