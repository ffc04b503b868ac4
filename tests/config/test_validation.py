"""One check per kind of value (`mixllm.validation`): the configuration, the catalog, the
data loaders and the Router's arguments word the same problem the same way, each with its own
error class."""

from __future__ import annotations

import math

import pytest

import mixllm
from mixllm.config import ModelConfig, RouterConfig
from mixllm.errors import ConfigError
from mixllm.routing.catalog import ModelSpec
from mixllm.validation import finite, integer, model_profile, non_negative, positive, shown

GOOD = {
    "price_in": 1.0,
    "price_out": 2.0,
    "fee": 0.0,
    "ttft_s": 0.5,
    "tokens_per_s": 40.0,
    "concurrency": 4,
}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("price_in", -1.0, "price_in must be >= 0, got -1.0"),
        ("fee", math.nan, "fee must be finite, got nan"),
        ("ttft_s", "fast", "ttft_s must be a number, got 'fast'"),
        ("tokens_per_s", 0.0, "tokens_per_s must be > 0, got 0.0"),
        ("concurrency", 2.5, "concurrency must be an integer, got 2.5"),
        ("concurrency", 0, "concurrency must be >= 1, got 0"),
    ],
)
def test_a_model_profile_is_checked_once_for_the_catalog_and_the_configuration(
    field: str, value: object, message: str
) -> None:
    bad = {**GOOD, field: value}
    with pytest.raises(ConfigError) as configured:
        RouterConfig(models=(ModelConfig("m", **bad),))  # type: ignore[arg-type]
    with pytest.raises(mixllm.InvalidInputError) as listed:
        ModelSpec("m", **bad)  # type: ignore[arg-type]
    assert str(configured.value) == f"models[0].{message}"
    assert str(listed.value) == f"m: {message}"


def test_each_kind_of_value_has_one_wording() -> None:
    with pytest.raises(mixllm.InvalidInputError, match=r"^x must be a number, got True$"):
        finite("x", True)
    with pytest.raises(mixllm.InvalidInputError, match=r"^x is too large for a float$"):
        finite("x", 10**400)
    with pytest.raises(mixllm.InvalidInputError, match=r"^x must be finite, got inf$"):
        non_negative("x", math.inf)
    assert positive("x", math.inf, allow_inf=True) == math.inf
    with pytest.raises(ConfigError, match=r"^x must be > 0, got -inf$"):
        positive("x", -math.inf, ConfigError, allow_inf=True)
    with pytest.raises(mixllm.InvalidInputError, match=r"^x must be an integer, got False$"):
        integer("x", False, minimum=0)
    assert integer("x", 3, minimum=0) == 3


def test_a_huge_value_is_shown_short() -> None:
    assert shown(10**100) == "a huge int"
    assert len(shown("a" * 1000)) == 60


def test_the_profile_check_names_the_priors_when_given() -> None:
    with pytest.raises(ConfigError, match=r"^p\.prior_output_tokens must be >= 0, got -1$"):
        model_profile("p.", {**GOOD, "prior_output_tokens": -1}, ConfigError)
