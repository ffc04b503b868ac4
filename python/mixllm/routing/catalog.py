"""Profiles of the 11 RouterBench models, ready to add to a :class:`mixllm.Policy`.

Each :class:`ModelSpec` carries what the decision rule needs besides learned statistics:
list prices (USD per million tokens, plus a per-request fee), time to first token, output
speed and how many requests the model serves at once. ``docs/model-catalog.md`` has the table
with sources and the check of the prices against the data.

* **Prices** are the list prices RouterBench's costs were computed with (Hu et al. 2024,
  arXiv 2403.12031: OpenAI and Anthropic list prices for their models, Together AI's
  serverless prices for the open models, as of late 2023).
  :func:`mixllm.routing.pricing.implied_prices` fits them back from a dataset's costs and token
  counts; on the local RouterBench subset, counted with MiniLM's tokenizer, every input price comes
  out at 1.05x the list price and every output price at 0.90-0.95x, so the table is the one the
  costs were made with. No model charges a per-request fee.
* **Latency** (``ttft_s``, ``tokens_per_s``) is the era's public measurement, median over
  a short prompt, single query: Artificial Analysis's comparison of API models in early 2024
  where it lists the model, approximate otherwise (each row says which). They are starting
  points: the router replaces them with observed service times as requests finish.
* **Concurrency** is a stated default, :data:`DEFAULT_CONCURRENCY` requests at once for every
  model: the real limit is an account's rate limit, which no public source states.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mixllm._core import DuplicateModelError, InvalidInputError, UnknownModelError
from mixllm.config import DEFAULT_CONCURRENCY, ModelConfig
from mixllm.cost import call_cost_usd
from mixllm.validation import model_profile

if TYPE_CHECKING:
    from mixllm._core import Policy

__all__ = [
    "ROUTERBENCH_MODELS",
    "ModelSpec",
    "add_to",
    "by_name",
    "names",
    "prices",
]


@dataclass(frozen=True)
class ModelSpec:
    """One model's profile: prices in USD per million tokens, the fee in USD per request,
    time to first token in seconds, output speed in tokens per second, and concurrency."""

    name: str
    price_in: float
    price_out: float
    ttft_s: float
    tokens_per_s: float
    concurrency: int = DEFAULT_CONCURRENCY
    fee: float = 0.0
    price_source: str = ""
    latency_source: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise InvalidInputError("a model needs a name")
        model_profile(f"{self.name}: ", self.profile(), InvalidInputError)

    def profile(self) -> dict[str, Any]:
        """The keyword arguments of :meth:`mixllm.Policy.add_model` for this model."""
        return {
            "price_in": self.price_in,
            "price_out": self.price_out,
            "fee": self.fee,
            "ttft_s": self.ttft_s,
            "tokens_per_s": self.tokens_per_s,
            "concurrency": self.concurrency,
        }

    def model_config(self) -> ModelConfig:
        """This model as a member of a Router's pool."""
        return ModelConfig(self.name, **self.profile())

    def cost_usd(self, prompt_tokens: float, output_tokens: float) -> float:
        """List-price cost of one call."""
        return call_cost_usd(prompt_tokens, output_tokens, self.price_in, self.price_out, self.fee)


_OPENAI = "OpenAI list price, Nov 2023 (RouterBench cost table)"
_ANTHROPIC = "Anthropic list price, 2023 (RouterBench cost table)"
_TOGETHER = "Together AI serverless price, late 2023 (RouterBench cost table)"
_AA = "Artificial Analysis, early 2024: measured throughput"
_APPROX = "approximate: typical of its host in early 2024, not a published measurement"

ROUTERBENCH_MODELS: tuple[ModelSpec, ...] = (
    # name, $/M in, $/M out, ttft_s, tokens/s
    ModelSpec(
        "WizardLM/WizardLM-13B-V1.2", 0.3, 0.3, 0.4, 60.0,
        price_source=_TOGETHER, latency_source=_APPROX + " (Together AI, 13B)",
    ),
    ModelSpec(
        "claude-instant-v1", 0.8, 2.4, 0.6, 80.0,
        price_source=_ANTHROPIC, latency_source=_APPROX + " (Anthropic Claude Instant)",
    ),
    ModelSpec(
        "claude-v1", 8.0, 24.0, 1.2, 30.0,
        price_source=_ANTHROPIC, latency_source=_APPROX + " (taken equal to Claude 2.0)",
    ),
    ModelSpec(
        "claude-v2", 8.0, 24.0, 1.2, 29.0,
        price_source=_ANTHROPIC, latency_source=_AA + " (Claude 2.0, 29 t/s); TTFT " + _APPROX,
    ),
    ModelSpec(
        "gpt-3.5-turbo-1106", 1.0, 2.0, 0.4, 78.0,
        price_source=_OPENAI, latency_source=_AA + " (GPT-3.5 Turbo, 78 t/s); TTFT " + _APPROX,
    ),
    ModelSpec(
        "gpt-4-1106-preview", 10.0, 30.0, 0.7, 20.0,
        price_source=_OPENAI, latency_source=_AA + " (GPT-4 Turbo, 20 t/s); TTFT " + _APPROX,
    ),
    ModelSpec(
        "meta/code-llama-instruct-34b-chat", 0.776, 0.776, 0.4, 45.0,
        price_source=_TOGETHER, latency_source=_APPROX + " (Together AI, 34B)",
    ),
    ModelSpec(
        "meta/llama-2-70b-chat", 0.9, 0.9, 0.5, 69.0,
        price_source=_TOGETHER,
        latency_source=_AA + " (Llama 2 Chat 70B, 69 t/s); TTFT " + _APPROX,
    ),
    ModelSpec(
        "mistralai/mistral-7b-chat", 0.2, 0.2, 0.3, 90.0,
        price_source=_TOGETHER, latency_source=_APPROX + " (Together AI, 7B)",
    ),
    ModelSpec(
        "mistralai/mixtral-8x7b-chat", 0.6, 0.6, 0.4, 107.0,
        price_source=_TOGETHER, latency_source=_AA + " (Mixtral 8x7B, 107 t/s); TTFT " + _APPROX,
    ),
    ModelSpec(
        "zero-one-ai/Yi-34B-Chat", 0.8, 0.8, 0.4, 45.0,
        price_source=_TOGETHER, latency_source=_APPROX + " (Together AI, 34B)",
    ),
)  # fmt: skip


def by_name(name: str) -> ModelSpec:
    """The catalog entry of a RouterBench model, by its name in the data."""
    for spec in ROUTERBENCH_MODELS:
        if spec.name == name:
            return spec
    raise UnknownModelError(f"{name!r} is not a RouterBench model; known: {names()}")


def names() -> list[str]:
    """The catalog's model names, in catalog order."""
    return [spec.name for spec in ROUTERBENCH_MODELS]


def prices(models: Iterable[ModelSpec] = ROUTERBENCH_MODELS) -> dict[str, ModelSpec]:
    """Model name to spec, the ``prices=`` argument of :func:`mixllm.load_jsonl`."""
    return {spec.name: spec for spec in models}


def add_to(
    policy: Policy,
    models: Iterable[ModelSpec] | Iterable[str] = ROUTERBENCH_MODELS,
    **overrides: Any,
) -> None:
    """Adds models to ``policy`` with their catalog profiles (all of them by default).

    ``models`` may be specs or RouterBench names. ``overrides`` replace profile fields for every
    model added (e.g. ``concurrency=32``) or pass ``add_model``'s priors. Nothing is added when
    any of the models is already in the pool.
    """
    specs = [by_name(m) if isinstance(m, str) else m for m in models]
    present = [spec.name for spec in specs if spec.name in policy]
    if present:
        raise DuplicateModelError(f"already in the pool: {present}; nothing was added")
    for spec in specs:
        policy.add_model(spec.name, **{**spec.profile(), **overrides})
