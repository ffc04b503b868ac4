"""One source of defaults: the decision core's (`mixllm._core.policy_defaults`,
`model_defaults`), which the binding's signatures, the type stub, a `Policy` built without
arguments and the configuration dataclasses must all give."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path
from typing import Any

from mixllm import _core
from mixllm.config import (
    POLICY_KNOBS,
    TUNED_DEFAULTS,
    TUNED_KNOBS,
    ModelConfig,
    RouterConfig,
)


def signature_defaults(function: Any) -> dict[str, Any]:
    parameters = inspect.signature(function).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def stub_defaults(cls: str, method: str) -> dict[str, Any]:
    """The literal defaults the shipped `_core.pyi` gives one method's parameters."""
    stub = Path(_core.__file__).with_name("_core.pyi")
    tree = ast.parse(stub.read_text(encoding="utf-8"))
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    function = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == method)
    args = function.args
    positional = args.args[len(args.args) - len(args.defaults) :]
    pairs = [
        *zip(positional, args.defaults, strict=True),
        *zip(args.kwonlyargs, args.kw_defaults, strict=True),
    ]
    return {arg.arg: ast.literal_eval(value) for arg, value in pairs if value is not None}


def test_the_core_exposes_every_policy_and_model_default() -> None:
    assert set(_core.policy_defaults()) == {*POLICY_KNOBS, "service_time_smoothing"}
    assert set(_core.model_defaults()) == {"fee", "prior_quality", "prior_output_tokens"}


def test_the_binding_signatures_give_the_core_defaults() -> None:
    assert signature_defaults(_core.Policy) == _core.policy_defaults()
    assert signature_defaults(_core.Policy.add_model) == _core.model_defaults()


def test_the_stub_gives_the_core_defaults() -> None:
    assert stub_defaults("Policy", "__new__") == _core.policy_defaults()
    assert stub_defaults("Policy", "add_model") == _core.model_defaults()


def test_a_policy_built_without_knobs_runs_with_the_defaults() -> None:
    policy = _core.Policy(3)
    assert {k: getattr(policy, k) for k in _core.policy_defaults()} == _core.policy_defaults()


def test_the_configuration_defaults_are_the_core_defaults() -> None:
    router = {f.name: f.default for f in dataclasses.fields(RouterConfig)}
    defaults = _core.policy_defaults()
    for knob in POLICY_KNOBS:
        if knob in TUNED_KNOBS:
            assert router[knob] is None  # chosen by cross-validation at fit
            assert TUNED_DEFAULTS[knob] == defaults[knob]
        else:
            assert router[knob] == defaults[knob], knob
    model = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    assert {k: model[k] for k in _core.model_defaults()} == _core.model_defaults()


def test_a_default_configuration_builds_a_policy_with_the_core_defaults() -> None:
    policy = RouterConfig(models=(ModelConfig("m", 1.0, 2.0),)).new_policy()
    assert {k: getattr(policy, k) for k in POLICY_KNOBS} == {
        k: v for k, v in _core.policy_defaults().items() if k in POLICY_KNOBS
    }
