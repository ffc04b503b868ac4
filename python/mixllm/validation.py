"""Checks of the values users give, one per kind of value."""

from __future__ import annotations

import math

import numpy as np

from mixllm._core import InputTypeError, InvalidInputError

# The largest magnitude of a value the decision core learns from (its own bound): feedback
# beyond it is refused up front, before anything is learned.
MAX_MAGNITUDE = 1e100


def check_optional_number(name: str, value: float | None, *, minimum: float | None = 0.0) -> None:
    """A feedback value: None, or a finite number of magnitude at most `MAX_MAGNITUDE` (what
    the decision core learns from) and at least ``minimum``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise InvalidInputError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidInputError(f"{name} is too large, got {value}") from None
    if not math.isfinite(number):
        raise InvalidInputError(f"{name} must be finite, got {value}")
    if abs(number) > MAX_MAGNITUDE:
        raise InvalidInputError(f"{name} must be at most {MAX_MAGNITUDE:g} in size, got {value}")
    if minimum is not None and number < minimum:
        raise InvalidInputError(f"{name} must be >= {minimum:g}, got {value}")


def check_text(name: str, text: object) -> None:
    """A query text: a ``str`` that is valid Unicode (encodable as UTF-8)."""
    if not isinstance(text, str):
        raise InputTypeError(f"{name} must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidInputError(
            f"{name} is not valid Unicode: {err.reason} at position {err.start}"
        ) from None
