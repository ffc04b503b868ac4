"""The gateway's configuration: upstreams per model, the [serve] table, the Router `mixllm serve`
starts with, and the text a request is routed on."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixllm.config import ModelConfig, RouterConfig, ServeConfig, load_config, load_serve_config
from mixllm.errors import ConfigError
from mixllm.serving import gateway_router
from mixllm.serving.chat import route_text
from mixllm.serving.upstream import upstreams_of

MODEL = {"price_in": 1.0, "price_out": 2.0, "ttft_s": 0.1, "tokens_per_s": 50.0, "concurrency": 2}


def test_upstream_fields_are_checked_and_kept_out_of_the_policy() -> None:
    model = ModelConfig(name="m", base_url="http://127.0.0.1:1/v1", api_key_env="KEY", **MODEL)
    model.validate("models[0]")
    assert "base_url" not in model.policy_kwargs()
    with pytest.raises(ConfigError, match=r"models\[0\].base_url must start with http"):
        ModelConfig(name="m", base_url="127.0.0.1:1", **MODEL).validate("models[0]")
    with pytest.raises(ConfigError, match=r"models\[0\].api_key_env must be a non-empty string"):
        ModelConfig(name="m", api_key_env="", **MODEL).validate("models[0]")
    # A configuration with upstreams saves and reads back; one without has no nulls in it.
    config = RouterConfig(models=(model,))
    assert RouterConfig.from_dict(config.to_dict()) == config
    plain = RouterConfig(models=(ModelConfig(name="m", **MODEL),)).to_dict()
    assert "base_url" not in plain["models"][0]


def test_upstreams_default_to_the_pool_name_and_need_a_base_url() -> None:
    with_url = ModelConfig(name="m", base_url="http://127.0.0.1:1/v1/", **MODEL)
    (upstream,) = upstreams_of((with_url,)).values()
    assert upstream.model == "m" and upstream.url == "http://127.0.0.1:1/v1/chat/completions"
    with pytest.raises(ConfigError, match="no upstream for n"):
        upstreams_of((with_url, ModelConfig(name="n", **MODEL)))


def test_the_serve_table_is_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "router.toml"
    path.write_text(
        "[serve]\nport = 9000\nmax_attempts = 2\n[serve.operating_points]\ncheap = 0.001\n"
        '[[models]]\nname = "m"\nprice_in = 1.0\nprice_out = 1.0\nttft_s = 0.1\n'
        "tokens_per_s = 10.0\nconcurrency = 1\n",
        encoding="utf-8",
    )
    settings = load_serve_config(path)
    assert settings.port == 9000 and settings.max_attempts == 2
    assert settings.operating_points == {"cheap": 0.001}
    assert load_config(path).models[0].name == "m"  # [serve] does not trouble the Router
    path.write_text("[serve]\nportt = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown field.*portt"):
        load_serve_config(path)
    for bad, says in [
        ({"max_attempts": 0}, "max_attempts must be >= 1"),
        ({"route_on": "system"}, "route_on"),
        ({"cooldown_s": -1.0}, "cooldown_s"),
        ({"operating_points": {"x": 0.0}}, "operating_points.x"),
    ]:
        with pytest.raises(ConfigError, match=says):
            ServeConfig(**bad)  # type: ignore[arg-type]


def test_the_text_routed_on() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look at"},
                {"type": "image_url", "image_url": {"url": "data:..."}},
                {"type": "text", "text": "this"},
            ],
        },
    ]
    assert route_text(messages, ServeConfig()) == "look at\nthis"
    assert route_text(messages, ServeConfig(route_on="user")) == "first question\nlook at\nthis"
    assert route_text(messages, ServeConfig(route_on="all")).startswith("be brief\n")
    assert route_text(messages, ServeConfig(max_route_chars=4)) == "this"


def test_serve_starts_from_the_shipped_router_and_keeps_what_it_learned(tmp_path: Path) -> None:
    path = tmp_path / "router.toml"
    path.write_text(
        '[[models]]\nname = "gpt-4-1106-preview"\nprice_in = 5.0\nprice_out = 15.0\n'
        'ttft_s = 0.5\ntokens_per_s = 50.0\nconcurrency = 4\nbase_url = "http://127.0.0.1:1/v1"\n'
        '[[models]]\nname = "brand-new"\nprice_in = 0.1\nprice_out = 0.4\nttft_s = 0.2\n'
        "tokens_per_s = 100.0\nconcurrency = 4\nprior_quality = 0.6\n"
        'base_url = "http://127.0.0.1:1/v1"\n',
        encoding="utf-8",
    )
    router, _ = gateway_router(path)
    assert router.models == ["gpt-4-1106-preview", "brand-new"]
    assert router.policy.inspect("gpt-4-1106-preview")["observations"] > 0
    assert router.policy.profile("gpt-4-1106-preview")["price_in"] == 5.0
    assert router.policy.inspect("brand-new")["observations"] == 0
    # A restart from a saved state carries on from it.
    router.save(tmp_path / "state")
    again, _ = gateway_router(path, tmp_path / "state")
    assert again.policy.to_bytes() == router.policy.to_bytes()


@pytest.mark.parametrize(
    ("table", "refused"),
    [('encoder = "minilm-static"', True), ("quantized = true\ncache_size = 0", False)],
)
def test_an_embedder_table_naming_another_encoder_than_the_state_is_refused_at_start(
    tmp_path: Path, table: str, refused: bool
) -> None:
    path = tmp_path / "router.toml"
    path.write_text(
        f"[embedder]\n{table}\n"
        '[[models]]\nname = "gpt-4-1106-preview"\nprice_in = 5.0\nprice_out = 15.0\n'
        'ttft_s = 0.5\ntokens_per_s = 50.0\nconcurrency = 4\nbase_url = "http://127.0.0.1:1/v1"\n',
        encoding="utf-8",
    )
    if refused:
        # The shipped state's projection was fitted on MiniLM's vectors.
        with pytest.raises(ConfigError, match=r"\[embedder\] encoder is 'minilm-static'.*--state"):
            gateway_router(path)
    else:
        router, _ = gateway_router(path)
        assert router.config.embedder.quantized and router.config.embedder.cache_size == 0
