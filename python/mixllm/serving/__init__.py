"""`mixllm serve`: an OpenAI-compatible gateway that routes live traffic and learns from it
(docs/serving.md). The app needs the ``serve`` extra (``pip install "mixllm[serve]"``); it is
imported on first use."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DECISION_HEADER", "Gateway", "create_app", "gateway_router", "serve"]

_HOMES = {
    "DECISION_HEADER": "mixllm.serving.app",
    "Gateway": "mixllm.serving.app",
    "create_app": "mixllm.serving.app",
    "gateway_router": "mixllm.serving.startup",
    "serve": "mixllm.serving.startup",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'mixllm.serving' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
