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
from mixllm.catalog import ROUTERBENCH_MODELS, ModelSpec
from mixllm.data import (
    DatasetUnavailableError,
    RoutingDataset,
    count_tokens,
    load_jsonl,
    load_routerbench,
    load_routerbench_csv,
    save_jsonl,
    split_train_test,
)
from mixllm.embedding import Embedder
from mixllm.errors import EmbeddingError, ModelFileError, ModelIntegrityError, ProjectionError
from mixllm.projection import LinearProjection, PcaProjection, TagProjection, load_projection
from mixllm.tagging import DomainLabels, Tagger, Tags

__all__ = [
    "ROUTERBENCH_MODELS",
    "DatasetUnavailableError",
    "Decision",
    "DimensionError",
    "DomainLabels",
    "DuplicateModelError",
    "Embedder",
    "EmbeddingError",
    "EmptyPoolError",
    "InputTypeError",
    "InvalidInputError",
    "LinearProjection",
    "MixllmError",
    "ModelFileError",
    "ModelIntegrityError",
    "ModelSpec",
    "PcaProjection",
    "Policy",
    "ProjectionError",
    "RoutingDataset",
    "StateFileError",
    "TagProjection",
    "Tagger",
    "Tags",
    "UnknownModelError",
    "__version__",
    "count_tokens",
    "load_jsonl",
    "load_projection",
    "load_routerbench",
    "load_routerbench_csv",
    "save_jsonl",
    "split_train_test",
]
