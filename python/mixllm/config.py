"""The Router's configuration: the model pool, the decision rule's knobs, the embedder and the
tagger, from a TOML file or from code.

A TOML file looks like this (every table but ``[[models]]`` is optional)::

    [router]
    willingness_to_pay = 0.05     # λ: USD per quality point (see below)
    # target_quality_pct = 95     # or: the cheapest way to 95% of the best model's quality
    # max_cost_pct = 20           # or: the best quality at 20% of its cost
    # budget_per_1000_usd = 1.5   # or: at $1.50 per 1,000 queries
    alpha = 0.01                  # exploration weight
    beta = 0.1                    # latency-penalty weight
    tau_s = 30.0                  # latency tolerance, seconds (inf: no time constraint)
    tau_margin_sd = 0.0           # standard deviations of its error an estimate keeps below τ
    dim = 64                      # projection dimension d (the context has d + 1 entries)
    ridge = 10.0                  # the quality heads' ridge (default: cross-validated at fit)

    [embedder]
    quantized = true
    truncation = "tail"           # keep a long prompt's last 256 tokens, not its first

    [[models]]
    name = "gpt-4-1106-preview"
    price_in = 10.0               # USD per million prompt tokens
    price_out = 30.0              # USD per million output tokens
    ttft_s = 0.6                  # optional, like the two below (defaults: `ModelConfig`)
    tokens_per_s = 40.0
    concurrency = 32
    # Only for `mixllm serve` (docs/serving.md): where the model answers.
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"  # the name of the variable holding the key, never the key
    upstream_model = "gpt-4-1106-preview"

    [serve]                       # `mixllm serve` settings: `ServeConfig`, docs/serving.md
    port = 8000

``willingness_to_pay`` (λ) is in USD per quality point: what one more point of expected quality
is worth paying for. With quality on a 0-1 scale (1 = a right answer), λ = 0.05 means a model
that costs $0.001 more per query must be expected to be right 2% more often (0.001 / 0.05) to
be preferred; λ = inf ignores cost, a small λ makes cost dominate. Every field is checked on
load; an error names the field and what was wrong.

Data without latencies needs no speeds: ``ttft_s``, ``tokens_per_s`` and ``concurrency`` default
to `DEFAULT_TTFT_S`, `DEFAULT_TOKENS_PER_S` and `DEFAULT_CONCURRENCY`, and ``tau_s = inf``
turns the time constraint off (no model is ever too slow and the latency penalty is 0).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mixllm._core import model_defaults, policy_defaults
from mixllm.encoders.embedding import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_INTRA_OP_THREADS,
    DEFAULT_MAX_TOKENS,
    MAX_TOKENS,
    MIN_TOKENS,
    Truncation,
)
from mixllm.errors import ConfigError
from mixllm.understanding.projection import DEFAULT_PULL, DEFAULT_PUSH
from mixllm.understanding.tagging import DEFAULT_TEMPERATURE
from mixllm.validation import boolean, integer, model_profile, non_negative, positive

if TYPE_CHECKING:
    from mixllm._core import Policy
    from mixllm.encoders.embedding import Embedder

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_TOKENS_PER_S",
    "DEFAULT_TTFT_S",
    "EmbedderConfig",
    "ModelConfig",
    "RouterConfig",
    "ServeConfig",
    "TaggerConfig",
    "lists_models",
    "load_config",
    "load_serve_config",
]


# A model's serving speed when nothing says otherwise: middling figures for a hosted LLM. They
# only shape predicted waiting times, which matter only under a finite τ.
DEFAULT_TTFT_S = 0.5
DEFAULT_TOKENS_PER_S = 50.0
# Requests a model serves at once: an account's rate limit, which no public source states.
DEFAULT_CONCURRENCY = 8
# What the decision core is given for τ = inf (it takes finite values only): a tolerance so
# long that the latency penalty exp(L / τ) - 1 is nil for any real latency.
POLICY_TAU_OFF_S = 1e12


# The operating points a user may give instead of λ.
OPERATING_POINTS = ("target_quality_pct", "max_cost_pct", "budget_per_1000_usd")

# The decision core's defaults: the configuration takes them from the core rather than
# repeating them.
_POLICY_DEFAULTS = policy_defaults()
_MODEL_DEFAULTS = model_defaults()

# The knobs a configuration hands to the decision core; a saved state carries them in both
# config.json and policy.bin.
POLICY_KNOBS = (
    "alpha",
    "beta",
    "ridge",
    "length_ridge",
    "tau_s",
    "tau_margin_sd",
    "refactor_every",
)

# Knobs `Router.fit` chooses by cross-validation when they are None, and what they run with
# until then.
TUNED_DEFAULTS = {k: float(_POLICY_DEFAULTS[k]) for k in ("ridge", "length_ridge")}
TUNED_KNOBS = tuple(TUNED_DEFAULTS)


def policy_tau_s(tau_s: float) -> float:
    """The τ the decision core runs with for a configured ``tau_s``."""
    return tau_s if math.isfinite(tau_s) else POLICY_TAU_OFF_S


@dataclass(frozen=True)
class ModelConfig:
    """One model of the pool: prices (USD per million tokens) and serving speed."""

    name: str
    price_in: float
    price_out: float
    ttft_s: float = DEFAULT_TTFT_S
    tokens_per_s: float = DEFAULT_TOKENS_PER_S
    concurrency: int = DEFAULT_CONCURRENCY
    fee: float = float(_MODEL_DEFAULTS["fee"])
    prior_quality: float = float(_MODEL_DEFAULTS["prior_quality"])
    prior_output_tokens: float = float(_MODEL_DEFAULTS["prior_output_tokens"])
    # Where `mixllm serve` sends this model's requests: an OpenAI-compatible endpoint, the name
    # of the environment variable holding its key (the key itself is never stored), and the
    # model name the endpoint knows it by (default: ``name``).
    base_url: str | None = None
    api_key_env: str | None = None
    upstream_model: str | None = None

    def validate(self, where: str) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"{where}.name must be a non-empty string, got {self.name!r}")
        try:
            self.name.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ConfigError(
                f"{where}.name is not valid Unicode: {err.reason} at position {err.start}"
            ) from None
        for key in _UPSTREAM_FIELDS:
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{where}.{key} must be a non-empty string, got {value!r}")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"{where}.base_url must start with http:// or https://, got {self.base_url!r}"
            )
        model_profile(f"{where}.", self.policy_kwargs(), ConfigError)

    def policy_kwargs(self) -> dict[str, Any]:
        """Arguments of `Policy.add_model` after the name."""
        return {k: v for k, v in asdict(self).items() if k != "name" and k not in _UPSTREAM_FIELDS}


_UPSTREAM_FIELDS = ("base_url", "api_key_env", "upstream_model")


@dataclass(frozen=True)
class EmbedderConfig:
    """Which sentence encoder to run; see `mixllm.Embedder` for each field."""

    model_dir: str | None = None
    encoder: str | None = None
    hf_repo: str | None = None
    quantized: bool = False
    intra_op_threads: int = DEFAULT_INTRA_OP_THREADS
    cache_size: int = DEFAULT_CACHE_SIZE
    max_tokens: int = DEFAULT_MAX_TOKENS
    truncation: Truncation = "head"

    def validate(self, where: str = "embedder") -> None:
        sources = ("model_dir", "encoder", "hf_repo")
        for key in sources:
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{where}.{key} must be a non-empty string, got {value!r}")
        given = [key for key in sources if getattr(self, key) is not None]
        if len(given) > 1:
            raise ConfigError(f"{where}: give one of model_dir, encoder and hf_repo, not {given}")
        boolean(f"{where}.quantized", self.quantized, ConfigError)
        if self.encoder is not None:
            from mixllm.encoders.fetch import ENCODERS
            from mixllm.encoders.static_table import STATIC_ENCODER

            known = sorted([*ENCODERS, STATIC_ENCODER])
            if self.encoder not in known:
                raise ConfigError(f"{where}.encoder must be one of {known}, got {self.encoder!r}")
            if self.encoder == STATIC_ENCODER and self.quantized:
                raise ConfigError(
                    f"{where}.quantized must be false with encoder {self.encoder!r}: "
                    "it is a token table, with no int8 copy"
                )
            if self.quantized:
                raise ConfigError(
                    f"{where}.quantized must be false with encoder {self.encoder!r}: "
                    "its int8 conversion is too lossy"
                )
        integer(f"{where}.intra_op_threads", self.intra_op_threads, ConfigError, minimum=1)
        integer(f"{where}.cache_size", self.cache_size, ConfigError, minimum=0)
        integer(f"{where}.max_tokens", self.max_tokens, ConfigError, minimum=MIN_TOKENS)
        if self.max_tokens > MAX_TOKENS:
            raise ConfigError(
                f"{where}.max_tokens must be <= {MAX_TOKENS} (BERT's limit), got {self.max_tokens}"
            )
        if self.truncation not in ("head", "tail"):
            raise ConfigError(
                f'{where}.truncation must be "head" or "tail", got {self.truncation!r}'
            )

    def build(self, **overrides: Any) -> Embedder:
        """The `mixllm.Embedder` this configuration describes; ``overrides`` replace fields
        (``intra_op_threads=4``, ``cache_size=0``)."""
        from mixllm.encoders.embedding import Embedder

        settings = replace(self, **overrides)
        settings.validate()
        return Embedder(
            settings.model_dir,
            encoder=settings.encoder,
            hf_repo=settings.hf_repo,
            quantized=settings.quantized,
            intra_op_threads=settings.intra_op_threads,
            cache_size=settings.cache_size,
            max_tokens=settings.max_tokens,
            truncation=settings.truncation,
        )


@dataclass(frozen=True)
class TaggerConfig:
    """How queries get their domain for the tag-enhanced projection.

    ``mode = "auto"`` uses the labels a data set carries (RouterBench's benchmark names) and falls
    back to the zero-shot tagger; ``"labels"`` requires them; ``"zero-shot"`` ignores them.
    ``pull`` and ``push`` weight the projection's loss (`mixllm.TagProjection`).
    """

    mode: Literal["auto", "labels", "zero-shot"] = "auto"
    pull: float = DEFAULT_PULL
    push: float = DEFAULT_PUSH
    temperature: float = DEFAULT_TEMPERATURE

    def validate(self, where: str = "tagger") -> None:
        if self.mode not in ("auto", "labels", "zero-shot"):
            raise ConfigError(
                f'{where}.mode must be "auto", "labels" or "zero-shot", got {self.mode!r}'
            )
        non_negative(f"{where}.pull", self.pull, ConfigError)
        if self.pull >= 1.0:
            raise ConfigError(f"{where}.pull must be < 1, got {self.pull}")
        non_negative(f"{where}.push", self.push, ConfigError)
        positive(f"{where}.temperature", self.temperature, ConfigError)


@dataclass(frozen=True)
class RouterConfig:
    """Everything a Router is built from."""

    models: tuple[ModelConfig, ...]
    # On RouterBench's pool this is where the router starts sending hard queries to GPT-4
    # (docs/results/routerbench.md).
    willingness_to_pay: float = 0.05
    # The operating point in the user's words, instead of λ (at most one; see
    # `mixllm.routing.calibration`): the cheapest way to reach this % of the best model's quality,
    # the best quality at this % of its cost, or at this many dollars per 1,000 queries.
    target_quality_pct: float | None = None
    max_cost_pct: float | None = None
    budget_per_1000_usd: float | None = None
    alpha: float = float(_POLICY_DEFAULTS["alpha"])
    beta: float = float(_POLICY_DEFAULTS["beta"])
    tau_s: float = float(_POLICY_DEFAULTS["tau_s"])
    # A model is eligible while its latency estimate plus this many standard deviations of the
    # estimate's error stays within τ: a queue held at τ by estimates that are right on average
    # runs over τ about half the time (docs/evaluation.md, "A margin below τ").
    tau_margin_sd: float = float(_POLICY_DEFAULTS["tau_margin_sd"])
    dim: int = 64
    # The quality heads' ridge. None: chosen by cross-validation on the rows the Router is
    # fitted on (`mixllm.routing.tuning`), `TUNED_DEFAULTS["ridge"]` until then; a value given
    # is kept.
    ridge: float | None = None
    # The output-length head has its own ridge: lengths are far more predictable than quality,
    # and the shrinkage quality needs would pull long answers' predicted cost and service time
    # towards the short answers' (docs/evaluation.md, "The length head"). None: chosen as
    # ``ridge`` is, on the log lengths.
    length_ridge: float | None = None
    refactor_every: int = int(_POLICY_DEFAULTS["refactor_every"])
    binary_feedback_weight: float = 0.5
    feedback_ttl_s: float = 3600.0
    max_pending: int = 100_000
    # Feedback kept for `Router.refit` (the newest; 0: none).
    feedback_log_size: int = 10_000
    # The Router refits itself in the background (`Router.refit`) once the feedback logged
    # since its last fit reaches this share of that fit's rows (0.5: when its rows have grown
    # by half; docs/results/any-data.md, "Learning online"). Off (0) by default: a refit's
    # cost is the deployment's to schedule, and the gain measured on held-out train rows did
    # not show on the test splits.
    refit_growth: float = 0.0
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    tagger: TaggerConfig = field(default_factory=TaggerConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        where = "router"
        positive(
            f"{where}.willingness_to_pay", self.willingness_to_pay, ConfigError, allow_inf=True
        )
        given = [k for k in OPERATING_POINTS if getattr(self, k) is not None]
        if len(given) > 1:
            raise ConfigError(f"{where}: give one of {', '.join(OPERATING_POINTS)}, not {given}")
        for knob in given:
            positive(f"{where}.{knob}", getattr(self, knob), ConfigError)
        non_negative(f"{where}.alpha", self.alpha, ConfigError)
        non_negative(f"{where}.beta", self.beta, ConfigError)
        positive(f"{where}.tau_s", self.tau_s, ConfigError, allow_inf=True)
        non_negative(f"{where}.tau_margin_sd", self.tau_margin_sd, ConfigError)
        integer(f"{where}.dim", self.dim, ConfigError, minimum=1)
        if self.dim > 384:
            raise ConfigError(f"router.dim must be <= 384 (the embedding size), got {self.dim}")
        for knob in TUNED_KNOBS:
            if getattr(self, knob) is not None:
                positive(f"{where}.{knob}", getattr(self, knob), ConfigError)
        integer(f"{where}.refactor_every", self.refactor_every, ConfigError, minimum=1)
        positive(f"{where}.binary_feedback_weight", self.binary_feedback_weight, ConfigError)
        positive(f"{where}.feedback_ttl_s", self.feedback_ttl_s, ConfigError)
        integer(f"{where}.max_pending", self.max_pending, ConfigError, minimum=1)
        integer(f"{where}.feedback_log_size", self.feedback_log_size, ConfigError, minimum=0)
        non_negative(f"{where}.refit_growth", self.refit_growth, ConfigError)
        if not isinstance(self.models, tuple):
            raise ConfigError("models must be a tuple of ModelConfig")
        seen: set[str] = set()
        for i, model in enumerate(self.models):
            if not isinstance(model, ModelConfig):
                raise ConfigError(f"models[{i}] must be a ModelConfig, got {type(model).__name__}")
            model.validate(f"models[{i}]")
            if model.name in seen:
                raise ConfigError(f"models[{i}].name {model.name!r} appears twice")
            seen.add(model.name)
        self.embedder.validate()
        self.tagger.validate()

    def operating_point(self) -> dict[str, float]:
        """The operating point configured in the user's words, if any (one entry)."""
        return {k: getattr(self, k) for k in OPERATING_POINTS if getattr(self, k) is not None}

    def knob(self, name: str) -> float:
        """The value a knob of `TUNED_KNOBS` runs with: as set, else its default."""
        value = getattr(self, name)
        return float(TUNED_DEFAULTS[name] if value is None else value)

    def policy_knobs(self) -> dict[str, Any]:
        """The `POLICY_KNOBS` as the decision core runs with them: a tuned knob left unset at
        its default, τ = inf as `POLICY_TAU_OFF_S`."""
        knobs = {k: getattr(self, k) for k in POLICY_KNOBS}
        knobs.update({k: self.knob(k) for k in TUNED_KNOBS})
        knobs["tau_s"] = policy_tau_s(self.tau_s)
        return knobs

    def with_models(self, models: tuple[ModelConfig, ...]) -> RouterConfig:
        return replace(self, models=models)

    def new_policy(self, context_dim: int | None = None) -> Policy:
        """An empty `mixllm.Policy` with these knobs and every model of the pool added, for
        contexts of ``context_dim`` entries (default: the projection's d plus the constant)."""
        from mixllm._core import Policy

        policy = Policy(self.dim + 1 if context_dim is None else context_dim, **self.policy_knobs())
        for model in self.models:
            policy.add_model(model.name, **model.policy_kwargs())
        return policy

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON- and TOML-compatible dict that `from_dict` reads back."""
        data = asdict(self)
        router = {k: data.pop(k) for k in list(data) if k not in ("models", "embedder", "tagger")}
        # A knob left to cross-validation is left out, as a file leaves it out.
        router = {
            k: v
            for k, v in router.items()
            if not (k in (*TUNED_KNOBS, *OPERATING_POINTS) and v is None)
        }
        embedder = {k: v for k, v in data["embedder"].items() if v is not None}
        return {
            "router": router,
            "embedder": embedder,
            "tagger": data["tagger"],
            # Unset upstream fields are left out: TOML has no null.
            "models": [{k: v for k, v in m.items() if v is not None} for m in data["models"]],
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, default_models: Sequence[ModelConfig] = ()
    ) -> RouterConfig:
        """Builds a config from the layout of the TOML file, naming any unknown or bad field.
        ``default_models`` is the pool when the file has no ``[[models]]`` (none: required)."""
        # ``[serve]`` belongs to `mixllm serve` (`load_serve_config`), not to the Router.
        _known_keys("the configuration", data, {"router", "embedder", "tagger", "models", "serve"})
        router = _table(data, "router")
        _known_keys(
            "router", router, {f.name for f in fields(cls)} - {"models", "embedder", "tagger"}
        )
        embedder = _table(data, "embedder")
        _known_keys("embedder", embedder, {f.name for f in fields(EmbedderConfig)})
        tagger = _table(data, "tagger")
        _known_keys("tagger", tagger, {f.name for f in fields(TaggerConfig)})
        if "models" not in data and default_models:
            models = list(default_models)
        else:
            models = _models(data.get("models", []))
        return cls(
            models=tuple(models),
            embedder=EmbedderConfig(**embedder),
            tagger=TaggerConfig(**tagger),
            **router,
        )


@dataclass(frozen=True)
class ServeConfig:
    """The ``[serve]`` table: how `mixllm serve` listens, routes and recovers (docs/serving.md).

    ``willingness_to_pay`` is the operating point of ``"model": "mixllm"`` (default: the
    router's λ); ``operating_points`` names others for ``"model": "mixllm:NAME"``.
    ``route_on`` is the text routed on: the last user message, every user message, or every
    message; at most ``max_route_chars`` characters of it (its end) are embedded.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    willingness_to_pay: float | None = None
    operating_points: Mapping[str, float] = field(default_factory=dict)
    route_on: Literal["last_user", "user", "all"] = "last_user"
    max_route_chars: int = 16_384
    max_body_bytes: int = 4 * 1024 * 1024
    # Models tried for one request: the chosen one, then the next best by the decision's scores.
    max_attempts: int = 3
    connect_timeout_s: float = 5.0
    # Longest wait for an upstream's first byte, and for each later chunk of a stream.
    read_timeout_s: float = 60.0
    # Consecutive failures that cool a model down, and for how long before it is tried again.
    cooldown_failures: int = 3
    cooldown_s: float = 30.0
    snapshot_every_s: float = 300.0
    # Longest wait for requests in flight to finish at shutdown before the last snapshot.
    drain_timeout_s: float = 10.0
    # Background refits (`BackgroundRefit`): after this many learned feedbacks, and/or every
    # this many seconds when feedback arrived; both None (the default): never.
    refit_every_feedbacks: int | None = None
    refit_every_s: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, where: str = "serve") -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"{where}.host must be a non-empty string, got {self.host!r}")
        integer(f"{where}.port", self.port, ConfigError, minimum=0)
        if self.port > 65535:
            raise ConfigError(f"{where}.port must be <= 65535, got {self.port}")
        if self.willingness_to_pay is not None:
            positive(
                f"{where}.willingness_to_pay", self.willingness_to_pay, ConfigError, allow_inf=True
            )
        if not isinstance(self.operating_points, Mapping):
            raise ConfigError(f"{where}.operating_points must be a table of name = USD")
        for name, value in self.operating_points.items():
            positive(f"{where}.operating_points.{name}", value, ConfigError, allow_inf=True)
        if self.route_on not in ("last_user", "user", "all"):
            raise ConfigError(
                f'{where}.route_on must be "last_user", "user" or "all", got {self.route_on!r}'
            )
        integer(f"{where}.max_route_chars", self.max_route_chars, ConfigError, minimum=1)
        integer(f"{where}.max_body_bytes", self.max_body_bytes, ConfigError, minimum=1024)
        integer(f"{where}.max_attempts", self.max_attempts, ConfigError, minimum=1)
        integer(f"{where}.cooldown_failures", self.cooldown_failures, ConfigError, minimum=1)
        for key in (
            "connect_timeout_s",
            "read_timeout_s",
            "cooldown_s",
            "snapshot_every_s",
            "drain_timeout_s",
        ):
            positive(f"{where}.{key}", getattr(self, key), ConfigError)
        if self.refit_every_feedbacks is not None:
            integer(
                f"{where}.refit_every_feedbacks", self.refit_every_feedbacks, ConfigError, minimum=1
            )
        if self.refit_every_s is not None:
            positive(f"{where}.refit_every_s", self.refit_every_s, ConfigError)


def load_serve_config(path: str | Path) -> ServeConfig:
    """The ``[serve]`` table of a configuration file (every field optional)."""
    source = Path(path)
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"cannot read configuration {source}: {err.strerror}") from err
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{source} is not valid TOML: {err}") from err
    try:
        table = _table(data, "serve")
        _known_keys("serve", table, {f.name for f in fields(ServeConfig)})
        return ServeConfig(**table)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from err


def _models(raw_models: object) -> list[ModelConfig]:
    """The ``[[models]]`` tables, each checked for unknown and missing fields."""
    if not isinstance(raw_models, list) or not raw_models:
        raise ConfigError("models must be a non-empty list of [[models]] tables")
    models = []
    model_keys = {f.name for f in fields(ModelConfig)}
    required = {
        f.name for f in fields(ModelConfig) if f.default is MISSING and f.default_factory is MISSING
    }
    for i, raw in enumerate(raw_models):
        if not isinstance(raw, Mapping):
            raise ConfigError(f"models[{i}] must be a table, got {type(raw).__name__}")
        _known_keys(f"models[{i}]", raw, model_keys)
        missing = sorted(required - raw.keys())
        if missing:
            raise ConfigError(f"models[{i}] is missing {', '.join(missing)}")
        models.append(ModelConfig(**raw))
    return models


def lists_models(path: str | Path) -> bool:
    """Whether a configuration file lists its pool (``[[models]]``); True for a file that cannot
    be read or parsed, which :func:`load_config` then reports."""
    try:
        return "models" in tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return True


def load_config(
    path: str | Path,
    *,
    default_models: Sequence[ModelConfig] = (),
    defaults: Mapping[str, Mapping[str, Any]] | None = None,
) -> RouterConfig:
    """Reads a TOML configuration file. ``default_models`` is the pool when the file lists
    none (without them a file must list its models); ``defaults`` gives fields the file does
    not set a value other than the usual default, by table (``{"embedder": {"quantized":
    True}}``)."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read configuration {source}: {err.strerror}") from err
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source} is not valid TOML: {err}") from err
    try:
        for table, values in (defaults or {}).items():
            section = data.setdefault(table, {})
            if isinstance(section, dict):  # anything else is reported by from_dict
                for key, value in values.items():
                    section.setdefault(key, value)
        return RouterConfig.from_dict(data, default_models=default_models)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from err


def _table(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{key}] must be a table, got {type(value).__name__}")
    return dict(value)


def _known_keys(where: str, table: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(
            f"{where} has unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
