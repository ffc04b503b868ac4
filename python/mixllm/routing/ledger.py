"""The ledger of decisions awaiting feedback, and the handshake each one keeps with the core.

A decision goes through the decision core in three steps:

1. **decide**: `Policy.decide` chooses a model and predicts its service time;
2. **begin**: `Policy.begin(model, predicted_service_s)` counts the request in that model's
   queue, so the waiting times later decisions predict include it. The model's arm at that
   moment (`Policy.generation`) is written down with the decision;
3. **end**: `Policy.end(model, latency_s, predicted_service_s)` takes the request out of the
   queue again, given back the very service time `begin` was given (and the latency measured,
   when known); `Policy.cancel` instead when the request was never answered.

`PendingDecision` is that handshake for one decision; `DecisionLedger` keeps the decisions
awaiting feedback, bounded in number and age, and the ids that can no longer take feedback with
the reason why.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mixllm._core import InvalidInputError, Policy, UnknownModelError
from mixllm.errors import DecisionNotFoundError

__all__ = ["EXPIRE_PER_CALL", "DecisionLedger", "PendingDecision"]

# Decisions dropped (expired, or over the cap) by one call at most; see `DecisionLedger.expire`.
EXPIRE_PER_CALL = 64

# The reasons a decision can no longer take feedback, as `DecisionNotFoundError` says them.
EXPIRED = "expired"
OVER_CAP = "dropped (too many decisions awaiting feedback)"

# The arm of a decision whose model had left the pool before its request could be counted.
NO_ARM = -1


def deadline_ms(ttl_s: float) -> int:
    """The wall-clock time, in milliseconds since the epoch, ``ttl_s`` seconds from now."""
    return math.ceil((time.time() + ttl_s) * 1000)


@dataclass
class PendingDecision:
    """A decision awaiting feedback, and its place in the core's decide → begin → end
    handshake."""

    model: str
    # The arm the decision was made with (`Policy.generation`): a model removed and added again
    # has a fresh arm, which must neither learn from nor dequeue this decision.
    generation: int
    context: NDArray[np.float64]
    issued: float
    # The service time the decision predicted for its model: what `Policy.begin` was given,
    # and what `Policy.end` must give back.
    predicted_service_s: float
    # False once the request has left its model's queue. A decision whose model was removed
    # before its request could be counted is in flight too, with no arm (`NO_ARM`): it is
    # answered like any decision for a removed model.
    in_flight: bool = True
    # The answer's length as measured when the request finished.
    output_tokens: float | None = None
    # Whether the length head has learned it already (at completion; with a store, queued to be
    # learned and shared), so the feedback does not teach it a second time.
    length_learned: bool = False
    # The query, for a log of feedback to relearn from.
    text: str | None = None
    # What the decision was made with besides its context, so that another decision can be
    # opened for the same query without embedding it again (`Router.reroute`): the prompt's
    # tokens, the willingness to pay, and the fit whose projection made ``context``.
    prompt_tokens: float = 0.0
    willingness_to_pay: float = 0.0
    fit_generation: int = 0
    # With a shared store: the id of the decision's arm as the replicas know it, and when its
    # shared record expires (wall-clock ms).
    arm: str = ""
    deadline_ms: int = 0

    @classmethod
    def begin(
        cls,
        policy: Policy,
        model: str,
        predicted_service_s: float,
        context: NDArray[np.float64],
        now: float,
    ) -> PendingDecision:
        """Counts the decision's request in its model's queue (when the model is still in the
        pool) and writes down the arm it was counted by."""
        generation = NO_ARM
        if model in policy:
            policy.begin(model, predicted_service_s, now_s=now)
            generation = policy.generation(model)
        return cls(model, generation, context, now, predicted_service_s)

    @property
    def length_to_teach(self) -> float | None:
        """The answer's length, when the feedback must teach it (what a shared record holds)."""
        return None if self.length_learned else self.output_tokens

    def current(self, policy: Policy) -> bool:
        """Whether the decision's arm is still in ``policy``'s pool."""
        try:
            return policy.generation(self.model) == self.generation
        except UnknownModelError:
            return False

    def end(self, policy: Policy, latency_s: float | None, now: float) -> None:
        """Takes the request out of its model's queue at ``now``, learning ``latency_s`` when
        given; the core's errors are raised."""
        policy.end(self.model, latency_s, self.predicted_service_s, now_s=now)

    def leave_queue(self, policy: Policy, latency_s: float | None, now: float) -> None:
        """`end`, for bookkeeping that must never fail a call that has already learned.
        Without a latency (not reported, or the decision expired) the request leaves as if
        served as predicted: its work has been draining with the clock since it was sent. The
        count can only be off if the policy was swapped under a pending decision by a load
        elsewhere, so that case is ignored. A latency the core refuses to learn from (one too
        far from the prediction to square) still takes the request out, as if served as
        predicted."""
        try:
            self.end(policy, latency_s, now)
        except (InvalidInputError, UnknownModelError):
            if latency_s is None:
                return
            with contextlib.suppress(InvalidInputError, UnknownModelError):
                self.end(policy, None, now)

    def cancel(self, policy: Policy, now: float) -> None:
        """Takes the request out of its model's queue with nothing learned (never answered)."""
        with contextlib.suppress(InvalidInputError, UnknownModelError):
            policy.cancel(self.model, self.predicted_service_s, now_s=now)

    def rebind(self, policy: Policy, now: float) -> None:
        """Hands the decision over to ``policy``'s arm for its model (one that replaced the arm
        it was made with): a request in flight counts again from ``now`` in the new queue,
        all of its predicted work, since the new arm cannot know how much of it is done."""
        self.generation = policy.generation(self.model)
        if self.in_flight:
            policy.begin(self.model, self.predicted_service_s, now_s=now)


class DecisionLedger:
    """The decisions awaiting feedback, oldest first, and the ids closed to feedback with the
    reason why, both bounded by ``cap`` entries; a decision waits at most ``ttl_s`` seconds.

    Not thread-safe on its own: its owner calls it under the lock that also guards the policy,
    since every change here goes with a change to the policy's queues. ``on_drop(id, reason)``
    is told of each decision dropped unanswered, under that same lock.
    """

    def __init__(
        self,
        ttl_s: float,
        cap: int,
        on_drop: Callable[[str, str], None] | None = None,
    ) -> None:
        self.ttl_s = ttl_s
        self.cap = cap
        self._on_drop = on_drop
        self._pending: OrderedDict[str, PendingDecision] = OrderedDict()
        self._closed: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def __iter__(self) -> Iterator[PendingDecision]:
        return iter(self._pending.values())

    def ids(self) -> list[str]:
        """The ids of the decisions awaiting feedback, oldest first."""
        return list(self._pending)

    def get(self, decision_id: str) -> PendingDecision | None:
        """The pending decision, whatever its age."""
        return self._pending.get(decision_id)

    def add(self, decision_id: str, pending: PendingDecision, policy: Policy, now: float) -> None:
        """Records a new decision, then drops old ones (`expire`)."""
        self._pending[decision_id] = pending
        self.expire(policy, now)

    def expire(self, policy: Policy, now: float) -> None:
        """Drops decisions past their time to live or beyond the cap, the oldest first and at
        most `EXPIRE_PER_CALL` of them: each call that adds one decision drops up to that many,
        so a backlog (a clock jump, a burst that was never answered) drains over the next calls
        instead of stalling one of them. Feedback for a decision past its time to live is
        refused even before it is dropped (`open`)."""
        for _ in range(EXPIRE_PER_CALL):
            if not self._pending:
                break
            decision_id, oldest = next(iter(self._pending.items()))
            expired = now - oldest.issued > self.ttl_s
            if not expired and len(self._pending) <= self.cap:
                break
            self.drop(decision_id, EXPIRED if expired else OVER_CAP, policy, now)

    def open(self, decision_id: str, policy: Policy, now: float) -> PendingDecision:
        """The pending decision, or `DecisionNotFoundError` with the reason it cannot take
        feedback. A decision past its time to live is dropped here, if expiry has not reached
        it yet."""
        pending = self._pending.get(decision_id)
        if pending is not None:
            if now - pending.issued <= self.ttl_s:
                return pending
            self.drop(decision_id, EXPIRED, policy, now)
        self.refuse_closed(decision_id)
        raise DecisionNotFoundError(f"no decision with id {decision_id!r}")

    def refuse_closed(self, decision_id: str) -> None:
        """Raises `DecisionNotFoundError` for a decision closed to feedback, with the reason."""
        reason = self._closed.get(decision_id)
        if reason is not None:
            raise DecisionNotFoundError(f"decision {decision_id!r} is {reason}")

    def drop(self, decision_id: str, reason: str, policy: Policy, now: float) -> None:
        """Closes a pending decision unanswered; its request leaves the queue as if served as
        predicted."""
        pending = self._pending.pop(decision_id)
        if pending.in_flight and pending.current(policy):
            pending.leave_queue(policy, None, now)
        self.close(decision_id, reason)
        if self._on_drop is not None:
            self._on_drop(decision_id, reason)

    def take(self, decision_id: str) -> PendingDecision | None:
        """Removes a decision from the pending ones (to be answered or cancelled; `close` it
        then)."""
        return self._pending.pop(decision_id, None)

    def close(self, decision_id: str, reason: str) -> None:
        """Refuses feedback for ``decision_id`` from now on, saying ``reason``."""
        self._closed[decision_id] = reason
        while len(self._closed) > self.cap:
            self._closed.popitem(last=False)
