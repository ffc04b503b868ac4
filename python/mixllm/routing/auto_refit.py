"""Refitting as feedback arrives: once the feedback logged since the last fit has grown to
``refit_growth`` times that fit's rows, the Router runs `Router.refit` in a background thread
while it goes on routing and learning with the state it has; the refit swaps the new state in
under the Router's lock, at once.

Growing the rows by a constant factor between refits keeps the total refitting work within a
constant multiple of one fit on all the rows, however long the Router runs, while a Router
fitted on a few rows refits often early on, when each refit changes most: the projection and
the domains, which online updates never touch, are learned again from every query seen.

What keeps a refit from costing more than that:

- the decision to start one is taken in the same lock section as the check that it is due and
  that none is scheduled, so feedback from many threads at once starts one refit per due
  point; one that waited behind another refit (a manual one) runs only if still due then;
- a refit that cannot run as configured (`refit_refusal`: feedback rows carry no labels for
  ``tagger.mode = "labels"``) is not attempted: it is logged once, as a warning, and not
  considered again until the pool or the fitted state changes;
- after a refit failed, the next attempt waits for as many more feedbacks as made it due
  (``refit_growth`` times the rows, or as many as fill the feedback log when that is fewer), so
  a failing refit is tried no more often than refits that succeed would run, and no more
  feedback rotates out of the log unlearned than between two refits that succeed;
- a refit discarded because the pool or the fitted state changed while it ran is still due,
  and runs again at the next feedback, on the pool as it is then."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable

from mixllm.errors import StateChangedError
from mixllm.routing.refitting import Refitting, refit_refusal

__all__ = ["AutoRefit"]

log = logging.getLogger("mixllm.refit")

# The outcomes an automatic refit's listeners hear.
OK, FAILED, DISCARDED = "ok", "failed", "discarded"


class AutoRefit(Refitting):
    """The Router's automatic refits (``refit_growth``): `refit_due`, `wait_for_refit`,
    `add_refit_listener`, `remove_refit_listener`, and the counts ``automatic_refits`` (succeeded),
    ``automatic_refits_failed`` (failed, or refused as unable to run) and
    ``automatic_refits_discarded`` (the pool or the fitted state changed while they ran)."""

    _refit_thread: threading.Thread | None
    automatic_refits: int
    automatic_refits_failed: int
    automatic_refits_discarded: int
    # Feedbacks learned (without a store; not those whose model had been removed) since the
    # Router was made, and how many it takes before an automatic refit is tried again after
    # one failed.
    _feedbacks_seen: int
    _retry_at: int
    # The (pool, fit) generations at which a refit was found unable to run: not tried again
    # until either changes.
    _refused_at: tuple[int, int] | None
    _refit_listeners: list[Callable[[str], None]]

    def _init_refits(self) -> None:
        """The refits' state, in a new Router."""
        self._refit_lock = threading.Lock()
        self._pool_generation = 0
        self._fit_generation = 0
        self._last_fit_kind = "fitted"
        self._fits_running = 0
        self._refit_scheduled = False
        self._refit_thread = None
        self.automatic_refits = 0
        self.automatic_refits_failed = 0
        self.automatic_refits_discarded = 0
        self._feedbacks_seen = 0
        self._retry_at = 0
        self._refused_at = None
        self._refit_listeners = []

    def add_refit_listener(self, listener: Callable[[str], None]) -> None:
        """``listener`` hears ``"ok"``, ``"failed"`` or ``"discarded"`` after each automatic
        refit (from the refit's thread, or the thread whose feedback found it unable to run)."""
        with self._lock:
            self._refit_listeners.append(listener)

    def remove_refit_listener(self, listener: Callable[[str], None]) -> None:
        """Stops ``listener`` (given to `add_refit_listener`) hearing of refits. Raises
        `ValueError` when it is not listening, changing nothing."""
        with self._lock:
            try:
                self._refit_listeners.remove(listener)
            except ValueError:
                raise ValueError(f"{listener!r} is not listening to this router's refits") from None

    def refit_due(self) -> bool:
        """Whether the feedback logged since the last fit has reached ``refit_growth`` times
        that fit's rows (or filled the log). A Router with no rows of a fit to scale by (built
        from a projection and arms alone) never refits by itself, nor one sharing a store."""
        with self._lock:
            return self._due_locked()

    def _due_locked(self) -> bool:
        growth = self._config.refit_growth
        training = self._training
        logged = len(self._feedback_log)
        if not growth or training is None or self._store is not None or logged == 0:
            return False
        return logged == self._feedback_log.maxlen or logged >= growth * len(training)

    def _due_step_locked(self) -> int:
        """How many feedbacks make a refit due after a fit: ``refit_growth`` times its rows, or
        as many as fill the log, whichever comes first (as `_due_locked` counts)."""
        step = self._config.refit_growth * len(self._training or ())
        capacity = self._feedback_log.maxlen
        if capacity is not None:
            step = min(step, capacity)
        return max(1, math.ceil(step))

    def _after_feedback(self) -> None:
        """Starts a background refit when one is due, none is scheduled, and it can run."""
        with self._lock:
            self._feedbacks_seen += 1
            if (
                self._refit_scheduled
                or self._feedbacks_seen < self._retry_at
                or not self._due_locked()
            ):
                return
            refusal = refit_refusal(self._config, self._training, len(self._feedback_log))
            if refusal is None:
                self._refit_scheduled = True
                self._refit_thread = threading.Thread(
                    target=self._background_refit, name="mixllm-refit", daemon=True
                )
                # Started under the lock, so `wait_for_refit` never finds it unstarted; the
                # thread takes the lock only once it runs.
                self._refit_thread.start()
                return
            generations = (self._pool_generation, self._fit_generation)
            if self._refused_at == generations:
                return
            self._refused_at = generations
            self.automatic_refits_failed += 1
        log.warning(
            "automatic refits cannot run, and are not tried again until the pool or the fit "
            "changes: %s",
            refusal,
        )
        self._notify(FAILED)

    def _background_refit(self) -> None:
        outcome = None
        try:
            with self._refit_lock:
                # It may have waited behind another refit, which learned what made it due.
                if self.refit_due():
                    outcome = self._automatic_refit()
        finally:
            with self._lock:
                self._refit_scheduled = False
        if outcome is not None:
            self._notify(outcome)

    def _automatic_refit(self) -> str:
        """One automatic refit (the caller holds the refit lock); returns its outcome."""
        try:
            report = self._refit_locked()
        except StateChangedError as err:
            with self._lock:
                self.automatic_refits_discarded += 1
            log.warning("the automatic refit was discarded, and runs again: %s", err)
            return DISCARDED
        except Exception:
            # The Router keeps routing with the state it had.
            with self._lock:
                self.automatic_refits_failed += 1
                self._retry_at = self._feedbacks_seen + self._due_step_locked()
            log.exception("the automatic refit failed; the router keeps its state")
            return FAILED
        with self._lock:
            self.automatic_refits += 1
        log.info("refitted on %d rows", report.rows)
        return OK

    def _notify(self, outcome: str) -> None:
        with self._lock:
            listeners = list(self._refit_listeners)
        for listener in listeners:
            try:
                listener(outcome)
            except Exception:
                log.exception("a refit listener failed")

    def wait_for_refit(self, timeout_s: float | None = None) -> bool:
        """Waits for a running automatic refit to finish (at most ``timeout_s`` seconds);
        True when none is running any more."""
        with self._lock:
            worker = self._refit_thread
        if worker is None:
            return True
        worker.join(timeout_s)
        return not worker.is_alive()
