"""Domain tags for queries: a zero-shot tagger, or labels that come with a data set.

Zero-shot (:class:`Tagger`): each domain of the taxonomy (:mod:`mixllm.understanding.taxonomy`) gets
a prototype, the L2-normalised mean of the embedded "name: description" and its seed queries.
A query's scores are its cosine similarities to the prototypes; its confidences are the softmax
of those similarities divided by a temperature (0.05 by default, so a cosine lead of 0.05 is a
factor e ≈ 2.7 in odds; MiniLM cosines between a query and the prototypes typically span
0.0-0.6). The tag is the arg-max, or the top k.

Supplied labels (:class:`DomainLabels`): any list of strings (e.g. RouterBench's ``eval_name``)
mapped to integer domain ids in sorted-name order, for the projection to learn from instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mixllm._core import InputTypeError, InvalidInputError
from mixllm.encoders.embedding import Embedder
from mixllm.understanding.taxonomy import DOMAINS, Domain

__all__ = ["DEFAULT_TEMPERATURE", "DomainLabels", "Tagger", "Tags"]

# The softmax temperature of the zero-shot tagger (`TaggerConfig` takes it from here).
DEFAULT_TEMPERATURE = 0.05


@dataclass(frozen=True)
class Tags:
    """Tags for a batch of n queries.

    Attributes:
        ids: (n, k) int64, the top-k domain ids, best first.
        confidences: (n, k) float64, their softmax probabilities.
        probabilities: (n, K) float64, the softmax over all K domains (rows sum to 1).
        names: the K domain names, indexed by id.
    """

    ids: NDArray[np.int64]
    confidences: NDArray[np.float64]
    probabilities: NDArray[np.float64]
    names: tuple[str, ...]

    @property
    def top(self) -> NDArray[np.int64]:
        """(n,) the best domain id of each query."""
        top: NDArray[np.int64] = self.ids[:, 0]
        return top

    def top_names(self) -> list[str]:
        """The best domain name of each query."""
        return [self.names[i] for i in self.top]


class Tagger:
    """Zero-shot domain tagger by cosine similarity to domain prototypes.

    Args:
        embedder: the sentence encoder (the query vectors given to :meth:`tag_vectors` must come
            from the same model); a default :class:`~mixllm.Embedder` when omitted.
        domains: the taxonomy (the built-in 20 domains by default).
        temperature: softmax temperature on cosine similarities, > 0.
    """

    def __init__(
        self,
        embedder: Embedder | None = None,
        domains: Sequence[Domain] = DOMAINS,
        temperature: float = DEFAULT_TEMPERATURE,
    ) -> None:
        if not domains:
            raise InvalidInputError("the taxonomy needs at least one domain")
        if not temperature > 0:
            raise InvalidInputError(f"temperature must be > 0, got {temperature}")
        names = [d.name for d in domains]
        if len(set(names)) != len(names):
            raise InvalidInputError("domain names must be unique")
        self.embedder = embedder if embedder is not None else Embedder()
        self.domains = tuple(domains)
        self.names = tuple(names)
        self.temperature = float(temperature)
        self.prototypes = self._prototypes()
        self._prototypes_t = np.ascontiguousarray(self.prototypes.T, dtype=np.float64)

    def _prototypes(self) -> NDArray[np.float32]:
        rows = []
        for domain in self.domains:
            texts = [f"{domain.name.replace('_', ' ')}: {domain.description}", *domain.seeds]
            mean = self.embedder.embed(texts).mean(axis=0)
            rows.append(mean / np.linalg.norm(mean))
        prototypes: NDArray[np.float32] = np.asarray(rows, dtype=np.float32)
        return prototypes

    def similarities(self, vectors: NDArray[np.floating]) -> NDArray[np.float64]:
        """(n, K) cosine similarities of unit query vectors (n, dim) to the prototypes."""
        matrix = np.asarray(vectors, dtype=np.float64)
        if matrix.ndim == 1:
            matrix = matrix[None, :]
        if matrix.ndim != 2 or matrix.shape[1] != self.prototypes.shape[1]:
            raise InvalidInputError(
                f"vectors must have shape (n, {self.prototypes.shape[1]}), got {matrix.shape}"
            )
        sims: NDArray[np.float64] = matrix @ self._prototypes_t
        return sims

    def tag_vectors(self, vectors: NDArray[np.floating], top_k: int = 1) -> Tags:
        """Tags for already embedded queries."""
        if not 1 <= top_k <= len(self.names):
            raise InvalidInputError(f"top_k must be in 1..{len(self.names)}, got {top_k}")
        probs = self.similarities(vectors)
        probs -= probs.max(axis=1, keepdims=True)
        probs *= 1.0 / self.temperature
        np.exp(probs, out=probs)
        probs /= probs.sum(axis=1, keepdims=True)
        if top_k == 1:
            ids = probs.argmax(axis=1).reshape(-1, 1)
        else:
            ids = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
        ids = ids.astype(np.int64, copy=False)
        confidences = np.take_along_axis(probs, ids, axis=1)
        return Tags(ids, confidences, probs, self.names)

    def tag(self, texts: Sequence[str], top_k: int = 1) -> Tags:
        """Embed ``texts`` and tag them."""
        return self.tag_vectors(self.embedder.embed(texts), top_k)


class DomainLabels:
    """A fixed mapping from label strings (e.g. a benchmark name) to domain ids 0..K-1.

    Ids follow the sorted order of the names, so the same label set always gives the same ids.
    """

    def __init__(self, names: Iterable[str]) -> None:
        unique = sorted(set(names))
        if not unique:
            raise InvalidInputError("DomainLabels needs at least one label")
        for name in unique:
            if not isinstance(name, str):
                raise InputTypeError(f"labels must be str, got {type(name).__name__}")
        self.names: tuple[str, ...] = tuple(unique)
        self._index = {name: i for i, name in enumerate(unique)}

    @classmethod
    def from_labels(cls, labels: Iterable[str]) -> tuple[DomainLabels, NDArray[np.int64]]:
        """The mapping learnt from ``labels`` and the labels' ids."""
        items = list(labels)
        mapping = cls(items)
        return mapping, mapping.encode(items)

    def __len__(self) -> int:
        return len(self.names)

    def encode(self, labels: Iterable[str]) -> NDArray[np.int64]:
        """Ids of ``labels``; a label outside the mapping raises ``KeyError``."""
        ids = []
        for position, label in enumerate(labels):
            try:
                ids.append(self._index[label])
            except KeyError:
                raise KeyError(
                    f"label {label!r} at position {position} is not one of {list(self.names)}"
                ) from None
        return np.asarray(ids, dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Names of domain ids."""
        return [self.names[int(i)] for i in ids]
