"""One check per kind of value a user gives: a number that is finite (or may be infinite),
non-negative, positive or bounded in size; an integer at or above a minimum; a flag; a query
text; a model's prices and speeds.

Each check names the value as the caller calls it (``router.alpha``, ``models[0].ttft_s``,
``quality``) and raises the error class of the caller's layer: `ConfigError` for a
configuration, `InvalidInputError` (the default) for an argument. Every message has one form:
"NAME must be a number", "NAME is too large for a float", "NAME must be finite",
"NAME must be >= MIN" or "> MIN", "NAME must be an integer", "NAME must be true or false".
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from mixllm._core import InputTypeError, InvalidInputError

__all__ = [
    "MAX_MAGNITUDE",
    "PROFILE_FIELDS",
    "boolean",
    "check_text",
    "finite",
    "integer",
    "model_profile",
    "non_negative",
    "optional_bounded",
    "positive",
    "shown",
]

# The largest magnitude of a value the decision core learns from (its own bound): feedback
# beyond it is refused up front, before anything is learned.
MAX_MAGNITUDE = 1e100

Error = type[Exception]

# The fields of a model's profile the decision core takes (`Policy.add_model`).
PROFILE_FIELDS = ("price_in", "price_out", "fee", "ttft_s", "tokens_per_s", "concurrency")


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message never carries a huge value."""
    huge_int = isinstance(value, int) and abs(value) >= 10**limit
    text = "a huge int" if huge_int else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def finite(
    name: str, value: object, error: Error = InvalidInputError, *, allow_inf: bool = False
) -> float:
    """A real number (not a bool) as a float: never NaN, and infinite only with
    ``allow_inf``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise error(f"{name} must be a number, got {shown(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise error(f"{name} is too large for a float") from None
    if math.isnan(number) or (math.isinf(number) and not allow_inf):
        raise error(f"{name} must be finite, got {value}")
    return number


def _at_least(
    name: str, value: object, error: Error, minimum: float, *, strict: bool, allow_inf: bool
) -> float:
    number = finite(name, value, error, allow_inf=allow_inf)
    if number < minimum or (strict and number == minimum):
        raise error(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value}")
    return number


def non_negative(
    name: str, value: object, error: Error = InvalidInputError, *, allow_inf: bool = False
) -> float:
    """A finite number >= 0 (or +inf, with ``allow_inf``)."""
    return _at_least(name, value, error, 0.0, strict=False, allow_inf=allow_inf)


def positive(
    name: str, value: object, error: Error = InvalidInputError, *, allow_inf: bool = False
) -> float:
    """A finite number > 0 (or +inf, with ``allow_inf``)."""
    return _at_least(name, value, error, 0.0, strict=True, allow_inf=allow_inf)


def integer(name: str, value: object, error: Error = InvalidInputError, *, minimum: int) -> int:
    """An ``int`` (not a bool) at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise error(f"{name} must be an integer, got {shown(value)}")
    if value < minimum:
        raise error(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def boolean(name: str, value: object, error: Error = InvalidInputError) -> bool:
    """``True`` or ``False`` (not a number that stands for one)."""
    if not isinstance(value, (bool, np.bool_)):
        raise error(f"{name} must be true or false, got {shown(value)}")
    return bool(value)


def optional_bounded(name: str, value: object, *, minimum: float | None = 0.0) -> float | None:
    """A value the decision core learns or decides with (feedback, a per-query limit): None,
    or a finite number of magnitude at most `MAX_MAGNITUDE` (the core's own bound) and, unless
    ``minimum`` is None, at least ``minimum``."""
    if value is None:
        return None
    number = finite(name, value)
    if abs(number) > MAX_MAGNITUDE:
        raise InvalidInputError(f"{name} must be at most {MAX_MAGNITUDE:g} in size, got {value}")
    if minimum is not None and number < minimum:
        raise InvalidInputError(f"{name} must be >= {minimum:g}, got {value}")
    return number


def model_profile(prefix: str, profile: Mapping[str, object], error: Error) -> None:
    """A model's prices (USD per million tokens, and a fee per request, all >= 0), time to
    first token (>= 0), output speed (> 0) and concurrency (an integer >= 1), each named
    ``prefix + field``; and its priors, where ``profile`` has them (a finite prior quality, a
    prior output length >= 0). The decision core checks the same when the model is added."""
    for key in ("price_in", "price_out", "fee", "ttft_s"):
        non_negative(prefix + key, profile[key], error)
    positive(prefix + "tokens_per_s", profile["tokens_per_s"], error)
    integer(prefix + "concurrency", profile["concurrency"], error, minimum=1)
    if "prior_quality" in profile:
        finite(prefix + "prior_quality", profile["prior_quality"], error)
    if "prior_output_tokens" in profile:
        non_negative(prefix + "prior_output_tokens", profile["prior_output_tokens"], error)


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
