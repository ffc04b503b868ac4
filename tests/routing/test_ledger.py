"""The ledger of decisions awaiting feedback, on its own: expiry bounds, the cap on pending and
closed decisions, the reasons feedback is refused, and the queue handshake with the policy."""

from __future__ import annotations

import numpy as np
import pytest

import mixllm
from mixllm.errors import DecisionNotFoundError
from mixllm.routing.ledger import EXPIRE_PER_CALL, NO_ARM, DecisionLedger, PendingDecision

MODEL = "m"


def policy_with_model() -> mixllm.Policy:
    policy = mixllm.Policy(2)
    policy.add_model(
        MODEL, price_in=1.0, price_out=2.0, ttft_s=0.1, tokens_per_s=50.0, concurrency=4
    )
    return policy


def begin(policy: mixllm.Policy, now: float) -> PendingDecision:
    return PendingDecision.begin(policy, MODEL, 1.0, np.zeros(2), now)


class Dropped:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, decision_id: str, reason: str) -> None:
        self.calls.append((decision_id, reason))


def test_begin_counts_the_request_and_end_takes_it_out() -> None:
    policy = policy_with_model()
    pending = begin(policy, 0.0)
    assert policy.in_flight(MODEL) == 1
    assert pending.generation == policy.generation(MODEL) and pending.current(policy)
    pending.end(policy, 0.5, 1.0)
    assert policy.in_flight(MODEL) == 0


def test_a_decision_for_a_model_gone_before_it_was_counted_has_no_arm() -> None:
    policy = policy_with_model()
    policy.remove_model(MODEL)
    pending = begin(policy, 0.0)
    assert pending.generation == NO_ARM and pending.in_flight
    assert not pending.current(policy)


def test_an_arm_added_again_is_not_the_decisions() -> None:
    policy = policy_with_model()
    pending = begin(policy, 0.0)
    policy.remove_model(MODEL)
    policy.add_model(
        MODEL, price_in=1.0, price_out=2.0, ttft_s=0.1, tokens_per_s=50.0, concurrency=4
    )
    assert not pending.current(policy)


def test_expiry_drops_at_most_its_bound_per_call_oldest_first() -> None:
    policy = policy_with_model()
    dropped = Dropped()
    ledger = DecisionLedger(ttl_s=10.0, cap=10_000, on_drop=dropped)
    backlog = EXPIRE_PER_CALL + 5
    for i in range(backlog):
        ledger.add(str(i), begin(policy, 0.0), policy, 0.0)
    ledger.add("late", begin(policy, 100.0), policy, 100.0)
    assert dropped.calls == [(str(i), "expired") for i in range(EXPIRE_PER_CALL)]
    assert len(ledger) == backlog - EXPIRE_PER_CALL + 1
    # Their requests left the queue; the rest drain on the next call.
    assert policy.in_flight(MODEL) == len(ledger)
    ledger.expire(policy, 100.0)
    assert ledger.ids() == ["late"] and policy.in_flight(MODEL) == 1


def test_the_cap_drops_the_oldest_and_says_why() -> None:
    policy = policy_with_model()
    dropped = Dropped()
    ledger = DecisionLedger(ttl_s=10.0, cap=2, on_drop=dropped)
    for i in range(3):
        ledger.add(str(i), begin(policy, 0.0), policy, 0.0)
    assert ledger.ids() == ["1", "2"]
    assert dropped.calls == [("0", "dropped (too many decisions awaiting feedback)")]
    with pytest.raises(DecisionNotFoundError, match="too many decisions awaiting feedback"):
        ledger.open("0", policy, 0.0)


def test_open_refuses_a_decision_past_its_time_to_live_before_expiry_reaches_it() -> None:
    policy = policy_with_model()
    dropped = Dropped()
    ledger = DecisionLedger(ttl_s=10.0, cap=10, on_drop=dropped)
    ledger.add("a", begin(policy, 0.0), policy, 0.0)
    assert ledger.open("a", policy, 10.0).model == MODEL  # at its time to live: still open
    with pytest.raises(DecisionNotFoundError, match="'a' is expired"):
        ledger.open("a", policy, 10.5)
    assert len(ledger) == 0 and policy.in_flight(MODEL) == 0
    assert dropped.calls == [("a", "expired")]


def test_closed_ids_keep_their_reason_and_are_bounded_by_the_cap() -> None:
    policy = policy_with_model()
    ledger = DecisionLedger(ttl_s=10.0, cap=2)
    ledger.close("a", "already answered")
    ledger.close("b", "cancelled (never answered)")
    with pytest.raises(DecisionNotFoundError, match="'a' is already answered"):
        ledger.refuse_closed("a")
    ledger.close("c", "already answered")
    # The oldest reason is forgotten: the id is then simply unknown.
    ledger.refuse_closed("a")
    with pytest.raises(DecisionNotFoundError, match="no decision with id 'a'"):
        ledger.open("a", policy, 0.0)
    with pytest.raises(DecisionNotFoundError, match="'b' is cancelled"):
        ledger.open("b", policy, 0.0)


def test_a_dropped_decision_whose_arm_is_gone_leaves_no_other_queue() -> None:
    policy = policy_with_model()
    ledger = DecisionLedger(ttl_s=10.0, cap=10)
    ledger.add("old", begin(policy, 0.0), policy, 0.0)
    policy.remove_model(MODEL)
    policy.add_model(
        MODEL, price_in=1.0, price_out=2.0, ttft_s=0.1, tokens_per_s=50.0, concurrency=4
    )
    ledger.add("new", begin(policy, 0.0), policy, 0.0)
    ledger.drop("old", "expired", policy, 1.0)
    # Only the new arm's own request is counted: the old decision did not dequeue it.
    assert policy.in_flight(MODEL) == 1
