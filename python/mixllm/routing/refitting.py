"""Learning again: `Router.refit`, on the rows of the last fit plus the feedback logged since.

A refit learns outside the Router's lock, so routing, feedback and pool changes go on while it
runs; whatever it must not undo is checked when it swaps its result in, in the one lock section
that also replaces the rows and drops what it learned from the log (so a save never sees a
logged row twice):

- a pool change (`add_model`, `remove_model`, `update_model`) or a fit made meanwhile is kept,
  and the refit, which learned on the pool and state as they were, is discarded instead
  (`StateChangedError`), with the log left as it was, so the refit is still due and runs again
  on the pool as it is now;
- a refit that cannot learn from its rows is refused before it embeds any of them;
- feedback learned while it ran taught the arms it replaces: once swapped in, the new arms are
  taught it too (embedded again under the new projection), and it stays logged for the next
  refit."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from mixllm._core import InvalidInputError, MixllmError
from mixllm.config import RouterConfig
from mixllm.data import RoutingDataset, count_tokens
from mixllm.errors import ConfigError, StateChangedError
from mixllm.routing.fitting import FitReport, FitStart, Fitting
from mixllm.routing.learning import LoggedFeedback
from mixllm.understanding.projection import LinearProjection

__all__ = ["Refitting", "concatenated", "feedback_dataset", "refit_refusal"]

log = logging.getLogger("mixllm.refit")


class Refitting(Fitting):
    """The Router's `refit`."""

    def refit(self) -> FitReport:
        """Fits projection, domains and heads again (`fit`) on the rows of the last fit plus
        the feedback learned since (the last ``feedback_log_size`` of them: each its query,
        the chosen model's quality, or 1/0 for binary feedback, and output tokens), so that
        feedback improves the representation too, not only the heads. Routing goes on while
        it runs (in a background thread, say) and switches to the new state at once (whose
        arms are then taught the feedback learned meanwhile); it then keeps the newest
        `refit_state.MAX_TRAINING_ROWS` rows for the next refit.

        `save` keeps both, so a loaded Router refits as the saved one would have; one loaded
        from a state saved without them (an older mixllm's, or rows past the size a state
        holds) refits on what it has. Raises `InvalidInputError` when there is nothing to fit
        on, `ConfigError` (before embedding anything) when the rows cannot be learned from as
        configured, and `StateChangedError` when the pool changed or a fit was made while it
        ran (the change is kept, the refit discarded: the Router is left as it was)."""
        # One refit at a time: each relearns what the one before it left logged.
        with self._refit_lock:
            return self._refit_locked()

    def _refit_locked(self) -> FitReport:
        """`refit`, the caller holding the refit lock."""
        with self._fitting(check=self._check_refit) as start:
            pool = [m.name for m in start.config.models]
            combined = refit_rows(start.training, start.logged, pool)
            fitted = self._learn_fit(combined, start.config, None, warn_unused=False)
            with self._lock:
                changed = self._changed_since(start)
                if changed is not None:
                    raise StateChangedError(
                        f"{changed} while this refit ran: its result was discarded and the "
                        "router left as it was (the feedback stays logged); refit again"
                    )
                self._swap(fitted, combined, refit=True)
                # What was learned is in the new rows now; feedback during the refit stays
                # logged. The log is bounded, so feedback during the refit may have pushed
                # some of what was copied out already: drop only the copied entries still at
                # its front, never a count of entries (which would drop the new feedback).
                copied = {id(entry) for entry in start.logged}
                while self._feedback_log and id(self._feedback_log[0]) in copied:
                    self._feedback_log.popleft()
                late = [entry for entry in self._feedback_log if id(entry) not in copied]
                swapped = (self._pool_generation, self._fit_generation)
        self._learn_late(late, fitted.projection, swapped)
        return fitted.report

    def _learn_late(
        self, late: Sequence[LoggedFeedback], projection: LinearProjection, swapped: tuple[int, int]
    ) -> None:
        """Teaches the arms a refit swapped in the feedback learned while it ran (which taught
        the arms it replaced), so that it counts before the next refit. Their contexts are
        the new projection's, embedded outside the lock; nothing is taught when the pool or
        the fit changed since the swap (they stay logged, for the next refit)."""
        if not late:
            return
        try:
            contexts = projection.context(self.embedder.embed([entry.text for entry in late]))
        except Exception:  # the refit stands; the next one learns them from the log
            log.exception("cannot teach the refitted arms the feedback given during the refit")
            return
        with self._lock:
            if (self._pool_generation, self._fit_generation) != swapped:
                return
            for entry, context in zip(late, contexts, strict=True):
                if entry.model in self._policy:
                    self._policy.update(
                        entry.model,
                        context,
                        quality=entry.quality,
                        output_tokens=entry.output_tokens,
                    )

    def _check_refit(self, start: FitStart) -> None:
        refusal = refit_refusal(start.config, start.training, len(start.logged))
        if refusal is not None:
            raise refusal

    def _changed_since(self, start: FitStart) -> str | None:
        """What changed since ``start`` that a refit must not undo (the caller holds the
        lock), or None."""
        if self._pool_generation != start.pool_generation:
            return "the pool changed (add_model, remove_model or update_model)"
        if self._fit_generation != start.fit_generation:
            return "the router was fitted again"
        return None


def refit_refusal(
    config: RouterConfig, training: RoutingDataset | None, logged: int
) -> MixllmError | None:
    """Why a refit on ``training`` and ``logged`` feedbacks cannot run as ``config`` says, or
    None: known before it embeds anything."""
    if training is None and logged == 0:
        return InvalidInputError("refit has nothing to learn from: no fit and no feedback")
    if config.tagger.mode != "labels":
        return None
    advice = (
        'a refit learns domains from every row: set tagger.mode to "auto" to refit, or fit '
        "on labelled rows"
    )
    if logged:
        return ConfigError(
            f'tagger.mode is "labels" but the {logged} logged feedback rows carry no labels; '
            + advice
        )
    if training is not None and training.labels is None:
        return ConfigError(
            'tagger.mode is "labels" but the rows of the last fit carry no labels; ' + advice
        )
    return None


def refit_rows(
    training: RoutingDataset | None, logged: Sequence[LoggedFeedback], pool: Sequence[str]
) -> RoutingDataset:
    """The rows a refit learns from: those of the last fit, then the logged feedback."""
    if not logged:
        assert training is not None  # refused before: nothing to learn from
        return training
    feedback = feedback_dataset(logged, pool)
    return feedback if training is None else concatenated(training, feedback)


def feedback_dataset(logged: Sequence[LoggedFeedback], models: Sequence[str]) -> RoutingDataset:
    """Logged feedback as rows of a data set: each row observes the chosen model alone."""
    names = list(dict.fromkeys([*models, *(f.model for f in logged)]))
    n, k = len(logged), len(names)
    quality = np.full((n, k), np.nan)
    tokens = np.full((n, k), np.nan)
    for row, item in enumerate(logged):
        column = names.index(item.model)
        quality[row, column] = item.quality
        if item.output_tokens is not None:
            tokens[row, column] = item.output_tokens
    texts = [f.text for f in logged]
    return RoutingDataset(
        prompts=texts,
        models=names,
        quality=quality,
        cost_usd=np.full((n, k), np.nan),
        prompt_tokens=count_tokens(texts),
        output_tokens=tokens,
        latency_s=None,
        labels=None,
        split=None,
        ids=[f"feedback-{secrets.token_hex(6)}-{i}" for i in range(n)],
        tokens_counted=True,
    )


def concatenated(first: RoutingDataset, second: RoutingDataset) -> RoutingDataset:
    """The rows of both, over the union of their models (unobserved cells NaN). Labels are
    kept only when both have them; ids of the second that repeat the first's are renamed."""
    names = list(dict.fromkeys([*first.models, *second.models]))

    def widened(ds: RoutingDataset, array: NDArray[np.float64] | None) -> NDArray[np.float64]:
        out = np.full((len(ds), len(names)), np.nan)
        if array is not None:
            for k, name in enumerate(ds.models):
                out[:, names.index(name)] = array[:, k]
        return out

    def stacked(name: str) -> NDArray[np.float64]:
        parts = [widened(ds, getattr(ds, name)) for ds in (first, second)]
        return np.vstack(parts)

    no_latencies = first.latency_s is None and second.latency_s is None
    taken = set(first.ids)
    ids = [*first.ids, *(i if i not in taken else f"{i}@refit" for i in second.ids)]
    labels = None
    if first.labels is not None and second.labels is not None:
        labels = [*first.labels, *second.labels]
    return RoutingDataset(
        prompts=[*first.prompts, *second.prompts],
        models=names,
        quality=stacked("quality"),
        cost_usd=stacked("cost_usd"),
        prompt_tokens=np.concatenate([first.prompt_tokens, second.prompt_tokens]),
        output_tokens=stacked("output_tokens"),
        latency_s=None if no_latencies else stacked("latency_s"),
        labels=labels,
        split=None,
        ids=ids,
        tokens_counted=first.tokens_counted or second.tokens_counted,
    )
