"""Whether a call releases the GIL: the calling thread runs it while the test's thread loops."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def python_runs_during(call: Callable[[], object]) -> tuple[float, float, list[float]]:
    """Runs ``call`` on a thread while this one loops; returns when the call started and
    ended, and when this thread's iterations ran."""
    window: list[float] = []
    started = threading.Event()

    def work() -> None:
        window.append(time.perf_counter())
        started.set()
        call()
        window.append(time.perf_counter())

    thread = threading.Thread(target=work)
    thread.start()
    started.wait()
    ticks = []
    while thread.is_alive():
        ticks.append(time.perf_counter())
    thread.join()
    return window[0], window[1], ticks
