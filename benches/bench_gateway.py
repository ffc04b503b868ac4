"""The gateway's overhead and throughput against the fake upstream it fronts.

    .venv/bin/python benches/bench_gateway.py          # prints the tables of docs/serving.md
    pytest benches/bench_gateway.py --benchmark-only    # the same, in the benchmark suite

Three processes on loopback: the fake upstream of the tests (answers at once, 5 tokens), the
gateway (`mixllm serve`: the shipped router, the int8 encoder, no embedding cache, so every
prompt is embedded) and, when it is installed, LiteLLM's proxy on the same upstream (from
``$LITELLM``, default ``litellm`` on the PATH). This process sends the load with httpx. The
reference is a direct call to the fake upstream, measured in the same run: on a shared 2-core
machine absolute times are noisy, so overheads are read against it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ROUTERBENCH = ROOT.parent / "shared" / "data" / "routerbench_subset_routerdc"
MODELS = ("small", "medium", "large")
# One-line questions of the kinds RouterBench holds.
SHORT_PROMPTS = (
    "Write a Python function that returns the n-th Fibonacci number.",
    "Which is heavier, a kilogram of feathers or a kilogram of iron?",
    "What is the capital of Australia?",
    "Explain the CAP theorem in two sentences.",
    "Translate 'good morning' into French.",
    "Is 221 a prime number?",
    "Summarise the plot of Hamlet in one line.",
    "What does HTTP status 429 mean?",
)
# LiteLLM's proxy refuses to start without a master key, and then checks it on each request.
LITELLM_KEY = "sk-bench-only"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


@contextmanager
def _process(args: Sequence[str], ready_url: str, **kwargs: Any) -> Iterator[None]:
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
    try:
        _wait_ready(ready_url, process)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@contextmanager
def fake_upstream() -> Iterator[str]:
    port = _free_port()
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / "testkit")!r})
        import uvicorn
        from fake_upstream import FakeUpstream
        uvicorn.run(FakeUpstream().app, host="127.0.0.1", port={port}, log_level="warning")
    """)
    url = f"http://127.0.0.1:{port}"
    with _process([sys.executable, "-c", code], url):
        yield url


@contextmanager
def gateway(upstream: str, folder: Path) -> Iterator[str]:
    port = _free_port()
    models = "".join(
        f'[[models]]\nname = "{name}"\nprice_in = {0.1 * 10**i}\nprice_out = {0.4 * 10**i}\n'
        f'ttft_s = 0.2\ntokens_per_s = 80.0\nconcurrency = 64\nbase_url = "{upstream}/v1"\n'
        for i, name in enumerate(MODELS)
    )
    config = folder / "gateway.toml"
    config.write_text(
        f"[serve]\nport = {port}\n[embedder]\nquantized = true\ncache_size = 0\n{models}",
        encoding="utf-8",
    )
    url = f"http://127.0.0.1:{port}"
    with _process([sys.executable, "-m", "mixllm", "serve", "--config", str(config)], url):
        yield url


@contextmanager
def litellm_proxy(upstream: str, folder: Path) -> Iterator[str | None]:
    executable = os.environ.get("LITELLM") or shutil.which("litellm")
    if executable is None:
        yield None
        return
    port = _free_port()
    config = folder / "litellm.yaml"
    config.write_text(
        f"general_settings:\n  master_key: {LITELLM_KEY}\n"
        "model_list:\n"
        "  - model_name: small\n"
        "    litellm_params:\n"
        "      model: openai/small\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: unused\n",
        encoding="utf-8",
    )
    url = f"http://127.0.0.1:{port}"
    args = [executable, "--config", str(config), "--port", str(port), "--host", "127.0.0.1"]
    # Its price table ships with it: no download at start.
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    with _process(args, url + "/health/liveliness", env=env):
        yield url


def machine() -> str:
    """The CPU model (lscpu), cores and load average: the context of every absolute time."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    models = [line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line]
    model = models[0] if models else "unknown CPU"
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return f"{model}, {os.cpu_count()} cores, load average {load}"


def prompts(kind: str) -> list[str]:
    if kind == "short":
        return list(SHORT_PROMPTS)
    from mixllm.data import load_routerbench_csv

    return list(load_routerbench_csv(ROUTERBENCH).test().prompts)


@dataclass
class Run:
    latencies: list[float]
    failures: collections.Counter[str]
    seconds: float

    @property
    def errors(self) -> int:
        return sum(self.failures.values())

    def p(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1e3 if self.latencies else float("nan")

    @property
    def per_s(self) -> float:
        return len(self.latencies) / self.seconds


Target = tuple[str, str, dict[str, str]]  # url, model, headers


async def load(
    target: Target, texts: list[str], clients: int, per_client: int, *, stream: bool
) -> Run:
    """``clients`` concurrent clients, each sending ``per_client`` requests in turn; every
    prompt made unique so no cache answers it."""
    url, model, headers = target
    counter = itertools.count()
    latencies: list[float] = []
    failures: collections.Counter[str] = collections.Counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60, headers=headers) as client:

        async def one_client() -> None:
            for _ in range(per_client):
                i = next(counter)
                body = {
                    "model": model,
                    "stream": stream,
                    "messages": [{"role": "user", "content": f"{texts[i % len(texts)]} #{i}"}],
                }
                started = time.perf_counter()
                failure = None
                try:
                    if stream:
                        async with client.stream(
                            "POST", url + "/v1/chat/completions", json=body
                        ) as response:
                            async for line in response.aiter_lines():
                                if line.startswith('data: {"error"'):
                                    failure = "error event"
                    else:
                        response = await client.post(url + "/v1/chat/completions", json=body)
                    if response.status_code != 200:
                        failure = f"HTTP {response.status_code}"
                except httpx.HTTPError as err:
                    failure = type(err).__name__
                if failure is None:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures[failure] += 1

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        return Run(latencies, failures, time.perf_counter() - started)


def measure(targets: dict[str, Target], kind: str, clients: int, per_client: int) -> dict[str, Run]:
    """Each target under the same load, after a warm-up."""
    texts = prompts(kind)
    runs = {}
    for name, target in targets.items():
        asyncio.run(load(target, texts, min(clients, 8), 4, stream=False))
        runs[name] = asyncio.run(load(target, texts, clients, per_client, stream=False))
    return runs


def report() -> list[str]:
    lines = [f"Machine: {machine()}", ""]
    with (
        tempfile.TemporaryDirectory() as tmp,
        fake_upstream() as upstream,
        gateway(upstream, Path(tmp)) as mixllm,
        litellm_proxy(upstream, Path(tmp)) as peer,
    ):
        targets: dict[str, Target] = {
            "direct": (upstream, "small", {}),
            "mixllm serve": (mixllm, "mixllm", {}),
        }
        if peer is None:
            lines.append("LiteLLM proxy: not installed (set $LITELLM to its executable)")
        else:
            auth = {"Authorization": f"Bearer {LITELLM_KEY}"}
            targets["LiteLLM proxy"] = (peer, "small", auth)
        lines.append(
            "| prompts | clients | target | p50 ms | p99 ms | p50 overhead ms | "
            "p99 overhead ms | req/s | errors |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for kind, clients, per_client in [
            ("short", 1, 200),
            ("short", 64, 10),
            ("routerbench", 1, 50),
            ("routerbench", 64, 5),
        ]:
            runs = measure(targets, kind, clients, per_client)
            direct = runs["direct"]
            for name, run in runs.items():
                lines.append(
                    f"| {kind} | {clients} | {name} | {run.p(50):.2f} | {run.p(99):.2f} | "
                    f"{run.p(50) - direct.p(50):.2f} | {run.p(99) - direct.p(99):.2f} | "
                    f"{run.per_s:.0f} | {_errors(run)} |"
                )
        lines.append("")
        lines.append("| prompts | streaming, 64 clients | req/s | p50 ms | errors |")
        lines.append("|---|---|---|---|---|")
        for kind in ("short", "routerbench"):
            for name, target in targets.items():
                run = asyncio.run(load(target, prompts(kind), 64, 15, stream=True))
                lines.append(
                    f"| {kind} | {name} | {run.per_s:.0f} | {run.p(50):.2f} | {_errors(run)} |"
                )
    return lines


def _errors(run: Run) -> str:
    reasons = ", ".join(f"{count} {reason}" for reason, count in run.failures.most_common())
    return f"{run.errors} ({reasons})" if reasons else "0"


def test_gateway_report(benchmark: Any, summary: list[str]) -> None:
    lines = benchmark.pedantic(report, rounds=1, iterations=1)
    summary.extend(lines)


if __name__ == "__main__":
    print("\n".join(report()))
