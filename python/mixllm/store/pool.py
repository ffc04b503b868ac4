"""A change to the pool (a model added, removed or updated) as it travels between replicas, in
the same stream as the observations: a replica that adds a model appends the change before any
observation of the new model, so every replica learns them in that order."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal

from mixllm._core import InvalidInputError
from mixllm.config import ModelConfig

__all__ = ["PoolChange"]

KIND = b"pool"
_KIND, _REPLICA, _OP, _MODEL, _ARM = b"k", b"r", b"op", b"model", b"arm"
_OPS = ("add", "remove", "update")


@dataclass(frozen=True)
class PoolChange:
    """``add`` and ``update`` carry the model's configuration; ``remove`` only its name. An
    ``add`` carries the new arm's id, which every replica gives the arm it adds."""

    op: Literal["add", "remove", "update"]
    replica: str
    model: ModelConfig | str
    arm: str = ""

    @property
    def name(self) -> str:
        return self.model if isinstance(self.model, str) else self.model.name

    def to_fields(self) -> dict[bytes, bytes]:
        model = self.model if isinstance(self.model, str) else asdict(self.model)
        return {
            _KIND: KIND,
            _REPLICA: self.replica.encode(),
            _OP: self.op.encode(),
            _MODEL: json.dumps(model).encode(),
            _ARM: self.arm.encode(),
        }

    @staticmethod
    def is_one(fields: Mapping[bytes, bytes]) -> bool:
        return fields.get(_KIND) == KIND

    @classmethod
    def from_fields(cls, fields: Mapping[bytes, bytes]) -> PoolChange:
        try:
            op = fields[_OP].decode()
            raw = json.loads(fields[_MODEL])
            replica = fields[_REPLICA].decode()
            arm = fields.get(_ARM, b"").decode()
        except KeyError as err:
            raise InvalidInputError(f"pool change lacks field {err.args[0]!r}") from err
        except (ValueError, UnicodeDecodeError) as err:
            raise InvalidInputError(f"malformed pool change: {err}") from err
        if op not in _OPS:
            raise InvalidInputError(f"unknown pool change {op!r}")
        if op == "remove":
            if not isinstance(raw, str):
                raise InvalidInputError(f"a removal names its model, got {raw!r}")
            return cls("remove", replica, raw)
        try:
            model = ModelConfig(**raw)
            model.validate("model")
        except (TypeError, ValueError) as err:
            raise InvalidInputError(f"pool change with a bad model: {err}") from err
        return cls(op, replica, model, arm)  # type: ignore[arg-type]
