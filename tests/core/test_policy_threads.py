"""`mixllm.Policy` shared by Python threads: no lost or torn update, no deadlock, no decision that
points outside its own pool. A join timeout is the deadlock detector."""

from __future__ import annotations

import faulthandler
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import mixllm

DIM = 12
CONFIG: dict[str, Any] = {
    "alpha": 0.1,
    "ridge": 0.9,
    "length_ridge": 3.0,
    "tau_s": 20.0,
    "refactor_every": 37,
}
PROFILE: dict[str, Any] = {
    "price_in": 1.0,
    "price_out": 2.0,
    "ttft_s": 0.3,
    "tokens_per_s": 50.0,
    "concurrency": 3,
}
DEADLOCK_TIMEOUT_S = 60.0


def run_concurrently(
    workers: list[Callable[[], None]], stop: threading.Event, seconds: float
) -> None:
    """Runs each worker in its own thread for `seconds`, then stops them; fails on an exception
    in any worker or on a thread still running after the deadlock timeout."""
    errors: list[BaseException] = []

    def guarded(work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as error:
            errors.append(error)
            stop.set()

    threads = [threading.Thread(target=guarded, args=(w,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    deadline = time.monotonic() + DEADLOCK_TIMEOUT_S
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    if alive:
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        pytest.fail(f"threads still running after {DEADLOCK_TIMEOUT_S} s (deadlock?): {alive}")
    if errors:
        raise errors[0]


class _Workload:
    """What the threads of the mixed stress test do to one policy, and what they count."""

    def __init__(self, policy: mixllm.Policy, owned: list[str]) -> None:
        self.policy = policy
        self.owned = owned
        self.stop = threading.Event()
        self.applied: dict[str, list[dict[str, Any]]] = {name: [] for name in owned}
        self.counts = {"decisions": 0, "batches": 0, "churn": 0, "snapshots": 0}

    def updater(self, name: str, seed: int) -> Callable[[], None]:
        def work() -> None:
            rng = np.random.default_rng(seed)
            while not self.stop.is_set():
                obs = {
                    "x": rng.normal(size=DIM),
                    "quality": float(rng.uniform()),
                    "output_tokens": None if rng.uniform() < 0.3 else float(rng.integers(0, 999)),
                    "weight": float(10 ** rng.uniform(-2, 2)),
                }
                self.policy.update(name, **obs)
                self.applied[name].append(obs)

        return work

    def decider(self, seed: int) -> Callable[[], None]:
        def work() -> None:
            rng = np.random.default_rng(seed)
            while not self.stop.is_set():
                d = self.policy.decide(
                    rng.normal(size=DIM), prompt_tokens=500.0, willingness_to_pay=2.0
                )
                assert 0 <= d.index < len(d.models)
                assert d.model == d.models[d.index]
                assert len(d.score) == len(d.models) == len(d.excluded)
                assert set(self.owned) <= set(d.models)
                assert np.isfinite(d.score).all()
                self.counts["decisions"] += 1

        return work

    def batch_decider(self) -> None:
        rng = np.random.default_rng(99)
        most = len(self.owned) + 2  # the owned models and at most two churning ones
        while not self.stop.is_set():
            n = 64
            chosen = self.policy.decide_batch(
                rng.normal(size=(n, DIM)),
                prompt_tokens=rng.uniform(0, 1000, size=n),
                willingness_to_pay=1.0,
            )
            assert chosen.shape == (n,)
            assert ((chosen >= 0) & (chosen < most)).all()
            self.counts["batches"] += 1

    def queues(self) -> None:
        rng = np.random.default_rng(7)
        policy = self.policy
        while not self.stop.is_set():
            name = self.owned[rng.integers(len(self.owned))]
            for _ in range(int(rng.integers(1, 6))):
                policy.begin(name)
            while policy.in_flight(name) > 0 and not rng.uniform() < 0.05:
                policy.end(name, float(rng.uniform(0.1, 5.0)))
            while policy.in_flight(name) > 0:
                policy.end(name, 1.0)

    def churn(self, prefix: str) -> Callable[[], None]:
        def work() -> None:
            rng = np.random.default_rng(len(prefix))
            policy = self.policy
            i = 0
            while not self.stop.is_set():
                name = f"{prefix}-{i}"
                policy.add_model(name, **PROFILE)
                policy.update(name, rng.normal(size=DIM), quality=0.9)
                policy.begin(name)
                policy.decide(rng.normal(size=DIM), prompt_tokens=1.0, willingness_to_pay=1.0)
                policy.remove_model(name)
                with pytest.raises(mixllm.UnknownModelError):
                    policy.end(name, 1.0)
                i += 1
                self.counts["churn"] += 1

        return work

    def snapshots(self) -> None:
        while not self.stop.is_set():
            state = self.policy.inspect(self.owned[0])
            # A and A⁻¹ are reported from the same update, never from two different ones.
            np.testing.assert_allclose(state["a"] @ state["a_inv"], np.eye(DIM), atol=1e-8)
            restored = mixllm.Policy.from_bytes(self.policy.to_bytes(), dim=DIM)
            assert set(self.owned) <= set(restored.models)
            self.counts["snapshots"] += 1


def _assert_replay_matches(workload: _Workload) -> None:
    """Each owned model's state is what its updates, applied one by one in order, give."""
    replay = mixllm.Policy(DIM, **CONFIG)
    for i, name in enumerate(workload.owned):
        replay.add_model(name, **PROFILE, prior_quality=0.3 + 0.1 * i)
        for obs in workload.applied[name]:
            replay.update(name, **obs)
        got, expected = workload.policy.inspect(name), replay.inspect(name)
        assert got["observations"] == expected["observations"] == len(workload.applied[name])
        assert got["updates_since_refactor"] == expected["updates_since_refactor"]
        np.testing.assert_allclose(got["a"], expected["a"], rtol=1e-13)
        for key in ("a_inv", "theta_quality", "theta_log_length", "b_quality", "b_log_length"):
            scale = np.abs(expected[key]).max()
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-9, atol=1e-9 * scale)


def test_concurrent_deciders_updaters_queues_and_pool_changes() -> None:
    policy = mixllm.Policy(DIM, **CONFIG)
    owned = [f"own-{i}" for i in range(3)]
    for i, name in enumerate(owned):
        policy.add_model(name, **PROFILE, prior_quality=0.3 + 0.1 * i)
    work = _Workload(policy, owned)
    workers = [work.updater(name, seed) for seed, name in enumerate(owned)]
    workers += [work.decider(10), work.decider(11), work.batch_decider, work.queues]
    workers += [work.churn("churn-a"), work.churn("churn-b"), work.snapshots]
    run_concurrently(workers, work.stop, seconds=2.0)

    assert all(count > 0 for count in work.counts.values()), work.counts
    assert policy.models[: len(owned)] == owned
    assert len(policy.models) == len(owned)
    for name in owned:
        assert policy.in_flight(name) == 0
        assert len(work.applied[name]) > 0
    _assert_replay_matches(work)


def test_threads_updating_the_same_model_lose_no_update(arm_oracle: Any) -> None:
    policy = mixllm.Policy(DIM, **CONFIG)
    policy.add_model("shared", **PROFILE, prior_output_tokens=100.0)
    threads, per_thread = 4, 300
    rng = np.random.default_rng(3)
    batches = [
        [
            {
                "x": rng.normal(size=DIM),
                "quality": float(rng.uniform()),
                "output_tokens": float(rng.integers(0, 2000)),
                "weight": float(10 ** rng.uniform(-1, 1)),
            }
            for _ in range(per_thread)
        ]
        for _ in range(threads)
    ]
    stop = threading.Event()
    done = threading.Barrier(threads + 1)

    def updater(batch: list[dict[str, Any]]) -> Callable[[], None]:
        def work() -> None:
            for obs in batch:
                policy.update("shared", **obs)
            done.wait(timeout=DEADLOCK_TIMEOUT_S)

        return work

    def decider() -> None:
        x = np.ones(DIM)
        while not stop.is_set():
            policy.decide(x, prompt_tokens=10.0, willingness_to_pay=1.0)

    def finish() -> None:
        done.wait(timeout=DEADLOCK_TIMEOUT_S)
        stop.set()

    run_concurrently(
        [*(updater(b) for b in batches), decider, finish], stop, seconds=DEADLOCK_TIMEOUT_S
    )

    oracle = arm_oracle(DIM, CONFIG["ridge"], 0.5, 100.0, length_ridge=CONFIG["length_ridge"])
    for batch in batches:
        for obs in batch:
            oracle.update(**obs)
    state = policy.inspect("shared")
    assert state["observations"] == threads * per_thread
    oracle.assert_matches(state, rtol=1e-8)
