"""Side by side, in one process: the decision core from Python against its targets and peers.

    PYTHONPATH=testkit python benches/compare.py

Prints one markdown table (docs/results/speed.md's): decide p50/p99 at d = 64 and 384, update p50,
decide_batch throughput, the numpy reference and MABWiser per decision with mixllm's ratio to
each (measured back to back on the same queries), two-thread scaling (with each thread's share
of time spent waiting for the GIL and for a core, since a shared machine may not give two
threads two cores) and the slowdown from a 1,000 updates/s updater. Absolute times depend on
the machine and its load, both printed; the ratios are the portable numbers. Before timing
anything it checks that the numpy reference chooses the same model as `Policy.decide` on a few
hundred random queries (exit status 1 if not).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np

import workload
from mabwiser_peer import fitted_linucb, predict_once
from numpy_reference import NumpyPolicy, disagreements_on_random_queries, single_threaded_blas

CHECK_QUERIES = 300
DECIDE_CALLS = {64: 20_000, 384: 2_000}
NUMPY_CALLS = {64: 5_000, 384: 500}
MABWISER_CALLS = {64: 300, 384: 100}
BATCH_ROWS = 10_000


@dataclass
class Row:
    measure: str
    value: str
    target: str = ""
    met: bool | None = None


def fmt_us(us: float) -> str:
    return f"{us:,.2f} µs" if us < 100 else f"{us:,.0f} µs"


def median_us(call, queries, calls: int) -> float:
    return float(np.median(workload.sample_ns(call, queries, calls))) / 1e3


def main() -> int:
    started = time.perf_counter()
    single_threaded_blas()
    print(f"machine: {workload.machine()}")
    policies = {dim: workload.trained_policy(dim) for dim in (64, 384)}
    queries = {dim: workload.query_list(dim, 1000) for dim in (64, 384)}
    references = {dim: NumpyPolicy(p) for dim, p in policies.items()}
    if not reference_agrees(policies, references):
        print("the numpy reference does not decide like Policy.decide; ratios are void")
        return 1
    timer_ns = workload.timer_overhead_ns()
    rows = [
        *decide_rows(policies, queries),
        *update_rows(queries),
        *batch_rows(policies),
        *peer_rows(policies, queries, references),
        *thread_rows(queries),
        *breakdown(policies[64], queries[64]),
    ]

    print()
    print(f"K = {workload.MODELS} models; machine: {workload.machine()}")
    print(f"each per-call sample includes a perf_counter_ns pair ({timer_ns:.0f} ns)")
    print("numpy (and MABWiser through it) runs BLAS on one thread, as Policy.decide uses one core")
    print()
    print("| measure | value | target | met |")
    print("|---|---|---|---|")
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "no")
        print(f"| {r.measure} | {r.value} | {r.target} | {met} |")
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


def reference_agrees(policies, references) -> bool:
    """Whether the numpy reference picks Policy.decide's model on random queries."""
    for dim in (64, 384):
        differ, ties = disagreements_on_random_queries(
            policies[dim], references[dim], CHECK_QUERIES, seed=dim
        )
        print(
            f"numpy reference vs Policy.decide, d={dim}: {CHECK_QUERIES - differ}/"
            f"{CHECK_QUERIES} same model ({ties} of the differences are near-ties)"
        )
        if differ:
            return False
    return True


def decide_rows(policies, queries) -> list[Row]:
    """Policy.decide's latency percentiles against their targets."""
    rows: list[Row] = []
    for dim, target in ((64, (5.0, 10.0)), (384, (150.0, None))):
        samples = workload.sample_ns(
            workload.decide_once(policies[dim]), queries[dim], DECIDE_CALLS[dim]
        )
        pc = workload.Percentiles.of(samples)
        rows.append(
            Row(
                f"decide p50, d={dim}",
                fmt_us(pc.p50_us),
                f"≤ {target[0]:g} µs",
                pc.p50_us <= target[0],
            )
        )
        if target[1] is not None:
            rows.append(
                Row(
                    f"decide p99, d={dim}",
                    fmt_us(pc.p99_us),
                    f"≤ {target[1]:g} µs",
                    pc.p99_us <= target[1],
                )
            )
        else:
            rows.append(Row(f"decide p99, d={dim}", fmt_us(pc.p99_us)))
    return rows


def update_rows(queries) -> list[Row]:
    """Policy.update's latency, with the length head sharing the ridge and with its own."""
    rows: list[Row] = []
    update = workload.Percentiles.of(
        workload.sample_ns(workload.update_once(workload.trained_policy(64)), queries[64], 20_000)
    )
    rows.append(Row("update p50, d=64", fmt_us(update.p50_us), "≤ 3 µs", update.p50_us <= 3.0))
    rows.append(Row("update p99, d=64", fmt_us(update.p99_us)))
    # A length_ridge other than ridge: the length head keeps its own matrices (two systems).
    own_length = workload.Percentiles.of(
        workload.sample_ns(
            workload.update_once(workload.trained_policy(64, length_ridge=30.0)),
            queries[64],
            20_000,
        )
    )
    rows.append(Row("update p50, d=64, own length_ridge", fmt_us(own_length.p50_us)))
    return rows


def batch_rows(policies) -> list[Row]:
    """decide_batch's throughput on all CPUs and on one thread."""
    rows: list[Row] = []
    batch = workload.unit_rows(np.random.default_rng(3), BATCH_ROWS, 64)
    for threads, label in ((None, "threads: all CPUs, the default"), (1, "1 thread")):
        rate = workload.batch_rate(policies[64], batch, threads=threads)
        rows.append(
            Row(
                f"decide_batch, d=64, {BATCH_ROWS:,} rows, {label}",
                f"{rate:,.0f} decisions/s",
                "≥ 500,000/s" if threads is None else "",
                rate >= 500_000 if threads is None else None,
            )
        )
    return rows


def peer_rows(policies, queries, references) -> list[Row]:
    """Policy.decide against the numpy reference and MABWiser's LinUCB, as speed-ups."""
    rows: list[Row] = []
    for dim in (64, 384):
        ref = references[dim]

        def numpy_call(x, ref=ref):
            return ref.decide(x, workload.PROMPT_TOKENS, workload.WILLINGNESS_TO_PAY)

        peer = median_us(numpy_call, queries[dim], NUMPY_CALLS[dim])
        ours = median_us(workload.decide_once(policies[dim]), queries[dim], NUMPY_CALLS[dim])
        rows.append(Row(f"numpy reference per decision, d={dim}", fmt_us(peer)))
        rows.append(
            Row(
                f"  mixllm speed-up over numpy, d={dim}",
                f"{peer / ours:.1f}x",
                "≥ 20x",
                peer / ours >= 20,
            )
        )

    for dim in (64, 384):
        peer = median_us(predict_once(fitted_linucb(dim)), queries[dim], MABWISER_CALLS[dim])
        ours = median_us(workload.decide_once(policies[dim]), queries[dim], NUMPY_CALLS[dim])
        rows.append(Row(f"MABWiser LinUCB predict, d={dim}", fmt_us(peer)))
        rows.append(
            Row(
                f"  mixllm speed-up over MABWiser, d={dim}",
                f"{peer / ours:.1f}x",
                "≥ 100x",
                peer / ours >= 100,
            )
        )
    return rows


def thread_rows(queries) -> list[Row]:
    """Decisions/s on two threads against one, and beside a stream of updates."""
    rows: list[Row] = []
    for dim in (64, 384):
        scaling = workload.thread_scaling(workload.trained_policy(dim), queries[dim])
        one, two = scaling.first, scaling.second
        ratio = two.decisions_per_s / one.decisions_per_s
        windows = ", ".join(f"{r:.2f}" for r in scaling.window_ratios)
        rows.append(
            Row(
                f"2 threads / 1 thread decisions/s, d={dim}",
                f"{ratio:.2f}x ({one.decisions_per_s:,.0f} → {two.decisions_per_s:,.0f}/s; "
                f"cores the process got: {one.cores_used:.2f} → {two.cores_used:.2f}; "
                f"windows: {windows})",
                "≥ 1.6x",
                ratio >= 1.6,
            )
        )
        rows.append(
            Row(
                f"  2 threads, d={dim}: share of time per thread waiting for the GIL / for a core",
                f"{100 * two.blocked_share:.1f}% / {100 * two.runqueue_share:.1f}%",
            )
        )
        estimate = two.own_core_estimate_per_s / one.own_core_estimate_per_s
        rows.append(
            Row(
                f"  2 threads / 1 thread with a core per thread (estimate), d={dim}",
                f"{estimate:.2f}x",
                "≥ 1.6x",
                estimate >= 1.6,
            )
        )
    for dim in (64, 384):
        slowdown_run = workload.updater_slowdown(workload.trained_policy(dim), queries[dim])
        alone, shared = slowdown_run.first, slowdown_run.second
        slowdown = 1.0 - shared.decisions_per_s / alone.decisions_per_s
        rows.append(
            Row(
                f"decide slowdown beside 1,000 updates/s, d={dim}",
                f"{100 * slowdown:.1f}% ({alone.decisions_per_s:,.0f} → "
                f"{shared.decisions_per_s:,.0f}/s)",
                "< 25%",
                slowdown < 0.25,
            )
        )

    return rows


def breakdown(policy, queries) -> list[Row]:
    """Where a decide call from Python spends its time: fixed cost, then per model."""
    small = workload.trained_policy(64, models=1)
    tiny = workload.trained_policy(2, models=1)
    tiny_x = workload.query_list(2, 10)
    one_row = [q.reshape(1, -1) for q in queries]
    decision = workload.decide_once(policy)(queries[0])
    probes = [
        ("a PyO3 call that does nothing (len(policy))", lambda x: len(policy), queries),
        ("decide, K = 1, d = 2 (the fixed cost of a call)", workload.decide_once(tiny), tiny_x),
        ("decide, K = 1, d = 64", workload.decide_once(small), queries),
        ("decide, K = 11, d = 64", workload.decide_once(policy), queries),
        (
            "decide_batch of one row, K = 11, d = 64",
            lambda x: policy.decide_batch(
                x,
                prompt_tokens=workload.PROMPT_TOKENS,
                willingness_to_pay=workload.WILLINGNESS_TO_PAY,
            ),
            one_row,
        ),
        (
            "decide_batch of one row, K = 11, d = 64, threads=1",
            lambda x: policy.decide_batch(
                x,
                prompt_tokens=workload.PROMPT_TOKENS,
                willingness_to_pay=workload.WILLINGNESS_TO_PAY,
                threads=1,
            ),
            one_row,
        ),
        ("Decision.model", lambda x: decision.model, queries),
        ("Decision.score (a numpy array)", lambda x: decision.score, queries),
    ]
    return [
        Row(f"  where time goes: {label}", fmt_us(median_us(call, xs, 20_000)))
        for label, call, xs in probes
    ]


if __name__ == "__main__":
    sys.exit(main())
