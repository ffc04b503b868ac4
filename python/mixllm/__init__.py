"""mixllm: route each query to the LLM that best trades quality, cost and waiting time."""

from mixllm._core import (
    Decision,
    DimensionError,
    DuplicateModelError,
    EmptyPoolError,
    InputTypeError,
    InvalidInputError,
    MixllmError,
    Policy,
    StateFileError,
    UnknownModelError,
    __version__,
)
from mixllm.embedding import Embedder
from mixllm.errors import EmbeddingError, ModelFileError, ModelIntegrityError, ProjectionError

__all__ = [
    "Decision",
    "DimensionError",
    "DuplicateModelError",
    "Embedder",
    "EmbeddingError",
    "EmptyPoolError",
    "InputTypeError",
    "InvalidInputError",
    "MixllmError",
    "ModelFileError",
    "ModelIntegrityError",
    "Policy",
    "ProjectionError",
    "StateFileError",
    "UnknownModelError",
    "__version__",
]
