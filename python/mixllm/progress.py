"""Progress of long commands (`mixllm train`, `mixllm eval`): one line on standard error,
redrawn in place, with the stage, how far it is and the time since the start."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

__all__ = ["Progress", "ProgressLine"]

# What long operations report to: the stage, how much of it is done, and of how much.
Progress = Callable[[str, int, int], None]


class ProgressLine:
    """A `Progress` that draws a bar on stderr (nothing when disabled or without a stderr)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr is not None
        self.started = time.perf_counter()

    def __call__(self, label: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        width = 24
        filled = int(width * done / max(total, 1))
        elapsed = time.perf_counter() - self.started
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<44.44} "
            f"{elapsed:6.0f} s"
        )
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()
