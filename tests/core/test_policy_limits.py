"""Whatever a policy accepts, its saved state loads: `add_model` holds names and the pool to the
loader's limits (directly, through `update_profile` and through a `Router`), and every entry
point turns a bad argument (a lone surrogate, a wrong type, an integer out of range) into a
documented mixllm error that names it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mixllm
from mixllm import InputTypeError, InvalidInputError
from mixllm.config import ModelConfig, RouterConfig
from mixllm.errors import ConfigError
from mixllm.routing.router import Router

MAX_NAME_BYTES = 4096
MAX_MODELS = 4096
PROFILE: dict[str, Any] = {
    "price_in": 1.0,
    "price_out": 2.0,
    "ttft_s": 0.1,
    "tokens_per_s": 50.0,
    "concurrency": 1,
}


def reloaded(policy: mixllm.Policy, tmp_path: Path) -> mixllm.Policy:
    """The policy after a save and a load, checked to be the same state."""
    path = tmp_path / "policy.bin"
    policy.save(path)
    loaded = mixllm.Policy.load(path, dim=policy.dim)
    assert loaded.to_bytes() == policy.to_bytes()
    return loaded


def test_a_name_at_the_byte_limit_saves_and_loads(tmp_path: Path) -> None:
    policy = mixllm.Policy(2)
    # Two bytes of UTF-8 per character: the limit is in bytes, not characters.
    name = "é" * (MAX_NAME_BYTES // 2)
    policy.add_model(name, **PROFILE)
    assert reloaded(policy, tmp_path).models == [name]


@pytest.mark.parametrize("name", ["x" * (MAX_NAME_BYTES + 1), "é" * (MAX_NAME_BYTES // 2 + 1)])
def test_a_name_over_the_byte_limit_is_refused_and_changes_nothing(name: str) -> None:
    policy = mixllm.Policy(2)
    policy.add_model("kept", **PROFILE)
    before = policy.to_bytes()
    with pytest.raises(InvalidInputError, match=f"the limit is {MAX_NAME_BYTES} bytes"):
        policy.add_model(name, **PROFILE)
    assert policy.to_bytes() == before


def test_the_pool_is_held_to_the_model_limit(tmp_path: Path) -> None:
    policy = mixllm.Policy(1)
    for i in range(MAX_MODELS):
        policy.add_model(f"m{i}", **PROFILE)
    before = policy.to_bytes()
    with pytest.raises(InvalidInputError, match=f"the limit is {MAX_MODELS}"):
        policy.add_model("one too many", **PROFILE)
    assert policy.to_bytes() == before
    assert len(reloaded(policy, tmp_path)) == MAX_MODELS
    # Removing one makes room again.
    policy.remove_model("m0")
    policy.add_model("one too many", **PROFILE)


def test_extreme_profiles_that_are_accepted_load(tmp_path: Path) -> None:
    policy = mixllm.Policy(2)
    policy.add_model(
        "extreme",
        price_in=1e308,
        price_out=np.finfo(np.float64).max,
        fee=1e308,
        ttft_s=1e308,
        tokens_per_s=5e-324,
        concurrency=2**32 - 1,
        prior_quality=-1e308,
        prior_output_tokens=1e308,
    )
    policy.update_profile("extreme", price_in=0.0, concurrency=1, now_s=0.0)
    loaded = reloaded(policy, tmp_path)
    assert loaded.profile("extreme")["price_in"] == 0.0


def test_a_router_refuses_what_its_policy_could_not_load(tmp_path: Path) -> None:
    def model(name: str) -> ModelConfig:
        return ModelConfig(name=name, **PROFILE)

    router = Router(RouterConfig(models=(model("a"),)))
    with pytest.raises(InvalidInputError, match=f"the limit is {MAX_NAME_BYTES} bytes"):
        router.add_model(model("b" * (MAX_NAME_BYTES + 1)))
    # The model's configuration is checked first, as for any other bad field.
    with pytest.raises(ConfigError, match="valid Unicode"):
        router.add_model(model("\ud800"))
    assert router.models == ["a"]
    assert [m.name for m in router.config.models] == ["a"]
    # A config holding such a name builds no router.
    with pytest.raises(InvalidInputError, match=f"the limit is {MAX_NAME_BYTES} bytes"):
        Router(RouterConfig(models=(model("c" * (MAX_NAME_BYTES + 1)),)))
    # What it accepts, its policy's state loads.
    router.add_model(model("d" * MAX_NAME_BYTES))
    assert mixllm.Policy.from_bytes(router.policy.to_bytes()).models == router.models


@pytest.fixture
def policy() -> mixllm.Policy:
    p = mixllm.Policy(2)
    p.add_model("m", **PROFILE)
    return p


X = [1.0, 0.0]
# Every entry point that takes a model name, called with `name`.
NAMED: dict[str, Callable[[mixllm.Policy, Any], object]] = {
    "add_model": lambda p, n: p.add_model(n, **PROFILE),
    "remove_model": lambda p, n: p.remove_model(n),
    "update_profile": lambda p, n: p.update_profile(n, fee=1.0),
    "profile": lambda p, n: p.profile(n),
    "update": lambda p, n: p.update(n, X, quality=1.0),
    "fit": lambda p, n: p.fit(n, [X], [1.0]),
    "begin": lambda p, n: p.begin(n, now_s=0.0),
    "end": lambda p, n: p.end(n, 1.0, now_s=0.0),
    "cancel": lambda p, n: p.cancel(n, now_s=0.0),
    "predicted_wait_s": lambda p, n: p.predicted_wait_s(n, now_s=0.0),
    "generation": lambda p, n: p.generation(n),
    "in_flight": lambda p, n: p.in_flight(n),
    "inspect": lambda p, n: p.inspect(n),
}


@pytest.mark.parametrize("call", NAMED.values(), ids=NAMED.keys())
@pytest.mark.parametrize("name", ["\ud800", "m\udfff", "\udc80abc"])
def test_a_name_with_a_lone_surrogate_is_invalid_input(
    policy: mixllm.Policy, call: Callable[[mixllm.Policy, Any], object], name: str
) -> None:
    before = policy.to_bytes()
    with pytest.raises(InvalidInputError, match="a model name must be valid Unicode text"):
        call(policy, name)
    assert policy.to_bytes() == before


@pytest.mark.parametrize("call", NAMED.values(), ids=NAMED.keys())
@pytest.mark.parametrize("name", [5, None, b"m", ["m"]])
def test_a_name_that_is_not_a_str_is_an_input_type_error(
    policy: mixllm.Policy, call: Callable[[mixllm.Policy, Any], object], name: object
) -> None:
    with pytest.raises(InputTypeError, match="a model name must be a str, got"):
        call(policy, name)


def test_membership_of_names_that_cannot_be_names(policy: mixllm.Policy) -> None:
    assert "m" in policy
    assert "\ud800" not in policy
    with pytest.raises(InputTypeError, match="must be a str, got int"):
        _ = 5 in policy  # type: ignore[operator]


@pytest.mark.parametrize(
    ("dim", "error", "match"),
    [
        (-1, InvalidInputError, r"dim must be in 1\.\.=4096, got -1"),
        (0, InvalidInputError, r"dim must be in 1\.\.=4096, got 0"),
        (4097, InvalidInputError, r"dim must be in 1\.\.=4096, got 4097"),
        (2**70, InvalidInputError, "dim is out of range: an integer of 71 bits"),
        (-(2**70), InvalidInputError, "dim is out of range: an integer of -71 bits"),
        (2.0, InputTypeError, "dim must be an integer, got a float"),
        ("2", InputTypeError, "dim must be an integer, got str"),
    ],
)
def test_load_and_from_bytes_reject_bad_dims(
    policy: mixllm.Policy, tmp_path: Path, dim: object, error: type[Exception], match: str
) -> None:
    path = tmp_path / "policy.bin"
    policy.save(path)
    with pytest.raises(error, match=match):
        mixllm.Policy.load(path, dim=dim)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        mixllm.Policy.from_bytes(policy.to_bytes(), dim=dim)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", [5, None, ["policy.bin"]])
def test_paths_of_the_wrong_type(policy: mixllm.Policy, path: object) -> None:
    with pytest.raises(InputTypeError, match=r"path must be a str or an os\.PathLike"):
        policy.save(path)  # type: ignore[arg-type]
    with pytest.raises(InputTypeError, match=r"path must be a str or an os\.PathLike"):
        mixllm.Policy.load(path)  # type: ignore[arg-type]


def test_a_path_the_file_system_cannot_encode(policy: mixllm.Policy, tmp_path: Path) -> None:
    path = tmp_path / "\ud800.bin"
    with pytest.raises(InvalidInputError, match="cannot be encoded for the file system"):
        policy.save(path)
    with pytest.raises(InvalidInputError, match="cannot be encoded for the file system"):
        mixllm.Policy.load(path)
    # A byte the encoding could not decode comes back as a surrogate escape: a valid path.
    escaped = tmp_path / os.fsdecode(b"policy-\xff.bin")
    policy.save(escaped)
    assert mixllm.Policy.load(escaped).to_bytes() == policy.to_bytes()


def test_a_path_with_a_nul_character(policy: mixllm.Policy, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="NUL"):
        policy.save(f"{tmp_path}/a\0b")
    with pytest.raises(InvalidInputError, match="NUL"):
        mixllm.Policy.load(f"{tmp_path}/a\0b")


@pytest.mark.parametrize("data", ["text", 5, None, [1, 2]])
def test_state_bytes_of_the_wrong_type(data: object) -> None:
    with pytest.raises(InputTypeError, match="data must be bytes, got"):
        mixllm.Policy.from_bytes(data)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p: p.update("m", X, quality=10**400), "quality is out of range"),
        (lambda p: p.decide(X, prompt_tokens=10**400, willingness_to_pay=1.0), "prompt_tokens"),
        (lambda p: p.add_model("n", **{**PROFILE, "concurrency": 2**64}), "concurrency"),
        (
            lambda p: p.decide_batch([X], prompt_tokens=1.0, willingness_to_pay=1.0, threads=2**64),
            "threads is out of range",
        ),
        (lambda p: mixllm.Policy(2, refactor_every=2**64), "refactor_every is out of range"),
    ],
    ids=["float arg", "decide", "concurrency", "threads", "constructor"],
)
def test_integers_too_large_to_convert_are_invalid_input(
    policy: mixllm.Policy, call: Callable[[mixllm.Policy], object], match: str
) -> None:
    before = policy.to_bytes()
    with pytest.raises(InvalidInputError, match=match):
        call(policy)
    assert policy.to_bytes() == before


def test_a_list_holding_an_integer_too_large_names_the_cause(policy: mixllm.Policy) -> None:
    with pytest.raises(InputTypeError, match=r"x must be a 1-D array of floats, got list .*large"):
        policy.decide([10**400, 0.0], prompt_tokens=1.0, willingness_to_pay=1.0)
    with pytest.raises(InputTypeError, match=r"X must be a 2-D array of floats, got list .*large"):
        policy.decide_batch([[10**400, 0.0]], prompt_tokens=1.0, willingness_to_pay=1.0)
