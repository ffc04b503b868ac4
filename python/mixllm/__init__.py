"""mixllm: route each query to the LLM that best trades quality, cost and waiting time."""

from mixllm._core import __version__

__all__ = ["__version__"]
