"""Where in a store's stream a saved Router's state stands, so that a replica restarted from it
replays only what follows, even when Redis holds no checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mixllm._core import InvalidInputError

__all__ = ["StreamPosition", "stream_id_key"]


def stream_id_key(stream_id: str) -> tuple[int, int]:
    """A stream id ("milliseconds-sequence") as a tuple that orders as the stream does; raises
    ValueError for anything else."""
    ms, _, seq = stream_id.partition("-")
    key = int(ms), int(seq or 0)
    if min(key) < 0:
        raise InvalidInputError(f"{stream_id!r} is not a stream id")
    return key


@dataclass(frozen=True)
class StreamPosition:
    """The stream of store ``namespace`` up to entry ``last_id`` is in the state (``seq``: how
    many entries the stream had been given up to it, None when not known), and so are the
    observations ``learned`` (decision ids): this replica's own, accepted but not yet read back
    from the stream (or not yet appended, Redis being unreachable), which may lie after it."""

    namespace: str
    last_id: str
    seq: int | None
    learned: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "last_id": self.last_id,
            "seq": self.seq,
            "learned": list(self.learned),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> StreamPosition:
        """Reads what `to_dict` wrote; anything else raises ValueError naming what is wrong."""
        namespace, last_id, seq, learned = (
            raw.get(k) for k in ("namespace", "last_id", "seq", "learned")
        )
        if not isinstance(namespace, str) or not namespace:
            raise InvalidInputError(
                f"the store namespace must be a non-empty str, got {namespace!r}"
            )
        if not isinstance(last_id, str):
            raise InvalidInputError(f"the stream position must be a stream id, got {last_id!r}")
        stream_id_key(last_id)
        if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or seq < 0):
            raise InvalidInputError(f"the stream's entry count must be an int >= 0, got {seq!r}")
        if not isinstance(learned, list) or not all(isinstance(i, str) for i in learned):
            raise InvalidInputError(
                "the observations learned past the position must be a list of ids"
            )
        return cls(namespace, last_id, seq, tuple(learned))
