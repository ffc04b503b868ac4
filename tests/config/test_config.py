"""Router configuration: TOML in, validated dataclasses out, every error naming its field."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mixllm import MixllmError
from mixllm.config import ModelConfig, RouterConfig, load_config
from mixllm.errors import ConfigError

GOOD = """
[router]
willingness_to_pay = 0.05
alpha = 0.02
tau_s = 20.0
dim = 32
ridge = 30.0
length_ridge = 0.5
tau_margin_sd = 1.5

[embedder]
quantized = true
cache_size = 10
max_tokens = 128
truncation = "tail"

[tagger]
mode = "zero-shot"
push = 2.0

[[models]]
name = "big"
price_in = 10.0
price_out = 30.0
ttft_s = 0.6
tokens_per_s = 40.0
concurrency = 8

[[models]]
name = "self-hosted"
price_in = 0
price_out = 0
fee = 0.0
ttft_s = 0.1
tokens_per_s = 90
concurrency = 2
prior_quality = 0.3
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "router.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_full_file_is_read_into_every_field(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.willingness_to_pay == 0.05
    assert (config.alpha, config.beta, config.tau_s, config.dim) == (0.02, 0.1, 20.0, 32)
    assert (config.ridge, config.length_ridge) == (30.0, 0.5)
    assert config.tau_margin_sd == 1.5
    policy = config.new_policy()
    assert (policy.ridge, policy.length_ridge, policy.tau_margin_sd) == (30.0, 0.5, 1.5)
    assert config.embedder.quantized and config.embedder.cache_size == 10
    assert (config.embedder.max_tokens, config.embedder.truncation) == (128, "tail")
    assert (config.tagger.mode, config.tagger.push, config.tagger.pull) == ("zero-shot", 2.0, 0.5)
    assert [m.name for m in config.models] == ["big", "self-hosted"]
    assert config.models[1] == ModelConfig(
        "self-hosted", 0, 0, 0.1, 90, 2, fee=0.0, prior_quality=0.3
    )


def test_to_dict_round_trips(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert RouterConfig.from_dict(config.to_dict()) == config


def test_infinite_willingness_to_pay_is_allowed() -> None:
    model = ModelConfig("m", 1, 1, 0.1, 10, 1)
    assert math.isinf(RouterConfig(models=(model,), willingness_to_pay=math.inf).willingness_to_pay)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("price_in = 10.0", "price_in = -1.0", r"models\[0\]\.price_in must be >= 0"),
        ("tokens_per_s = 40.0", "tokens_per_s = 0", r"models\[0\]\.tokens_per_s must be > 0"),
        ("concurrency = 8", "concurrency = 0", r"models\[0\]\.concurrency must be >= 1"),
        ("concurrency = 8", "concurrency = 2.5", r"models\[0\]\.concurrency must be an integer"),
        ('name = "big"', 'name = ""', r"models\[0\]\.name must be a non-empty string"),
        ('name = "self-hosted"', 'name = "big"', r"models\[1\]\.name 'big' appears twice"),
        ("ttft_s = 0.6", 'ttft_s = "fast"', r"models\[0\]\.ttft_s must be a number"),
        ("ttft_s = 0.6", "ttft_s = nan", r"models\[0\]\.ttft_s must be finite"),
        ("price_in = 10.0", "", r"models\[0\] is missing price_in"),
        ("ttft_s = 0.6", "ttft_s = 0.6\ncolour = 1", r"models\[0\] has unknown field\(s\) colour"),
        ("willingness_to_pay = 0.05", "willingness_to_pay = 0", "willingness_to_pay must be > 0"),
        ("dim = 32", "dim = 500", "router.dim must be <= 384"),
        ("alpha = 0.02", "alpha = -1", "router.alpha must be >= 0"),
        ("length_ridge = 0.5", "length_ridge = 0", "router.length_ridge must be > 0"),
        ("tau_margin_sd = 1.5", "tau_margin_sd = -1", "router.tau_margin_sd must be >= 0"),
        ("tau_margin_sd = 1.5", "tau_margin_sd = inf", "router.tau_margin_sd must be finite"),
        ("tau_s = 20.0", "tau_s = 0", "router.tau_s must be > 0"),
        ("tau_s = 20.0", "tau = 20.0", r"router has unknown field\(s\) tau"),
        ("quantized = true", 'quantized = "yes"', "embedder.quantized must be true or false"),
        ('truncation = "tail"', 'truncation = "end"', "embedder.truncation must be"),
        ("max_tokens = 128", "max_tokens = 1024", "embedder.max_tokens must be <= 512"),
        ("max_tokens = 128", "max_tokens = 0", "embedder.max_tokens must be >= 3"),
        (
            "cache_size = 10",
            'cache_size = 10\nencoder = "mpnet"',
            "embedder.encoder must be one of",
        ),
        (
            "cache_size = 10",
            'cache_size = 10\nencoder = "all-mpnet-base-v2"',
            "embedder.quantized must be false with encoder 'all-mpnet-base-v2'",
        ),
        (
            "cache_size = 10",
            'cache_size = 10\nencoder = "all-mpnet-base-v2"\nmodel_dir = "m"',
            r"give one of model_dir, encoder and hf_repo, not \['model_dir', 'encoder'\]",
        ),
        ('mode = "zero-shot"', 'mode = "magic"', "tagger.mode must be"),
        ("push = 2.0", "pull = 1.0", "tagger.pull must be < 1"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in GOOD
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(write(tmp_path, GOOD.replace(old, new, 1)))
    assert str(tmp_path / "router.toml") in str(caught.value)
    assert isinstance(caught.value, MixllmError)
    assert isinstance(caught.value, ValueError)


def test_a_pool_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="models must be a non-empty list"):
        load_config(write(tmp_path, "[router]\nalpha = 0.1\n"))


def test_defaults_fill_only_the_fields_a_file_leaves_unset(tmp_path: Path) -> None:
    defaults = {"embedder": {"quantized": True, "cache_size": 7}}
    config = load_config(write(tmp_path, GOOD.replace("quantized = true", "")), defaults=defaults)
    assert config.embedder.quantized is True
    assert config.embedder.cache_size == 10  # the file's own value wins
    pool = (ModelConfig("m", 1, 1, 0.1, 10, 1),)
    bare = load_config(write(tmp_path, "[router]\nalpha = 0.1\n"), default_models=pool,
                       defaults=defaults)  # fmt: skip
    assert (bare.embedder.quantized, bare.embedder.cache_size) == (True, 7)


def test_a_settings_only_file_takes_the_default_pool_when_given_one(tmp_path: Path) -> None:
    pool = (ModelConfig("m", 1, 1, 0.1, 10, 1),)
    config = load_config(write(tmp_path, "[router]\nalpha = 0.1\n"), default_models=pool)
    assert (config.models, config.alpha) == (pool, 0.1)
    # The file's own pool wins, and an empty one is still an error.
    assert load_config(write(tmp_path, GOOD), default_models=pool).models[0].name == "big"
    with pytest.raises(ConfigError, match="models must be a non-empty list"):
        load_config(write(tmp_path, "models = []\n"), default_models=pool)


def test_syntax_errors_and_missing_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[router\n"))
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config(tmp_path / "absent.toml")


def test_code_built_configs_are_validated_too() -> None:
    with pytest.raises(ConfigError, match=r"models\[0\]\.price_out must be >= 0"):
        RouterConfig(models=(ModelConfig("m", 1.0, -2.0, 0.1, 10.0, 1),))


def test_eval_runs_the_encoder_as_configured(tmp_path: Path) -> None:
    """``mixllm eval --config`` runs the encoder as ``mixllm train`` and `Router` do (float32
    unless the file says otherwise); ``--quantized`` asks for the int8 copy."""
    from mixllm.cli import _eval_config

    named = write(tmp_path, '[embedder]\nencoder = "all-mpnet-base-v2"\n')
    config = _eval_config(str(named), quantized=False)
    assert config is not None
    assert (config.embedder.encoder, config.embedder.quantized) == ("all-mpnet-base-v2", False)
    settings = write(tmp_path, "[router]\nalpha = 0.1\n")
    shipped = _eval_config(str(settings), quantized=False)
    assert shipped is not None and shipped.embedder.quantized is False
    assert shipped.alpha == 0.1 and shipped.models == ()  # the data's models, priced by the run
    fast = _eval_config(str(settings), quantized=True)
    assert fast is not None and fast.embedder.quantized is True


def test_train_takes_the_pool_from_the_file_or_else_the_data(tmp_path: Path) -> None:
    """``mixllm train --config``: a file's own pool; for a file without one, the data's models
    at prices learned from its logged costs, with the file's settings."""
    from mixllm.cli import _train_config
    from mixllm.data import RoutingDataset

    data = RoutingDataset(
        prompts=["a", "b", "c"],
        models=["gpt-4-1106-preview", "my-llama"],
        quality=[[1.0, 0.0]] * 3,
        cost_usd=[[1e-5, 2e-6], [2e-5, 4e-6], [3e-5, 6e-6]],
        prompt_tokens=[1.0, 2.0, 3.0],
        output_tokens=None,
        latency_s=None,
        labels=None,
        split=None,
        ids=["0", "1", "2"],
    )
    settings = write(tmp_path, "[router]\nalpha = 0.1\n")
    pool, notes = _train_config(str(settings), data)
    assert [m.name for m in pool.models] == ["gpt-4-1106-preview", "my-llama"]
    assert pool.alpha == 0.1 and pool.models[0].price_in > pool.models[1].price_in > 0
    assert any("learned from the data's logged costs" in note for note in notes)
    listed, notes = _train_config(str(write(tmp_path, GOOD)), data)
    assert [m.name for m in listed.models] == ["big", "self-hosted"] and notes == []


def test_the_embedder_is_built_as_configured(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, GOOD)).embedder
    embedder = settings.build(quantized=False)
    assert (embedder.max_tokens, embedder.truncation, embedder.quantized) == (128, "tail", False)
    with pytest.raises(ConfigError, match=r"embedder\.truncation must be"):
        settings.build(truncation="both")
