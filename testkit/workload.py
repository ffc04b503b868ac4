"""The workload every Python-side benchmark of the decision core shares.

A pool of K = 11 models (RouterBench's size) with distinct prices, speeds and priors, each fitted
on 200 contexts and then given 20 online updates, so A⁻¹ is dense and both the exact-fit and the
Sherman-Morrison paths have shaped it; the same pool as the criterion benches in
``rust/mixllm-core/benches/policy.rs``. Contexts are random unit vectors, as sentence embeddings
are. No request is in flight, so predicted latency has no queue term.

Also here: per-call latency sampling with ``perf_counter_ns``, and the thread throughput runs.
"""

from __future__ import annotations

import os
import platform
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from mixllm import Policy
from mixllm.understanding.taxonomy import DOMAINS

MODELS = 11
FIT_ROWS = 200
ONLINE_UPDATES = 20
PROMPT_TOKENS = 300.0
# USD per quality point. The pool's queries cost ≈1e-4..1.5e-3 USD, so at 0.01 cost moves scores
# by up to ~0.15, as much as quality does. (The timing does not depend on it; the reference
# checks sweep it over eight decades.)
WILLINGNESS_TO_PAY = 0.01


# The 100 seed queries of the domain taxonomy (8-20 words): the short queries of the encoder and
# router benchmarks.
SHORT_QUERIES = [seed for domain in DOMAINS for seed in domain.seeds]


def model_name(m: int) -> str:
    return f"model-{m}"


def unit_rows(rng: np.random.Generator, rows: int, dim: int) -> NDArray[np.float64]:
    """`rows` random unit vectors of length `dim`, C-contiguous float64."""
    x = rng.uniform(-1.0, 1.0, size=(rows, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x)


def trained_policy(dim: int, seed: int = 7, models: int = MODELS, **config: float) -> Policy:
    """A pool of `models` models with learned state; `config` goes to `Policy`."""
    rng = np.random.default_rng(seed)
    policy = Policy(dim, **config)
    for m in range(models):
        name = model_name(m)
        policy.add_model(
            name,
            price_in=0.1 * m,
            price_out=0.3 * m,
            ttft_s=0.2 + 0.05 * m,
            tokens_per_s=40.0 + 5.0 * m,
            concurrency=8,
            prior_quality=0.45 + 0.01 * m,
            prior_output_tokens=150.0 + 20.0 * m,
        )
        x = unit_rows(rng, FIT_ROWS, dim)
        policy.fit(name, x, rng.uniform(0.0, 1.0, FIT_ROWS), rng.uniform(10.0, 500.0, FIT_ROWS))
        for row in unit_rows(rng, ONLINE_UPDATES, dim):
            policy.update(
                name,
                row,
                quality=float(rng.uniform()),
                output_tokens=float(rng.uniform(10.0, 500.0)),
            )
    return policy


def query_list(dim: int, count: int, seed: int = 11) -> list[NDArray[np.float64]]:
    """`count` contexts as separate 1-D arrays, made up front so the timed loop only indexes."""
    return list(unit_rows(np.random.default_rng(seed), count, dim))


def sample_ns(call: Callable[[NDArray[np.float64]], object], xs: Sequence, calls: int) -> NDArray:
    """Wall time of each of `calls` calls of `call(x)`, cycling through `xs`, in nanoseconds.

    A tenth of the calls (at least 100) run first untimed, to warm caches and branch predictors.
    Each sample includes one ``perf_counter_ns`` pair (≈50-80 ns here; see `timer_overhead_ns`).
    """
    n = len(xs)
    for i in range(max(100, calls // 10)):
        call(xs[i % n])
    out = np.empty(calls, dtype=np.int64)
    clock = time.perf_counter_ns
    for i in range(calls):
        x = xs[i % n]
        start = clock()
        call(x)
        out[i] = clock() - start
    return out


def timer_overhead_ns(calls: int = 20_000) -> float:
    """Median cost of an empty ``perf_counter_ns`` pair, the floor of every sample."""
    clock = time.perf_counter_ns
    samples = np.empty(calls, dtype=np.int64)
    for i in range(calls):
        start = clock()
        samples[i] = clock() - start
    return float(np.median(samples))


@dataclass(frozen=True)
class Percentiles:
    p50_us: float
    p99_us: float

    @classmethod
    def of(cls, samples_ns: NDArray) -> Percentiles:
        p50, p99 = np.percentile(samples_ns, [50, 99])
        return cls(float(p50) / 1e3, float(p99) / 1e3)


def decide_once(policy: Policy) -> Callable[[NDArray[np.float64]], object]:
    def call(x: NDArray[np.float64]) -> object:
        return policy.decide(x, prompt_tokens=PROMPT_TOKENS, willingness_to_pay=WILLINGNESS_TO_PAY)

    return call


def update_once(policy: Policy, name: str = "model-3") -> Callable[[NDArray[np.float64]], None]:
    def call(x: NDArray[np.float64]) -> None:
        policy.update(name, x, quality=0.7, output_tokens=120.0)

    return call


def batch_rate(
    policy: Policy, xs: NDArray[np.float64], threads: int | None = None, repeats: int = 10
) -> float:
    """Best decisions per second of `decide_batch` over `xs` (all rows in one call).

    `threads=None` is the binding's default: the rows are split over the CPUs available.
    """

    def run() -> None:
        policy.decide_batch(
            xs,
            prompt_tokens=PROMPT_TOKENS,
            willingness_to_pay=WILLINGNESS_TO_PAY,
            threads=threads,
        )

    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return len(xs) / best


@dataclass(frozen=True)
class Throughput:
    decisions_per_s: float
    # Process CPU seconds per wall second: how many cores the run really got.
    cores_used: float
    # Per deciding thread (mean), shares of the window from the kernel's schedstat: waiting in
    # the run queue for a core (other load on the machine) and blocked off the run queue,
    # which for a thread that never sleeps means waiting for the GIL.
    runqueue_share: float
    blocked_share: float
    # Decisions per second if every deciding thread had had a core of its own whenever it was
    # runnable (run-queue wait turned into running time, GIL waits kept): an estimate of the
    # throughput on an idle machine, derived from the same window.
    own_core_estimate_per_s: float


def _schedstat() -> tuple[int, int]:
    """(ns on a CPU, ns waiting in the run queue) of the calling thread; zeros if unavailable."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as f:
            on_cpu, waiting, _ = f.read().split()
        return int(on_cpu), int(waiting)
    except (OSError, ValueError):
        return 0, 0


def decisions_per_second(
    policy: Policy,
    xs: Sequence,
    threads: int,
    seconds: float,
    updates_per_second: float = 0.0,
) -> Throughput:
    """Total decisions per second of `threads` Python threads calling `decide` for `seconds`.

    With `updates_per_second`, one more thread applies online updates at that rate on a fixed
    schedule (catching up if it falls behind) for the same window.
    """
    stop = threading.Event()
    start_line = threading.Barrier(threads + 1 + (1 if updates_per_second else 0))
    counts = [0] * threads
    # Per deciding thread: wall ns, ns on a CPU, ns in the run queue.
    spent = [(0, 0, 0)] * threads
    decide = decide_once(policy)

    def decider(slot: int) -> None:
        n = len(xs)
        i = slot * 7919
        start_line.wait()
        wall0, (cpu0, queue0) = time.perf_counter_ns(), _schedstat()
        while not stop.is_set():
            for _ in range(64):
                decide(xs[i % n])
                i += 1
            counts[slot] += 64
        cpu1, queue1 = _schedstat()
        spent[slot] = (time.perf_counter_ns() - wall0, cpu1 - cpu0, queue1 - queue0)

    def updater() -> None:
        period = 1.0 / updates_per_second
        n = len(xs)
        done = 0
        start_line.wait()
        begin = time.perf_counter()
        while not stop.is_set():
            due = int((time.perf_counter() - begin) / period) + 1
            while done < due:
                policy.update(model_name(done % MODELS), xs[done % n], quality=0.6)
                done += 1
            time.sleep(max(0.0, begin + done * period - time.perf_counter()))

    workers = [threading.Thread(target=decider, args=(slot,)) for slot in range(threads)]
    if updates_per_second:
        workers.append(threading.Thread(target=updater))
    for w in workers:
        w.start()
    start_line.wait()
    begin = time.perf_counter()
    cpu_begin = time.process_time()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    wall = time.perf_counter() - begin
    queue = [q / w for w, _, q in spent]
    blocked = [max(0.0, (w - c - q) / w) for w, c, q in spent]
    own_core = sum(
        count / (w_ns / 1e9) / max(1e-9, 1.0 - q)
        for count, (w_ns, _, _), q in zip(counts, spent, queue, strict=True)
    )
    return Throughput(
        decisions_per_s=sum(counts) / wall,
        cores_used=(time.process_time() - cpu_begin) / wall,
        runqueue_share=float(np.mean(queue)),
        blocked_share=float(np.mean(blocked)),
        own_core_estimate_per_s=own_core,
    )


def machine() -> str:
    """CPU model (lscpu), cores and load average, to print beside absolute times."""
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return f"{model}, {os.cpu_count()} cores, load average {load}"


THREAD_WINDOW_S = 1.0
THREAD_REPEATS = 3
UPDATER_RATE = 1000.0


@dataclass(frozen=True)
class Comparison:
    """Two configurations measured over alternating windows."""

    # Field-wise medians over each configuration's windows.
    first: Throughput
    second: Throughput
    # second / first decisions per second, window pair by window pair: the spread the medians
    # hide (two deciding threads can fall into step with the GIL in one window and not the next).
    window_ratios: tuple[float, ...]


def _alternate(first: Callable[[], Throughput], second: Callable[[], Throughput]) -> Comparison:
    runs: tuple[list[Throughput], list[Throughput]] = ([], [])
    for _ in range(THREAD_REPEATS):
        runs[0].append(first())
        runs[1].append(second())
    ratios = tuple(
        b.decisions_per_s / a.decisions_per_s for a, b in zip(runs[0], runs[1], strict=True)
    )
    return Comparison(_median(runs[0]), _median(runs[1]), ratios)


def _median(runs: list[Throughput]) -> Throughput:
    return Throughput(
        **{
            field: float(np.median([getattr(r, field) for r in runs]))
            for field in Throughput.__dataclass_fields__
        }
    )


def thread_scaling(policy: Policy, xs: Sequence) -> Comparison:
    """(one deciding thread, two deciding threads)."""
    return _alternate(
        lambda: decisions_per_second(policy, xs, 1, THREAD_WINDOW_S),
        lambda: decisions_per_second(policy, xs, 2, THREAD_WINDOW_S),
    )


def updater_slowdown(policy: Policy, xs: Sequence) -> Comparison:
    """(one deciding thread, one deciding thread beside a 1,000 updates/s updater)."""
    return _alternate(
        lambda: decisions_per_second(policy, xs, 1, THREAD_WINDOW_S),
        lambda: decisions_per_second(
            policy, xs, 1, THREAD_WINDOW_S, updates_per_second=UPDATER_RATE
        ),
    )
