"""One learned outcome as it travels between replicas: a stream entry's fields and back.

Two kinds: feedback (a quality, and the answer's length when it is taught with it), under the
decision's id; and an answer's length alone, measured when its request completed, under an id
of its own (`length_id`), so that the decision's feedback and its length are each delivered
exactly once, apart."""

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
# A length-only entry says so (a pool change says its own kind in the same field), and has no
# quality: a replica that does not know this kind skips the entry as malformed.
_KIND, _LENGTH = b"k", b"length"
# What a length-only observation's id adds to its decision's id: decision ids never hold it.
_LENGTH_SUFFIX = "/length"


def length_id(decision_id: str) -> str:
    """The id of the length-only observation of decision ``decision_id``."""
    return decision_id + _LENGTH_SUFFIX


@dataclass(frozen=True)
class Observation:
    """What `Policy.update` learns from (or, with no ``quality``, `Policy.update_length`), with
    the identity that makes delivering it more than once harmless: ``id`` (unique across
    replicas: the decision's id, or `length_id` of it) and the ``replica`` that learned it
    first."""

    id: str
    replica: str
    model: str
    context: NDArray[np.float64]
    # None: a length-only observation, whose ``output_tokens`` is then never None.
    quality: float | None
    output_tokens: float | None
    weight: float
    # The arm of ``model`` it was learned into (`Router` arm ids): a replica whose arm of that
    # name is another (the model was removed and added again) does not learn it.
    arm: str = ""

    def to_fields(self) -> dict[bytes, bytes]:
        """The stream entry: the context as raw little-endian float64 (exact), the numbers as
        their shortest round-tripping text (exact too)."""
        tokens = b"" if self.output_tokens is None else repr(float(self.output_tokens)).encode()
        fields = {
            _REPLICA: self.replica.encode(),
            _ID: self.id.encode(),
            _MODEL: self.model.encode(),
            _CONTEXT: np.ascontiguousarray(self.context, dtype="<f8").tobytes(),
            _TOKENS: tokens,
            _WEIGHT: repr(float(self.weight)).encode(),
            _ARM: self.arm.encode(),
        }
        if self.quality is None:
            fields[_KIND] = _LENGTH
        else:
            fields[_QUALITY] = repr(float(self.quality)).encode()
        return fields

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
        kind = fields.get(_KIND)
        if kind is not None and kind != _LENGTH:
            raise InvalidInputError(f"stream entry of unknown kind {kind!r}")
        try:
            context = np.frombuffer(fields[_CONTEXT], dtype="<f8").astype(np.float64)
            tokens = fields[_TOKENS]
            if kind == _LENGTH and not tokens:
                raise InvalidInputError("length-only stream entry without a length")
            return cls(
                id=fields[_ID].decode(),
                replica=fields[_REPLICA].decode(),
                model=fields[_MODEL].decode(),
                context=context,
                quality=None if kind == _LENGTH else float(fields[_QUALITY]),
                output_tokens=float(tokens) if tokens else None,
                weight=float(fields[_WEIGHT]),
                arm=fields.get(_ARM, b"").decode(),
            )
        except KeyError as err:
            raise InvalidInputError(f"stream entry lacks field {err.args[0]!r}") from err
        except (ValueError, UnicodeDecodeError) as err:
            raise InvalidInputError(f"malformed stream entry: {err}") from err
