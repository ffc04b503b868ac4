"""Decisions from several Python threads: `decide` releases the GIL for the core's work.

* Scaling: total decisions/s of two threads over one thread (target ≥ 1.6x at d = 64; a machine
  with two cores caps it at 2x).
* An updater thread applying 1,000 updates/s beside one deciding thread: the drop in decisions/s
  (target < 25%).

Each comparison alternates its two configurations over short windows and takes the median of
each, so a burst of load from other processes lands on both sides. On a shared machine two
threads may not get two cores, so the kernel's per-thread accounting (schedstat) is reported
too: the share of time each thread waited for the GIL and for a core, and the ratio estimated
with a core per thread (see `workload.Throughput`).
"""

from __future__ import annotations

from dataclasses import asdict

import pytest

import workload


@pytest.mark.benchmark(group="threads")
@pytest.mark.parametrize("dim", [64, 384])
def test_two_threads(benchmark, request, summary, dim: int) -> None:
    policy = workload.trained_policy(dim)
    queries = request.getfixturevalue(f"queries_{dim}")
    scaling = benchmark.pedantic(
        workload.thread_scaling, args=(policy, queries), rounds=1, iterations=1
    )
    one, two = scaling.first, scaling.second
    ratio = two.decisions_per_s / one.decisions_per_s
    estimate = two.own_core_estimate_per_s / one.own_core_estimate_per_s
    benchmark.extra_info.update(
        one_thread=asdict(one),
        two_threads=asdict(two),
        ratio=ratio,
        window_ratios=scaling.window_ratios,
        own_core_ratio=estimate,
    )
    windows = ", ".join(f"{r:.2f}" for r in scaling.window_ratios)
    summary.append(
        f"threads d={dim}: 1 thread {one.decisions_per_s:,.0f}/s, 2 threads "
        f"{two.decisions_per_s:,.0f}/s (cores got: {one.cores_used:.2f} → {two.cores_used:.2f})"
        f" → {ratio:.2f}x (windows: {windows}); per thread {100 * two.blocked_share:.1f}% "
        f"waiting for the GIL, {100 * two.runqueue_share:.1f}% for a core; with a core each "
        f"≈ {estimate:.2f}x"
    )


@pytest.mark.benchmark(group="threads")
@pytest.mark.parametrize("dim", [64, 384])
def test_updater_alongside(benchmark, request, summary, dim: int) -> None:
    policy = workload.trained_policy(dim)
    queries = request.getfixturevalue(f"queries_{dim}")
    slowdown_run = benchmark.pedantic(
        workload.updater_slowdown, args=(policy, queries), rounds=1, iterations=1
    )
    alone, shared = slowdown_run.first, slowdown_run.second
    slowdown = 1.0 - shared.decisions_per_s / alone.decisions_per_s
    benchmark.extra_info.update(
        alone_per_s=alone.decisions_per_s,
        with_updater_per_s=shared.decisions_per_s,
        slowdown=slowdown,
    )
    summary.append(
        f"updater 1,000/s d={dim}: {alone.decisions_per_s:,.0f}/s alone, "
        f"{shared.decisions_per_s:,.0f}/s with it → {100 * slowdown:.1f}% slower"
    )
