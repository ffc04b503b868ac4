"""The `mixllm` command as a user runs it: the shipped router right after install, and training
on real RouterBench rows."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

POOL = 11


def mixllm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mixllm", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_route_with_the_shipped_router_explains_its_choice() -> None:
    result = mixllm("route", "Write a Python function that reverses a linked list.", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert len(out["models"]) == POOL
    assert out["model"] in out["models"]
    chosen = out["models"][out["model"]]
    best = max(row["score"] for row in out["models"].values() if not row["excluded"])
    assert chosen["score"] == best
    assert out["willingness_to_pay"] == 0.05 and out["prompt_tokens"] > 0

    # λ = inf is written as null: the output stays strict JSON.
    unbounded = mixllm("route", "Is the sky blue?", "--json", "--willingness-to-pay", "inf")
    assert unbounded.returncode == 0, unbounded.stderr
    strict = json.loads(unbounded.stdout, parse_constant=lambda c: pytest.fail(f"got {c}"))
    assert strict["willingness_to_pay"] is None

    text = mixllm("route", "Is the sky blue?", "--willingness-to-pay", "1000")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("model: ")
    assert "willingness to pay: 1000 USD per quality point" in text.stdout


def test_models_lists_the_pool_and_what_was_learned() -> None:
    result = mixllm("models", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == POOL
    gpt4 = next(r for r in rows if r["name"] == "gpt-4-1106-preview")
    assert gpt4["price_in"] == 10.0 and gpt4["observations"] > 2000
    # GPT-4's accuracy on the RouterBench subset is about 0.88 (the shipped router saw it).
    assert 0.8 < gpt4["mean_quality"] < 0.95
    table = mixllm("models")
    assert table.returncode == 0 and "gpt-4-1106-preview" in table.stdout


def test_errors_are_one_line_and_exit_non_zero(tmp_path: Path) -> None:
    result = mixllm("route", "hello", "--state", str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert result.stderr.startswith("mixllm route: ") and "no saved router" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_train_then_route_with_the_trained_state(
    tmp_path: Path, routerbench_slice: Callable[[Path, int], Path]
) -> None:
    data = routerbench_slice(tmp_path / "routerbench", 12)
    state = tmp_path / "state"
    trained = mixllm("train", "--data", str(data), "--out", str(state))
    assert trained.returncode == 0, trained.stderr
    assert "domains: 3 from dataset labels" in trained.stdout
    assert "counted with the embedder's tokenizer" in trained.stdout
    assert (state / "CURRENT").is_file()
    models = json.loads(mixllm("models", "--state", str(state), "--json").stdout)
    # Only the train files' rows were learned from (12 each, fewer where NaN rows dropped).
    assert all(0 < row["observations"] <= 36 for row in models)
    routed = mixllm(
        "route",
        "Complete: the trophy did not fit in the suitcase because it was",
        "--state",
        str(state),
        "--json",
    )
    assert routed.returncode == 0, routed.stderr
    assert json.loads(routed.stdout)["model"] in {row["name"] for row in models}


def test_version_names_the_package_version() -> None:
    from mixllm import __version__

    result = mixllm("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"mixllm {__version__}"


def mixllm_run(*args: str, stdin: str | bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    data = stdin.encode() if isinstance(stdin, str) else stdin
    return subprocess.run(
        [sys.executable, "-m", "mixllm", *args], input=data, capture_output=True, timeout=300
    )


def test_route_reads_the_query_from_stdin_or_a_file(tmp_path: Path) -> None:
    query = "Write a Python function that reverses a linked list."
    direct = json.loads(mixllm("route", query, "--json").stdout)
    from_stdin = mixllm_run("route", "-", "--json", stdin=query)
    assert from_stdin.returncode == 0, from_stdin.stderr
    path = tmp_path / "query.txt"
    path.write_text(query, encoding="utf-8")
    from_file = mixllm("route", "--file", str(path), "--json")
    assert from_file.returncode == 0, from_file.stderr
    for result in (json.loads(from_stdin.stdout), json.loads(from_file.stdout)):
        assert result["model"] == direct["model"]
        assert result["prompt_tokens"] == direct["prompt_tokens"]


def test_route_refuses_a_missing_query_or_text_that_is_not_utf8(tmp_path: Path) -> None:
    neither = mixllm("route")
    assert neither.returncode == 1 and "give the query" in neither.stderr
    both = mixllm("route", "hello", "--file", str(tmp_path / "q.txt"))
    assert both.returncode == 1 and "give the query" in both.stderr
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    result = mixllm("route", "--file", str(bad))
    assert result.returncode == 1 and "latin1.txt is not UTF-8 text" in result.stderr
    result_stdin = mixllm_run("route", "-", stdin=b"caf\xe9")
    assert result_stdin.returncode == 1
    assert b"standard input is not UTF-8 text" in result_stdin.stderr


def test_a_closed_pipe_ends_the_command_quietly() -> None:
    # `true` exits at once, so the route table is written into a pipe nobody reads.
    result = subprocess.run(
        ["bash", "-c", f'"{sys.executable}" -m mixllm route "Is the sky blue?" | true'],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0
    assert result.stderr == ""
