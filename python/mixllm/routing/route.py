"""Route: a query's context (cached), its operating point and its decision."""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from mixllm import _lru
from mixllm._core import Decision, InputTypeError, InvalidInputError, UnknownModelError
from mixllm.data import estimate_tokens
from mixllm.errors import NotFittedError, StateChangedError
from mixllm.routing.ledger import PendingDecision, deadline_ms
from mixllm.routing.route_limits import RouteLimits
from mixllm.routing.router_base import RouterBase
from mixllm.routing.tuning import MIN_ROWS
from mixllm.understanding.projection import LinearProjection
from mixllm.validation import check_text

if TYPE_CHECKING:
    from mixllm.routing.batching import Batcher


@dataclass(frozen=True)
class RouteDecision:
    """The model chosen for one query, with the reasons (`detail` holds every model's
    predicted quality, cost, latency, uncertainty, penalty and score)."""

    id: str
    model: str
    prompt_tokens: float
    willingness_to_pay: float
    detail: Decision

    @property
    def models(self) -> list[str]:
        return self.detail.models

    def explain(self) -> dict[str, dict[str, float | bool]]:
        """Per model: predicted quality, cost (USD), latency (s), uncertainty, penalty, score."""
        return self.detail.explain()


class Route(RouterBase):
    """The Router's decisions: `route`, `route_batch`, `aroute`, and `reroute` for a
    fallback."""

    def _context(self, text: str) -> tuple[NDArray[np.float64], float]:
        """Routing context and prompt tokens of a text (checked by the caller, `check_text`)."""
        key = text_key(text)
        cached = self._contexts.get(key)
        if cached is not None:
            return cached
        projection = self._require_projection()
        vector = self.embedder.embed([text])
        context = projection.context(vector)[0]
        context.flags.writeable = False  # shared by every decision for this text
        item = (context, float(estimate_tokens([text])[0]))
        self._remember(projection, [(key, item)])
        return item

    def _remember(
        self,
        projection: LinearProjection,
        items: Sequence[tuple[bytes, tuple[NDArray[np.float64], float]]],
    ) -> None:
        """Caches contexts computed with ``projection``, unless a fit has replaced it since:
        the check and the puts happen under the lock a fit swaps the projection and clears the
        cache under, so no context of an old projection outlives the swap in the cache."""
        with self._lock:
            if self._projection is not projection:
                return
            for key, (context, tokens) in items:
                self._contexts.put(key, (context, tokens), context_bytes(key, context))

    def _willingness(self, willingness_to_pay: float | None, **target: float | None) -> float:
        """The λ to route with: ``willingness_to_pay`` when given, else the λ the calibration
        gives an operating point given in ``target`` (``target_quality_pct``,
        ``max_cost_pct`` or ``budget_per_1000_usd``) or configured, else the configured λ."""
        given = {k: v for k, v in target.items() if v is not None}
        if len(given) + (willingness_to_pay is not None) > 1:
            named = [*(["willingness_to_pay"] if willingness_to_pay is not None else []), *given]
            raise InvalidInputError(f"give one operating point, not {', '.join(named)}")
        if willingness_to_pay is None:
            if not given:
                given = self._config.operating_point()
            if not given:
                return self._config.willingness_to_pay
            return self._calibrated(*next(iter(given.items())))
        if isinstance(willingness_to_pay, bool) or not isinstance(willingness_to_pay, (int, float)):
            raise InvalidInputError(
                f"willingness_to_pay must be a number, got {type(willingness_to_pay).__name__}"
            )
        try:
            wtp = float(willingness_to_pay)
        except OverflowError:
            wtp = math.inf  # an integer beyond any float: as good as ignoring cost
        if not wtp > 0:
            raise InvalidInputError(
                f"willingness_to_pay must be > 0 (USD per quality point), got {willingness_to_pay}"
            )
        return wtp

    def _calibrated(self, target: str, value: float) -> float:
        """The λ of an operating point in the user's words, from the calibration table."""
        calibration = self._calibration
        if calibration is None:
            raise NotFittedError(
                f"{target} needs the calibration table a fit makes (on at least {MIN_ROWS} "
                "queries); this Router has none: fit it, or give willingness_to_pay"
            )
        if target == "target_quality_pct":
            return calibration.for_quality(value)
        if target == "max_cost_pct":
            return calibration.for_cost(value)
        return calibration.for_budget(value)

    def route(
        self,
        text: str,
        *,
        willingness_to_pay: float | None = None,
        prompt_tokens: float | None = None,
        target_quality_pct: float | None = None,
        max_cost_pct: float | None = None,
        budget_per_1000_usd: float | None = None,
        models: Sequence[str] | None = None,
        max_cost_usd: float | None = None,
        max_latency_s: float | None = None,
    ) -> RouteDecision:
        """Picks the model for one query and counts the request as in flight for it.

        ``prompt_tokens`` defaults to a count with the embedder's tokenizer (a proxy for the
        model's own tokenizer; beyond its first `EXACT_COUNT_CHARS` characters a text's count
        is estimated, see `mixllm.data.estimate_tokens`). A text that is not a ``str`` raises
        `InputTypeError`, one that is not valid Unicode (a lone surrogate) `InvalidInputError`.

        The operating point is ``willingness_to_pay`` (λ), or one in the user's words: the
        cheapest way to reach ``target_quality_pct`` % of the best model's quality, the best
        quality at ``max_cost_pct`` % of its cost, or at ``budget_per_1000_usd`` dollars per
        1,000 queries (λ from the `calibration` table); by default the configured one.

        Limits for this query alone: ``models`` (the models it may go to), ``max_cost_usd``
        (predicted cost) and ``max_latency_s`` (predicted latency, a tolerance tighter than τ),
        applied by the decision core (`Policy.decide`): the model is chosen among those within
        all of them by the usual rule, and ``decision.detail.ranking`` orders them for
        fallback. With none: `UnknownModelError` when no allowed model is in the pool, else
        `NoModelWithinLimitsError` naming the limit; neither changes any state.
        """
        check_text("text", text)
        wtp = self._willingness(
            willingness_to_pay,
            target_quality_pct=target_quality_pct,
            max_cost_pct=max_cost_pct,
            budget_per_1000_usd=budget_per_1000_usd,
        )
        limits = RouteLimits.of(models, max_cost_usd, max_latency_s)
        return self._decide_text(text, self._context(text), prompt_tokens, wtp, limits)

    def _decide_text(
        self,
        text: str,
        item: tuple[NDArray[np.float64], float],
        prompt_tokens: float | None,
        wtp: float,
        limits: RouteLimits | None,
    ) -> RouteDecision:
        """`route`'s and `aroute`'s decision once the text's context and prompt tokens are
        known: ``prompt_tokens`` when the caller gave it, else the counted ones."""
        context, counted = item
        tokens = counted if prompt_tokens is None else prompt_tokens
        return self._decide(context, tokens, wtp, self._now(), limits, text)

    def route_batch(
        self,
        texts: Sequence[str],
        *,
        willingness_to_pay: float | None = None,
        target_quality_pct: float | None = None,
        max_cost_pct: float | None = None,
        budget_per_1000_usd: float | None = None,
    ) -> list[RouteDecision]:
        """`route` for many queries, embedding them in one batch."""
        if isinstance(texts, str):
            raise InputTypeError("texts must be a sequence of str, not a single string")
        items = list(texts)
        for i, text in enumerate(items):
            check_text(f"texts[{i}]", text)
        wtp = self._willingness(
            willingness_to_pay,
            target_quality_pct=target_quality_pct,
            max_cost_pct=max_cost_pct,
            budget_per_1000_usd=budget_per_1000_usd,
        )
        known = dict(zip(items, self._contexts_of(items), strict=True))
        # One reading of the clock for the whole batch, before the first decision: a clock that
        # fails must not leave part of a batch counted in flight with no id returned for it.
        now = self._now()
        return [self._decide(*known[text], wtp, now, None, text) for text in items]

    def _contexts_of(self, texts: Sequence[str]) -> list[tuple[NDArray[np.float64], float]]:
        """Routing context and prompt tokens of each text. Every distinct text is looked up or
        computed once: a cache smaller than the batch (or none) must not send texts back to the
        embedder one at a time."""
        projection = self._require_projection()
        known: dict[str, tuple[NDArray[np.float64], float]] = {}
        missing = []
        for text in dict.fromkeys(texts):
            cached = self._contexts.get(text_key(text))
            if cached is None:
                missing.append(text)
            else:
                known[text] = cached
        if missing:
            contexts = projection.context(self.embedder.embed(missing))
            tokens = estimate_tokens(missing)
            contexts.flags.writeable = False  # shared by every decision for these texts
            for text, context, count in zip(missing, contexts, tokens, strict=True):
                known[text] = (context, float(count))
            self._remember(projection, [(text_key(text), known[text]) for text in missing])
        return [known[text] for text in texts]

    async def aroute(
        self,
        text: str,
        *,
        willingness_to_pay: float | None = None,
        prompt_tokens: float | None = None,
        target_quality_pct: float | None = None,
        max_cost_pct: float | None = None,
        budget_per_1000_usd: float | None = None,
        models: Sequence[str] | None = None,
        max_cost_usd: float | None = None,
        max_latency_s: float | None = None,
    ) -> RouteDecision:
        """`route` for asyncio services: the embedding runs in a worker thread, never on the
        event loop, and the texts of concurrent calls are embedded together in one batch."""
        check_text("text", text)
        wtp = self._willingness(
            willingness_to_pay,
            target_quality_pct=target_quality_pct,
            max_cost_pct=max_cost_pct,
            budget_per_1000_usd=budget_per_1000_usd,
        )
        limits = RouteLimits.of(models, max_cost_usd, max_latency_s)
        item = self._contexts.get(text_key(text))
        if item is None:
            item = await self._batcher().submit(text)
        return self._decide_text(text, item, prompt_tokens, wtp, limits)

    def _batcher(self) -> Batcher[str, tuple[NDArray[np.float64], float]]:
        """This event loop's batcher (created on first use)."""
        import asyncio

        from mixllm.routing.batching import Batcher

        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            with self._lock:
                if self._embed_thread is None:
                    self._embed_thread = ThreadPoolExecutor(1, thread_name_prefix="mixllm-embed")
            batcher = Batcher(self._contexts_of, self._embed_thread)
            self._batchers[loop] = batcher
        return batcher

    def reroute(self, decision_id: str, model: str) -> RouteDecision:
        """Opens a decision for ``model`` from decision ``decision_id``'s own query, for a
        fallback when the model it chose cannot answer: the same routing context, prompt tokens
        and willingness to pay, so nothing is embedded again. The new decision counts its
        request in flight for ``model`` and takes `complete`, `cancel` and `feedback` like any
        other (what it learns goes to ``model``); the decision it comes from is left as it is,
        to be cancelled when its request was never answered. Of the first decision's limits only
        ``model`` applies: the caller chose it (``detail.ranking`` orders the models within
        them).

        Refused, changing nothing (but dropping a decision found past its time to live, as
        every call that meets one does): `InputTypeError` when either argument is not a ``str``;
        `DecisionNotFoundError` when ``decision_id`` awaits no feedback (never issued, expired,
        cancelled or answered: the message says which; one completed but not yet answered
        still does); `UnknownModelError` when ``model`` is not in the pool (removed since, say);
        `StateChangedError` when a fit or refit has replaced the projection since the decision
        (its context is the old projection's: route the text again).
        """
        for name, value in (("decision_id", decision_id), ("model", model)):
            if not isinstance(value, str):
                raise InputTypeError(f"{name} must be a str, not {type(value).__name__}")
        now = self._now()
        with self._lock:
            pending = self._ledger.open(decision_id, self._policy, now)
            if pending.fit_generation != self._fit_generation:
                raise StateChangedError(
                    f"decision {decision_id!r} was made before the fit now in place, with the "
                    "projection it replaced: route its text again"
                )
        if model not in self._policy:
            raise UnknownModelError(
                f"decision {decision_id!r} cannot be rerouted to {model!r}: it is not in the pool"
            )
        limits = RouteLimits.of([model], None, None)
        return self._decide(
            pending.context,
            pending.prompt_tokens,
            pending.willingness_to_pay,
            now,
            limits,
            pending.text,
        )

    def _decide(
        self,
        context: NDArray[np.float64],
        prompt_tokens: float,
        willingness_to_pay: float,
        now: float,
        limits: RouteLimits | None = None,
        text: str | None = None,
    ) -> RouteDecision:
        """One decision at ``now``, a reading of the clock taken before any state changed."""
        detail = self._policy.decide(
            context,
            prompt_tokens=prompt_tokens,
            willingness_to_pay=willingness_to_pay,
            now_s=now,
            **({} if limits is None else limits.arguments()),
        )
        model, service_s = detail.model, detail.chosen_service_s
        decision_id = f"{self._id_prefix}-{next(self._counter)}"
        with self._lock:
            # Count the request in the policy in place now: `fit` may have swapped it, or
            # `remove_model` removed the model, since the decision (then nothing is queued).
            pending = PendingDecision.begin(self._policy, model, service_s, context, now)
            pending.text = text
            pending.prompt_tokens, pending.willingness_to_pay = prompt_tokens, willingness_to_pay
            pending.fit_generation = self._fit_generation
            pending.arm = self._arm_of(model)
            pending.deadline_ms = deadline_ms(self._config.feedback_ttl_s)
            self._ledger.add(decision_id, pending, self._policy, now)
        if self._store is not None:
            self._store.record_decision(decision_id, pending)
        return RouteDecision(decision_id, model, prompt_tokens, willingness_to_pay, detail)


def text_key(text: str) -> bytes:
    """The cache key of a checked text (`mixllm._lru.text_key`)."""
    return _lru.text_key(text.encode("utf-8"))


def context_bytes(key: bytes, context: NDArray[np.float64]) -> int:
    """What a context cache entry is accounted as: its key, its array and a fixed allowance
    for the Python objects around them."""
    return len(key) + context.nbytes + _lru.ENTRY_OVERHEAD
