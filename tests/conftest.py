"""Shared fixtures: a small sample of the local RouterBench subset, when it is present."""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import pytest

ROUTERBENCH = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "routerbench_subset_routerdc"
)


def read_routerbench_split(name: str) -> list[dict[str, str]]:
    """Rows of one RouterBench CSV file, skipping the test if the data is not beside the repo."""
    path = ROUTERBENCH / name
    if not path.is_file():
        pytest.skip(f"RouterBench subset not found at {ROUTERBENCH} (expected beside the repo)")
    csv.field_size_limit(1 << 24)
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="session")
def routerbench_sample() -> tuple[list[str], list[str]]:
    """12 test-split prompts (joined text) from each benchmark, with their ``eval_name``."""
    texts: list[str] = []
    labels: list[str] = []
    for name in ("arc_challenge_test.csv", "mbpp_test.csv", "winograde_test.csv"):
        for row in read_routerbench_split(name)[:12]:
            texts.append("\n".join(ast.literal_eval(row["prompt"])))
            labels.append(row["eval_name"])
    return texts, labels
