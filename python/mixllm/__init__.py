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
from mixllm.config import EmbedderConfig, ModelConfig, RouterConfig, TaggerConfig, load_config
from mixllm.data import (
    DatasetUnavailableError,
    RoutingDataset,
    count_tokens,
    load_jsonl,
    load_routerbench,
    load_routerbench_csv,
    save_jsonl,
    split_train_test,
    validation_split,
)
from mixllm.encoders.embedding import Embedder
from mixllm.errors import (
    ConfigError,
    DecisionNotFoundError,
    EmbeddingError,
    ModelFileError,
    ModelIntegrityError,
    NotFittedError,
    ProjectionError,
    UnusedDataWarning,
)
from mixllm.routing.catalog import ROUTERBENCH_MODELS, ModelSpec
from mixllm.routing.pricing import LearnedPrice, learn_prices
from mixllm.routing.router import FitReport, RouteDecision, Router
from mixllm.understanding.projection import (
    LinearProjection,
    PcaProjection,
    TagProjection,
    load_projection,
)
from mixllm.understanding.tagging import DomainLabels, Tagger, Tags

__all__ = [
    "ROUTERBENCH_MODELS",
    "ConfigError",
    "DatasetUnavailableError",
    "Decision",
    "DecisionNotFoundError",
    "DimensionError",
    "DomainLabels",
    "DuplicateModelError",
    "Embedder",
    "EmbedderConfig",
    "EmbeddingError",
    "EmptyPoolError",
    "FitReport",
    "InputTypeError",
    "InvalidInputError",
    "LearnedPrice",
    "LinearProjection",
    "MixllmError",
    "ModelConfig",
    "ModelFileError",
    "ModelIntegrityError",
    "ModelSpec",
    "NotFittedError",
    "PcaProjection",
    "Policy",
    "ProjectionError",
    "RouteDecision",
    "Router",
    "RouterConfig",
    "RoutingDataset",
    "StateFileError",
    "TagProjection",
    "Tagger",
    "TaggerConfig",
    "Tags",
    "UnknownModelError",
    "UnusedDataWarning",
    "__version__",
    "count_tokens",
    "learn_prices",
    "load_config",
    "load_jsonl",
    "load_projection",
    "load_routerbench",
    "load_routerbench_csv",
    "save_jsonl",
    "split_train_test",
    "validation_split",
]
