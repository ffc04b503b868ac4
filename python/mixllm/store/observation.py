"""One learned outcome as it travels between replicas: a stream entry's fields and back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mixllm._core import InvalidInputError

# The field names of a stream entry (short: every entry carries them).
_REPLICA, _ID, _MODEL, _CONTEXT, _QUALITY, _TOKENS, _WEIGHT, _ARM = (
    b"r",
    b"o",
    b"m",
    b"x",
    b"q",
    b"t",
    b"w",
    b"a",
)


@dataclass(frozen=True)
class Observation:
    """What `Policy.update` learns from, with the identity that makes delivering it more than
    once harmless: ``id`` (the decision's id, unique across replicas) and the ``replica`` that
    learned it first."""

    id: str
    replica: str
    model: str
    context: NDArray[np.float64]
    quality: float
    output_tokens: float | None
    weight: float
    # The arm of ``model`` it was learned into (`Router` arm ids): a replica whose arm of that
    # name is another (the model was removed and added again) does not learn it.
    arm: str = ""

    def to_fields(self) -> dict[bytes, bytes]:
        """The stream entry: the context as raw little-endian float64 (exact), the numbers as
        their shortest round-tripping text (exact too)."""
        tokens = b"" if self.output_tokens is None else repr(float(self.output_tokens)).encode()
        return {
            _REPLICA: self.replica.encode(),
            _ID: self.id.encode(),
            _MODEL: self.model.encode(),
            _CONTEXT: np.ascontiguousarray(self.context, dtype="<f8").tobytes(),
            _QUALITY: repr(float(self.quality)).encode(),
            _TOKENS: tokens,
            _WEIGHT: repr(float(self.weight)).encode(),
            _ARM: self.arm.encode(),
        }

    @staticmethod
    def identity(fields: Mapping[bytes, bytes]) -> tuple[str, str] | None:
        """The replica and the id of the observation a stream entry holds (None for another
        kind of entry), without reading the rest."""
        replica, observation_id = fields.get(_REPLICA), fields.get(_ID)
        if replica is None or observation_id is None:
            return None
        return replica.decode(errors="replace"), observation_id.decode(errors="replace")

    @classmethod
    def from_fields(cls, fields: Mapping[bytes, bytes]) -> Observation:
        """Reads a stream entry written by `to_fields`; anything else raises InvalidInputError
        naming what is wrong."""
        try:
            context = np.frombuffer(fields[_CONTEXT], dtype="<f8").astype(np.float64)
            tokens = fields[_TOKENS]
            return cls(
                id=fields[_ID].decode(),
                replica=fields[_REPLICA].decode(),
                model=fields[_MODEL].decode(),
                context=context,
                quality=float(fields[_QUALITY]),
                output_tokens=float(tokens) if tokens else None,
                weight=float(fields[_WEIGHT]),
                arm=fields.get(_ARM, b"").decode(),
            )
        except KeyError as err:
            raise InvalidInputError(f"stream entry lacks field {err.args[0]!r}") from err
        except (ValueError, UnicodeDecodeError) as err:
            raise InvalidInputError(f"malformed stream entry: {err}") from err
