"""Exceptions raised by mixllm's Python layer (embedding, tagging, projection, configuration,
data sources, the Router and its store): every exception a caller of mixllm can catch is here
or in the tree the decision core defines (`mixllm.MixllmError` and its subclasses, created in
the Rust extension), which these join. Each also subclasses the builtin that fits, so callers
who catch ``ValueError`` or ``KeyError`` keep working. (The gateway's own request and upstream
failures, in `mixllm.serving`, never leave it: they become HTTP error responses.)
"""

from __future__ import annotations

from mixllm._core import MixllmError

__all__ = [
    "ConfigError",
    "DatasetUnavailableError",
    "DecisionNotFoundError",
    "EmbeddingError",
    "ModelFileError",
    "ModelIntegrityError",
    "NotFittedError",
    "ProjectionError",
    "StateChangedError",
    "StoreError",
    "UnusedDataWarning",
]


class EmbeddingError(MixllmError, ValueError):
    """The embedder could not turn the given texts into vectors."""


class ModelFileError(EmbeddingError):
    """A model or tokenizer file is missing, unreadable or not what it claims to be."""


class ModelIntegrityError(ModelFileError):
    """A model or tokenizer file does not match its pinned sha256 (corrupted or replaced)."""


class ProjectionError(MixllmError, ValueError):
    """A projection could not be fitted, applied, saved or loaded (bad shapes, bad file)."""


class ConfigError(MixllmError, ValueError):
    """A Router configuration is invalid; the message names the field."""


class DecisionNotFoundError(MixllmError, KeyError):
    """Feedback names a decision id the Router does not hold: never issued, expired, or already
    answered (the message says which)."""

    # KeyError's str() quotes its message; these messages are sentences.
    __str__ = BaseException.__str__


class NotFittedError(MixllmError, RuntimeError):
    """The Router has no learned projection yet: fit it, or load a saved state."""


class DatasetUnavailableError(MixllmError, OSError):
    """A data source cannot be reached or read: no network, a missing file or directory."""


class StoreError(MixllmError, RuntimeError):
    """The store cannot be reached, or holds a state this Router cannot use."""


class UnusedDataWarning(UserWarning):
    """Data a Router was given holds outcomes it does not learn from: models not in its pool
    (the message names them)."""


class StateChangedError(MixllmError, RuntimeError):
    """A fit or refit finished after what it started from changed (the pool, or, for a refit,
    the fitted state): its result was discarded and the Router left as it was (the message
    says what changed); run it again. `Router.reroute` raises it too, for a decision made
    before the fit in place (its context is the replaced projection's)."""
