"""Learning online: a decision's request completing, cancelled, or taught by feedback."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mixllm._core import InvalidInputError, MixllmError, UnknownModelError
from mixllm.errors import DecisionNotFoundError
from mixllm.routing.ledger import EXPIRED, PendingDecision
from mixllm.routing.router_base import RouterBase
from mixllm.store.lengths import QueuedLength
from mixllm.store.observation import Observation, length_id
from mixllm.validation import optional_bounded

if TYPE_CHECKING:
    from mixllm.store import RedisStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoggedFeedback:
    """One feedback the Router learned, as `Router.refit` relearns it."""

    text: str
    model: str
    quality: float
    output_tokens: float | None


ANSWERED_ELSEWHERE = "already answered (on another replica)"


class Learning(RouterBase):
    """The Router's online learning: `complete`, `cancel`, `feedback`, `pending`."""

    def _forget_dropped(self, decision_id: str, reason: str) -> None:
        """Takes a decision dropped unanswered out of the store (caller holds the lock)."""
        if self._store is not None and reason != EXPIRED:
            # An expired decision's record expires by itself.
            self._store.forget_decision(decision_id)

    def complete(
        self,
        decision_id: str,
        *,
        latency_s: float | None = None,
        output_tokens: float | None = None,
    ) -> None:
        """The request of decision ``decision_id`` has finished: it leaves its model's queue
        (recording ``latency_s`` in the model's service time when given). The decision stays
        open for `feedback` until it expires, for services that learn the quality later.

        ``output_tokens``, the answer's length, teaches the model's length head
        (`Policy.update_length`), with no need for feedback, and the feedback then teaches
        quality only (unless it gives a length of its own). Without a store it is learned at
        once. With a store attached it is queued, then learned within milliseconds by a
        background thread and appended to the store's stream as an observation of its own,
        which every other replica learns once, so `complete` never waits on Redis; feedback
        for the decision, on any replica, then teaches quality only.

        Raises `DecisionNotFoundError` for a decision never issued, expired or answered, and
        `InvalidInputError` for one already completed or a bad value (checked against the
        bounds the decision core applies); neither changes any state."""
        optional_bounded("latency_s", latency_s)
        tokens = optional_bounded("output_tokens", output_tokens)
        now = self._now()
        store = self._store
        with self._lock:
            pending = self._ledger.open(decision_id, self._policy, now)
            if not pending.in_flight:
                raise InvalidInputError(f"decision {decision_id!r} was already completed")
            if tokens is not None and pending.current(self._policy):
                if store is None:
                    # Checked by the core before anything changes, so a refused length leaves
                    # the decision in flight.
                    self._policy.update_length(pending.model, pending.context, output_tokens=tokens)
                else:
                    # Its value passed the core's bounds above: it cannot be refused there.
                    store.queue_length(QueuedLength(decision_id, pending, tokens))
                pending.length_learned = True
            pending.in_flight = False
            pending.output_tokens = tokens
            if pending.current(self._policy):
                pending.leave_queue(self._policy, latency_s, now)

    def _learn_length(self, length: QueuedLength) -> Observation | None:
        """Learns a length `complete` queued for the store; returns it as an observation to
        share, or None when its decision's arm has left the pool since (called by the store's
        thread, under its publish lock)."""
        store = self._store
        assert store is not None
        pending = length.pending
        with self._lock:
            # Arm ids, not generations: a checkpoint adopted meanwhile has generations of its
            # own, and carries the arm ids.
            if pending.model not in self._policy or self._arm_of(pending.model) != pending.arm:
                return None
            try:
                self._policy.update_length(
                    pending.model, pending.context, output_tokens=length.output_tokens
                )
            except (InvalidInputError, UnknownModelError) as err:
                # The value passed `complete`'s checks; what is left is the arm's own refusal
                # (an update that would make it non-finite), which `complete` no longer hears.
                log.warning("cannot learn the length of decision %s: %s", length.decision_id, err)
                return None
        return Observation(
            id=length_id(length.decision_id),
            replica=store.replica,
            model=pending.model,
            context=pending.context,
            quality=None,
            output_tokens=length.output_tokens,
            weight=1.0,
            arm=pending.arm,
        )

    def cancel(self, decision_id: str) -> None:
        """The request of decision ``decision_id`` was never answered (its model failed, or the
        caller went away): it leaves its model's queue with nothing learned, and the decision
        takes no feedback."""
        now = self._now()
        with self._lock:
            pending = self._ledger.open(decision_id, self._policy, now)
            self._ledger.take(decision_id)
            if pending.in_flight and pending.current(self._policy):
                pending.cancel(self._policy, now)
            self._ledger.close(decision_id, "cancelled (never answered)")
            if self._store is not None:
                self._store.forget_decision(decision_id)

    def feedback(
        self,
        decision_id: str,
        *,
        quality: float | None = None,
        satisfied: bool | None = None,
        output_tokens: float | None = None,
        latency_s: float | None = None,
    ) -> bool:
        """Teaches the model chosen by decision ``decision_id`` how it did, and takes the request
        out of flight (recording ``latency_s`` when given) unless `complete` already did.

        Give ``quality`` (refined feedback, on the scale of the training data) or ``satisfied``
        (binary feedback, learned as quality 1 or 0 with weight ``binary_feedback_weight``).
        Returns ``True`` when learned, ``False`` when the decision's model has been removed
        since, even if a model of that name was added again (a no-op). Raises
        `DecisionNotFoundError` for an id never issued, expired or already answered, and
        `InvalidInputError` for bad values (every value is checked, against the bounds the
        decision core applies, before anything changes); neither changes any state.
        """
        target, weight = self._feedback_target(quality, satisfied)
        optional_bounded("output_tokens", output_tokens)
        optional_bounded("latency_s", latency_s)
        now = self._now()
        store = self._store
        if store is None:
            learned = self._learn(decision_id, target, weight, output_tokens, latency_s, now)
            if learned is None:
                return False
            self._after_feedback()
            return True
        # Learned and appended under the store's lock, so a checkpoint never holds an
        # observation the stream lacks.
        with store.publishing():
            with self._lock:
                pending = self._ledger.get(decision_id)
                if pending is not None:
                    check_latency_once(decision_id, pending, latency_s)
            if pending is not None:
                self._claim(store, decision_id)
                learned = self._learn(decision_id, target, weight, output_tokens, latency_s, now)
            else:
                learned = self._learn_remote(store, decision_id, target, weight, output_tokens)
            if learned is not None:
                store.publish(learned)
        return learned is not None

    def _claim(self, store: RedisStore, decision_id: str) -> None:
        """Claims a decision of this replica's for this feedback; one already answered on
        another replica leaves the queue and raises DecisionNotFoundError."""
        if store.claim(decision_id, self._config.feedback_ttl_s):
            return
        self._settle(decision_id)
        raise DecisionNotFoundError(f"decision {decision_id!r} is {ANSWERED_ELSEWHERE}")

    def _learn_remote(
        self,
        store: RedisStore,
        decision_id: str,
        target: float,
        weight: float,
        output_tokens: float | None,
    ) -> Observation | None:
        """Learns the feedback for a decision made on another replica, from its shared record
        (with the answer's length `complete` measured there, unless the feedback gives one).
        Its latency, if given, is left out: the queue it describes is the other replica's."""
        with self._lock:
            # One this replica never saw may be another replica's.
            self._ledger.refuse_closed(decision_id)
        try:
            record = store.fetch_decision(decision_id)
        except MixllmError as err:
            raise DecisionNotFoundError(
                f"no decision with id {decision_id!r} here, and the store cannot be asked: {err}"
            ) from err
        if record is None:
            raise DecisionNotFoundError(f"no decision with id {decision_id!r}")
        if not store.claim(decision_id, self._config.feedback_ttl_s):
            raise DecisionNotFoundError(f"decision {decision_id!r} is already answered")
        tokens = record.output_tokens if output_tokens is None else output_tokens
        with self._lock:
            if record.model not in self._policy or self._arm_of(record.model) != record.arm:
                self._ledger.close(decision_id, "answered (its model had been removed)")
                return None
            self._policy.update(
                record.model, record.context, quality=target, output_tokens=tokens, weight=weight
            )
            self._ledger.close(decision_id, "already answered")
        return Observation(
            id=decision_id,
            replica=store.replica,
            model=record.model,
            context=record.context,
            quality=target,
            output_tokens=tokens,
            weight=weight,
            arm=record.arm,
        )

    def _settle(self, decision_id: str) -> None:
        """A decision of this replica's was answered on another: its request leaves the queue
        as if served as predicted, and it takes no more feedback."""
        now = self._now()
        with self._lock:
            pending = self._ledger.take(decision_id)
            if pending is None:
                return
            if pending.in_flight and pending.current(self._policy):
                pending.leave_queue(self._policy, None, now)
            self._ledger.close(decision_id, ANSWERED_ELSEWHERE)

    def _learn(
        self,
        decision_id: str,
        target: float,
        weight: float,
        output_tokens: float | None,
        latency_s: float | None,
        now: float,
    ) -> Observation | None:
        """Learns a decision's feedback; returns what was learned, or None for a decision
        whose model was removed."""
        with self._lock:
            pending = self._ledger.open(decision_id, self._policy, now)
            check_latency_once(decision_id, pending, latency_s)
            policy = self._policy
            if not pending.current(policy):
                self._ledger.take(decision_id)
                self._ledger.close(decision_id, "answered (its model had been removed)")
                return None
            tokens = pending.output_tokens if output_tokens is None else output_tokens
            # A length learned at completion is not taught twice, here or on other replicas.
            taught = None if pending.length_learned and output_tokens is None else tokens
            policy.update(
                pending.model, pending.context, quality=target, output_tokens=taught, weight=weight
            )
            self._ledger.take(decision_id)
            if pending.in_flight:
                pending.leave_queue(policy, latency_s, now)
            self._ledger.close(decision_id, "already answered")
            if pending.text is not None:
                self._feedback_log.append(
                    LoggedFeedback(pending.text, pending.model, target, tokens)
                )
        return Observation(
            id=decision_id,
            replica=self._store.replica if self._store is not None else "",
            model=pending.model,
            context=pending.context,
            quality=target,
            output_tokens=taught,
            weight=weight,
            arm=pending.arm,
        )

    def _feedback_target(
        self, quality: float | None, satisfied: bool | None
    ) -> tuple[float, float]:
        if (quality is None) == (satisfied is None):
            raise InvalidInputError("give exactly one of quality (refined) or satisfied (binary)")
        if satisfied is not None:
            if not isinstance(satisfied, (bool, np.bool_)):
                raise InvalidInputError(f"satisfied must be True or False, got {satisfied!r}")
            return (1.0 if satisfied else 0.0), self._config.binary_feedback_weight
        optional_bounded("quality", quality, minimum=None)
        return float(quality), 1.0  # type: ignore[arg-type]

    def pending(self) -> int:
        """Decisions awaiting feedback."""
        with self._lock:
            return len(self._ledger)


def check_latency_once(decision_id: str, pending: PendingDecision, latency_s: float | None) -> None:
    if latency_s is not None and not pending.in_flight:
        raise InvalidInputError(
            f"decision {decision_id!r} was completed already, with its latency: "
            "give latency_s to complete() or to feedback(), not both"
        )
