"""Type stubs of the Rust extension: the decision core."""

from collections.abc import Iterable, Sequence
from os import PathLike
from typing import Any, ClassVar, Literal, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "Decision",
    "DimensionError",
    "DuplicateModelError",
    "EmptyPoolError",
    "InputTypeError",
    "InvalidInputError",
    "MixllmError",
    "NoModelWithinLimitsError",
    "Policy",
    "StateFileError",
    "StaticEncoder",
    "Tokenizer",
    "UnknownModelError",
    "__version__",
    "model_defaults",
    "policy_defaults",
]

__version__: str

def policy_defaults() -> dict[str, float | int]:
    """The policy knobs a `Policy` takes when the constructor is not given them (``alpha``,
    ``beta``, ``ridge``, ``length_ridge``, ``tau_s``, ``tau_margin_sd``, ``refactor_every``,
    ``service_time_smoothing``)."""

def model_defaults() -> dict[str, float]:
    """The model fields `Policy.add_model` fills in when it is not given them (``fee``,
    ``prior_quality``, ``prior_output_tokens``)."""

class MixllmError(Exception):
    """Base class of every error mixllm raises."""

class InvalidInputError(MixllmError, ValueError):
    """An argument is out of range: NaN or infinite values, a negative price, a bad setting."""

class DimensionError(InvalidInputError):
    """An array has the wrong shape or length for this policy."""

class InputTypeError(MixllmError, TypeError):
    """An argument has the wrong type or dtype."""

class UnknownModelError(MixllmError, KeyError):
    """No model of that name is in the pool."""

class DuplicateModelError(MixllmError, ValueError):
    """A model of that name is already in the pool."""

class EmptyPoolError(MixllmError, LookupError):
    """A decision was asked of a pool with no models."""

class NoModelWithinLimitsError(MixllmError, LookupError):
    """No model allowed for a request is predicted within its cost ceiling or its latency
    tolerance; the message names the limit."""

class StateFileError(MixllmError, ValueError):
    """A saved state is not mixllm's, is corrupt or truncated, or does not fit."""

_Vector = npt.ArrayLike
_Matrix = npt.ArrayLike

@final
class Decision:
    """The outcome of `Policy.decide`. Per-model arrays follow `models`."""

    __hash__: ClassVar[None]  # type: ignore[assignment]
    @property
    def model(self) -> str:
        """Name of the chosen model."""
    @property
    def index(self) -> int:
        """Position of the chosen model in `models`."""
    @property
    def models(self) -> list[str]:
        """The models considered, in pool order."""
    @property
    def quality(self) -> npt.NDArray[np.float64]:
        """Predicted quality per model."""
    @property
    def cost(self) -> npt.NDArray[np.float64]:
        """Predicted cost per model, in USD."""
    @property
    def latency(self) -> npt.NDArray[np.float64]:
        """Predicted latency per model, in seconds: (queue wait + first token + generation),
        scaled by the model's service ratio (how much longer than predicted its requests have
        run)."""
    @property
    def latency_sd(self) -> npt.NDArray[np.float64]:
        """Standard deviation of each latency estimate's error, in seconds, from the errors
        of the model's recent service estimates, its queue and its service ratio (0 before any
        has finished)."""
    @property
    def service(self) -> npt.NDArray[np.float64]:
        """Predicted service time per model, in seconds (first token + generation, as the
        length head predicts it, before the service ratio). What `Policy.begin` takes for the
        chosen model."""
    @property
    def chosen_service_s(self) -> float:
        """The chosen model's predicted service time, in seconds: what `Policy.begin` takes."""
    @property
    def output_tokens(self) -> npt.NDArray[np.float64]:
        """Predicted output tokens per model."""
    @property
    def uncertainty(self) -> npt.NDArray[np.float64]:
        """LinUCB confidence width sqrt(xᵀA⁻¹x) per model."""
    @property
    def penalty(self) -> npt.NDArray[np.float64]:
        """Latency penalty exp(L/τ) - 1 per model."""
    @property
    def score(self) -> npt.NDArray[np.float64]:
        """Score per model; the chosen model has the best among those not excluded."""
    @property
    def excluded(self) -> npt.NDArray[np.bool_]:
        """Whether each model was excluded: its predicted latency, plus `tau_margin_sd`
        standard deviations of its error, above τ."""
    @property
    def eligible(self) -> npt.NDArray[np.bool_]:
        """Whether each model was within the decision's limits (allowed, within the cost
        ceiling and the latency tolerance); every model, for a decision without limits."""
    @property
    def ranking(self) -> list[str]:
        """The eligible models, best first by the decision's own rule: the chosen one, then
        the order to fall back in (the admissible by score, then the excluded by latency)."""
    def explain(self) -> dict[str, dict[str, float | bool]]:
        """Per model: a dict of its predictions and score, keyed by model name."""

@final
class Policy:
    """The router's decision core: a live pool of models, each with ridge quality and
    log-length heads and LinUCB statistics, and a latency-aware decision rule.

    Every method raises a `MixllmError` for a bad argument and changes nothing: a model name
    that is not a `str` or a path that is not a `str`/`os.PathLike` is an `InputTypeError`; a
    name that is not valid Unicode (a lone surrogate), an integer too large to convert, a
    value out of range an `InvalidInputError`."""

    def __new__(
        cls,
        dim: int,
        *,
        alpha: float = 0.01,
        beta: float = 0.1,
        ridge: float = 1.0,
        tau_s: float = 30.0,
        refactor_every: int = 1000,
        service_time_smoothing: float = 0.1,
        length_ridge: float = 1.0,
        tau_margin_sd: float = 0.0,
    ) -> Policy: ...
    @property
    def dim(self) -> int:
        """Length of the context vectors."""
    @property
    def alpha(self) -> float: ...
    @property
    def beta(self) -> float: ...
    @property
    def ridge(self) -> float:
        """Ridge strength of the quality head."""
    @property
    def length_ridge(self) -> float:
        """Ridge strength of the output-length head, which has its own matrix."""
    @property
    def tau_s(self) -> float: ...
    @property
    def tau_margin_sd(self) -> float:
        """Standard deviations of its error a latency estimate must stay below τ for the
        model to be eligible."""
    @property
    def refactor_every(self) -> int: ...
    @property
    def service_time_smoothing(self) -> float: ...
    @property
    def models(self) -> list[str]:
        """Names of the models, in decision order."""
    def __len__(self) -> int: ...
    def __contains__(self, name: str, /) -> bool: ...
    def add_model(
        self,
        name: str,
        *,
        price_in: float,
        price_out: float,
        fee: float = 0.0,
        ttft_s: float,
        tokens_per_s: float,
        concurrency: int,
        prior_quality: float = 0.5,
        prior_output_tokens: float = 256.0,
    ) -> None:
        """Adds a model with a fresh arm. Prices are USD per million tokens. Held to what a
        saved state may hold, so whatever is accepted saves and loads: a name of 1 to 4096
        bytes of UTF-8, at most 4096 models in the pool (`InvalidInputError` beyond)."""
    def remove_model(self, name: str) -> None:
        """Removes a model; later feedback for it raises UnknownModelError."""
    def update_profile(
        self,
        name: str,
        *,
        price_in: float | None = None,
        price_out: float | None = None,
        fee: float | None = None,
        ttft_s: float | None = None,
        tokens_per_s: float | None = None,
        concurrency: int | None = None,
        now_s: float | None = None,
    ) -> None:
        """Changes some of a model's profile fields; the rest keep their values. A new
        ``concurrency`` spreads the work already queued over the new number of slots at
        ``now_s`` (default: ``Policy.clock_s()``)."""
    def profile(self, name: str) -> dict[str, float]:
        """A model's profile as a dict."""
    def decide(
        self,
        x: _Vector,
        *,
        prompt_tokens: float,
        willingness_to_pay: float,
        now_s: float | None = None,
        models: Sequence[str] | None = None,
        max_cost_usd: float | None = None,
        max_latency_s: float | None = None,
    ) -> Decision:
        """Picks a model for context `x`; `willingness_to_pay` is in USD per quality point
        (the price worth paying for one more point of expected quality; inf ignores cost).
        `now_s` is when, for the queues (default: `clock_s()`; see `begin`).

        Limits for this decision alone: `models` (the models it may go to; names not in the
        pool are ignored), `max_cost_usd` (a ceiling on the predicted cost) and
        `max_latency_s` (a tolerance on the predicted latency). Only the models within all of
        them are `eligible`, and the rule below picks among those; `ranking` orders them. With
        none eligible: `UnknownModelError` when no allowed model is in the pool, else
        `NoModelWithinLimitsError` naming the limit.

        At the extremes: costs, widths, penalties and each weighted term saturate at the
        largest float (so a weight of 0, or an infinite `willingness_to_pay`, zeroes its term
        whatever the factor); a NaN latency counts as infinite; a model whose score is NaN is
        excluded. The choice is the best admissible score, else the smallest latency."""
    def decide_batch(
        self,
        X: _Matrix,
        *,
        prompt_tokens: float | _Vector,
        willingness_to_pay: float | _Vector,
        threads: int | None = None,
        now_s: float | None = None,
    ) -> npt.NDArray[np.int64]:
        """Picks a model for each row of `X`; returns indices into `models`. Batches of
        thousands of rows are split over `threads` threads (default: the CPUs available).
        Every row sees the queues as they are at `now_s` (as in `decide`)."""
    def update(
        self,
        name: str,
        x: _Vector,
        *,
        quality: float,
        output_tokens: float | None = None,
        weight: float = 1.0,
    ) -> None:
        """Learns one observed outcome of model `name` on context `x`."""
    def update_length(
        self,
        name: str,
        x: _Vector,
        *,
        output_tokens: float,
        weight: float = 1.0,
    ) -> None:
        """Teaches model `name`'s output-length head that its answer on context `x` was
        `output_tokens` long, without touching its quality head: what a finished request
        tells before anyone rates it. O(d²), checked as `update` is."""
    def fit(
        self,
        name: str,
        X: _Matrix,
        quality: _Vector,
        output_tokens: _Vector | None = None,
        *,
        weights: _Vector | None = None,
    ) -> None:
        """Replaces model `name`'s arm with an exact ridge fit on a batch. A NaN in
        `output_tokens` marks a row whose length was not seen: the length head skips it."""
    def begin(
        self, name: str, predicted_service_s: float | None = None, *, now_s: float | None = None
    ) -> None:
        """A request was sent to model `name` at `now_s`; `predicted_service_s` is its
        decision's `service` for that model (None: the model's observed mean service time).
        Give `end` or `cancel` the same value. `now_s` defaults to `clock_s()`; a caller
        keeping its own time (a simulation) passes it to every `decide`, `begin`, `end` and
        `cancel`."""
    def end(
        self,
        name: str,
        latency_s: float | None,
        predicted_service_s: float | None = None,
        *,
        now_s: float | None = None,
    ) -> None:
        """A request to model `name` finished at `now_s` after `latency_s` seconds of
        service (None: its service time is unknown; it leaves the queue as if served as
        predicted, and nothing is learned)."""
    def cancel(
        self, name: str, predicted_service_s: float | None = None, *, now_s: float | None = None
    ) -> None:
        """A request to model `name` was withdrawn at `now_s` before it was served: it leaves
        the queue with the work its `begin` counted."""
    def predicted_wait_s(self, name: str, *, now_s: float | None = None) -> float:
        """The wait predicted at `now_s` for a request sent to model `name`, before its
        service starts."""
    @staticmethod
    def clock_s() -> float:
        """Seconds on the monotonic clock the queues run on when no `now_s` is given."""
    def generation(self, name: str) -> int:
        """The generation of model `name`'s arm: it changes when the model is removed and
        added again (or the policy is loaded), never otherwise."""
    def set_remote_load(self, name: str, in_flight: int, work_s: float) -> None:
        """The load other routers sharing model `name`'s endpoint put on it (replicas of a
        service): `in_flight` requests holding `work_s` seconds of predicted work per slot.
        It adds to this policy's own queue in every wait it predicts, until the next report."""
    def in_flight(self, name: str) -> int:
        """Requests in flight for model `name`."""
    def inspect(self, name: str) -> dict[str, Any]:
        """A consistent copy of everything learned about model `name`."""
    def save(self, path: str | PathLike[str]) -> None:
        """Writes the whole state to `path` atomically (temporary file `<path>.tmp-*`, held
        under an exclusive lock while written, then renamed over `path`). First removes the
        `<path>.tmp-*` files of saves that crashed: those whose lock it can take, never a live
        writer's."""
    @classmethod
    def load(cls, path: str | PathLike[str], *, dim: int | None = None) -> Policy:
        """Reads a state written by `save`. The header, configuration and model count are
        checked against the file's length before the rest is read; then the checksum and every
        field (`StateFileError` naming what is wrong). `dim`: an integer in 1..=4096 the file
        must match."""
    def to_bytes(self) -> bytes:
        """The whole state as bytes (the `save` format)."""
    @classmethod
    def from_bytes(cls, data: bytes, *, dim: int | None = None) -> Policy:
        """Rebuilds a policy from `to_bytes` output (`bytes`), checked as `load` checks a
        file."""

@final
class Tokenizer:
    """A Hugging Face `tokenizer.json`, read by the core: never pads; truncates to `max_tokens`
    (special tokens included) when given, keeping a longer text's first tokens (`"head"`) or
    its last ones (`"tail"`). A missing file raises `OSError`, one that is not a tokenizer
    `InvalidInputError`; both name the file."""

    def __new__(
        cls,
        path: str | PathLike[str],
        *,
        max_tokens: int | None = None,
        truncation: Literal["head", "tail"] = "head",
    ) -> Tokenizer: ...
    @property
    def vocab_size(self) -> int:
        """Ids the tokenizer can produce: its vocabulary and added tokens."""
    def encode_batch(
        self, texts: Iterable[str], *, add_special_tokens: bool = True
    ) -> list[list[int]]:
        """The token ids of each text, truncated as configured."""
    def count(
        self, texts: Iterable[str], *, add_special_tokens: bool = False
    ) -> npt.NDArray[np.int64]:
        """The token count of each text (int64), truncated as configured."""

@final
class StaticEncoder:
    """A static sentence encoder: a text's vector is the L2-normalised sum of its tokens' rows of
    `table` (float32, one row per id of the tokenizer and a last row for a text without
    tokens), tokens as the tokenizer at `tokenizer_path` gives them, truncated to `max_tokens`."""

    def __new__(
        cls,
        tokenizer_path: str | PathLike[str],
        table: npt.NDArray[np.float32],
        *,
        max_tokens: int,
        truncation: Literal["head", "tail"] = "head",
    ) -> StaticEncoder: ...
    @property
    def dim(self) -> int:
        """The vector width."""
    def encode(self, texts: Iterable[str]) -> npt.NDArray[np.float32]:
        """Unit vectors of `texts`, float32, shape `(len(texts), dim)`."""
