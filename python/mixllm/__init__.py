"""mixllm: route each query to the LLM that best trades quality, cost and waiting time."""

from mixllm._core import __version__
from mixllm.embedding import Embedder
from mixllm.errors import EmbeddingError, ModelFileError, ModelIntegrityError, ProjectionError

__all__ = [
    "Embedder",
    "EmbeddingError",
    "ModelFileError",
    "ModelIntegrityError",
    "ProjectionError",
    "__version__",
]
