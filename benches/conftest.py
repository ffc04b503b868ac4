"""Fixtures of the pytest-benchmark suite: trained pools, queries and the two peers.

Run with ``pytest benches --benchmark-only``: ``benches/pytest.ini`` collects ``bench_*.py``, and
pytest puts ``benches/`` and ``testkit/`` (the modules shared with the tests: the numpy reference,
the synthetic workload) on ``sys.path``, so they import by name. Each benchmark
adds its derived numbers (p50/p99, ratios against a peer measured in the same test) to
``benchmark.extra_info`` and to the summary printed at the end of the run.
"""

from __future__ import annotations

import numpy as np
import pytest

import workload
from numpy_reference import NumpyPolicy, single_threaded_blas

_SUMMARY: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _SUMMARY:
        terminalreporter.section("mixllm decision core")
        terminalreporter.write_line(workload.machine())
        for line in _SUMMARY:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session", autouse=True)
def _one_blas_thread() -> None:
    single_threaded_blas()


@pytest.fixture(scope="session")
def summary() -> list[str]:
    """Lines printed after the benchmark tables."""
    return _SUMMARY


@pytest.fixture(scope="session")
def policy_64():
    return workload.trained_policy(64)


@pytest.fixture(scope="session")
def policy_384():
    return workload.trained_policy(384)


@pytest.fixture(scope="session")
def queries_64() -> list[np.ndarray]:
    return workload.query_list(64, 1000)


@pytest.fixture(scope="session")
def queries_384() -> list[np.ndarray]:
    return workload.query_list(384, 1000)


@pytest.fixture(scope="session")
def reference_64(policy_64) -> NumpyPolicy:
    return NumpyPolicy(policy_64)


@pytest.fixture(scope="session")
def reference_384(policy_384) -> NumpyPolicy:
    return NumpyPolicy(policy_384)
