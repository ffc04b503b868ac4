"""Exceptions raised by mixllm's query-understanding layer (embedding, tagging, projection).

Each one subclasses the builtin exception that fits, so callers who catch ``ValueError`` keep
working, and a project-wide base class can be slotted in above them without breaking anyone.
"""

from __future__ import annotations

__all__ = [
    "EmbeddingError",
    "ModelFileError",
    "ModelIntegrityError",
    "ProjectionError",
]


class EmbeddingError(ValueError):
    """The embedder could not turn the given texts into vectors."""


class ModelFileError(EmbeddingError):
    """A model or tokenizer file is missing, unreadable or not what it claims to be."""


class ModelIntegrityError(ModelFileError):
    """A model or tokenizer file does not match its pinned sha256 (corrupted or replaced)."""


class ProjectionError(ValueError):
    """A projection could not be fitted, applied, saved or loaded (bad shapes, bad file)."""
