"""Refitting as feedback arrives: once the feedback logged since the last fit has grown to
``refit_growth`` times that fit's rows, the Router runs `Router.refit` in a background thread
while it goes on routing and learning with the state it has; the refit swaps the new state in
under the Router's lock, at once.

Growing the rows by a constant factor between refits keeps the total refitting work within a
constant multiple of one fit on all the rows, however long the Router runs, while a Router
fitted on a few rows refits often early on, when each refit changes most: the projection and
the domains, which online updates never touch, are learned again from every query seen."""

from __future__ import annotations

import logging
import threading

from mixllm.routing.fitting import Fitting

__all__ = ["AutoRefit"]

log = logging.getLogger("mixllm.refit")


class AutoRefit(Fitting):
    """The Router's automatic refits (``refit_growth``): `refit_due`, `wait_for_refit`."""

    _refit_thread: threading.Thread | None
    # Automatic refits that succeeded.
    automatic_refits: int

    def refit_due(self) -> bool:
        """Whether the feedback logged since the last fit has reached ``refit_growth`` times
        that fit's rows (or filled the log). A Router with no rows of a fit to scale by (built
        from a projection and arms alone) never refits by itself, nor one sharing a store."""
        growth = self._config.refit_growth
        with self._lock:
            training = self._training
            logged = len(self._feedback_log)
            full = logged == self._feedback_log.maxlen
        if not growth or training is None or self._store is not None or logged == 0:
            return False
        return full or logged >= growth * len(training)

    def _after_feedback(self) -> None:
        """Starts a background refit when one is due and none is running."""
        if not self.refit_due():
            return
        with self._lock:
            running = self._refit_thread
            if running is not None and running.is_alive():
                return
            worker = threading.Thread(target=self._background_refit, name="mixllm-refit")
            worker.daemon = True
            self._refit_thread = worker
        worker.start()

    def _background_refit(self) -> None:
        try:
            report = self.refit()
        except Exception:
            # The Router keeps routing with the state it had; the next feedback tries again.
            log.exception("the automatic refit failed; the router keeps its state")
            return
        with self._lock:
            self.automatic_refits += 1
        log.info("refitted on %d rows", report.rows)

    def wait_for_refit(self, timeout_s: float | None = None) -> bool:
        """Waits for a running automatic refit to finish (at most ``timeout_s`` seconds);
        True when none is running any more."""
        with self._lock:
            worker = self._refit_thread
        if worker is None:
            return True
        worker.join(timeout_s)
        return not worker.is_alive()
