"""Refitting a serving Router in the background: `Router.refit` in a worker thread, every so
many feedbacks or seconds, while the event loop goes on routing with the state it has until
the new one swaps in (`Router.refit` switches under the Router's lock, at once)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from mixllm.errors import ConfigError, StateChangedError
from mixllm.routing.auto_refit import DISCARDED, FAILED, OK
from mixllm.routing.router import Router
from mixllm.validation import integer, positive

__all__ = ["BackgroundRefit"]

log = logging.getLogger("mixllm.refit")


class BackgroundRefit:
    """Refits ``router`` once ``every_feedbacks`` feedbacks have been learned since the last
    refit began, and every ``every_s`` seconds when any feedback arrived in between (give one
    or both). For an asyncio service: call `feedback_learned` from the event loop after each
    feedback the Router learned, and run `run` as a task for as long as the service lives.
    ``on_refit`` hears ``"ok"``, ``"failed"`` or ``"discarded"`` after each refit; a failed or
    discarded refit is logged and leaves the Router as it was, and a discarded one (the pool
    changed, or the Router was fitted, while it ran) runs again at once."""

    def __init__(
        self,
        router: Router,
        *,
        every_feedbacks: int | None = None,
        every_s: float | None = None,
        on_refit: Callable[[str], None] | None = None,
    ) -> None:
        if every_feedbacks is None and every_s is None:
            raise ConfigError("a background refit needs every_feedbacks, every_s or both")
        if every_feedbacks is not None:
            integer("refit_every_feedbacks", every_feedbacks, ConfigError, minimum=1)
        if every_s is not None:
            positive("refit_every_s", every_s, ConfigError)
        if router.store is not None:
            raise ConfigError(
                "a refit replaces every arm, which the other replicas sharing the store cannot "
                "follow: refit without a store"
            )
        self.router = router
        self.every_feedbacks = every_feedbacks
        self.every_s = every_s
        self._on_refit = on_refit
        self._since = 0  # feedbacks learned since the last refit began
        self._due = asyncio.Event()
        self.refits = 0
        self.failures = 0
        self.discarded = 0

    def feedback_learned(self) -> None:
        """Counts one learned feedback; wakes the refit when enough have arrived."""
        self._since += 1
        if self.every_feedbacks is not None and self._since >= self.every_feedbacks:
            self._due.set()

    async def run(self) -> None:
        """Refits whenever one is due, until cancelled. The refit runs in a worker thread:
        the event loop keeps answering while it embeds and fits."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._due.wait(), self.every_s)
            self._due.clear()
            if self._since == 0:
                continue
            # Feedback learned while this refit runs counts towards the next one.
            since, self._since = self._since, 0
            if await self.refit_now() == DISCARDED:
                # Still due: it runs again at once, on the pool as it is now.
                self._since += since
                self._due.set()

    async def refit_now(self) -> str:
        """One refit in a worker thread; returns its outcome: ``"ok"``, ``"failed"``, or
        ``"discarded"`` when the pool changed or the Router was fitted while it ran (the
        change is kept, and the Router as it was)."""
        try:
            report = await asyncio.to_thread(self.router.refit)
        except StateChangedError as err:
            self.discarded += 1
            log.warning("the background refit was discarded: %s", err)
            self._notify(DISCARDED)
            return DISCARDED
        except Exception:
            self.failures += 1
            log.exception("the background refit failed; the router keeps its state")
            self._notify(FAILED)
            return FAILED
        self.refits += 1
        log.info("refitted on %d rows", report.rows)
        self._notify(OK)
        return OK

    def _notify(self, outcome: str) -> None:
        if self._on_refit is not None:
            self._on_refit(outcome)
