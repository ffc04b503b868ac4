"""The gateway's overhead and throughput against the fake upstream it fronts.

    .venv/bin/python benches/bench_gateway.py [--config TOML] [--state DIR]  # docs/serving.md
    .venv/bin/python benches/bench_gateway.py --prompts short --clients 1  # chosen rows only
    pytest benches/bench_gateway.py --benchmark-only                         # the same, in pytest

Five processes on loopback: a bare fake upstream (`InstantUpstream`: answers at once with 5
tokens, from bytes built once, so that the direct calls are not what limits a row), the gateway
(`mixllm serve`: the shipped router or the learned state of ``--state``, three pool models
on the fake upstream, the encoder of the ``[embedder]`` table of ``--config`` or else the int8
MiniLM, and no embedding cache whatever the table says, so every prompt is embedded), the same
gateway with every embedding cached, LiteLLM's proxy on the same upstream when it is installed
(from ``$LITELLM``, default ``litellm`` on the PATH), and the load: `oha` (from
``$OHA``, the PATH or ``~/.cargo/bin``; ``cargo install oha``), a compiled load generator that
takes little of the machine from what it measures, else this process with httpx. The reference
is a direct call to the fake upstream, measured in the same run: on a shared 2-core machine
absolute times are noisy, so overheads are read against it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import math
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import tomllib

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
        from fake_upstream import InstantUpstream
        uvicorn.run(InstantUpstream(), host="127.0.0.1", port={port}, log_level="warning",
                    access_log=False)
    """)
    url = f"http://127.0.0.1:{port}"
    with _process([sys.executable, "-c", code], url):
        yield url


def embedder_table(config: Path | None, *, cached: bool = False) -> str:
    """The ``[embedder]`` table the gateway runs with: ``config``'s (any router TOML), else the
    int8 MiniLM; the embedding cache is off, so every prompt is embedded, unless ``cached``
    (then it holds every prompt of a run)."""
    table: dict[str, Any] = {"quantized": True}
    if config is not None:
        table = dict(tomllib.loads(config.read_text(encoding="utf-8")).get("embedder", {}))
    table["cache_size"] = 65536 if cached else 0
    lines = [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    return "[embedder]\n" + "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise ValueError(f"cannot write {value!r} in the [embedder] table")


@contextmanager
def gateway(
    upstream: str, folder: Path, embedder: str, name: str = "gateway", state: Path | None = None
) -> Iterator[str]:
    """`mixllm serve` on the fake upstream; with ``state``, from a copy of that learned state
    (each gateway snapshots into its own folder, and the trained one stays as it was)."""
    port = _free_port()
    models = "".join(
        f'[[models]]\nname = "{name}"\nprice_in = {0.1 * 10**i}\nprice_out = {0.4 * 10**i}\n'
        f'ttft_s = 0.2\ntokens_per_s = 80.0\nconcurrency = 64\nbase_url = "{upstream}/v1"\n'
        for i, name in enumerate(MODELS)
    )
    config = folder / f"{name}.toml"
    config.write_text(
        f"[serve]\nport = {port}\n{embedder}{models}",
        encoding="utf-8",
    )
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "mixllm", "serve", "--config", str(config)]
    if state is not None:
        copy = folder / f"{name}-state"
        shutil.copytree(state, copy)
        args += ["--state", str(copy)]
    with _process(args, url):
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
    """The short questions, or every prompt of RouterBench's test split."""
    if kind == "short":
        return list(SHORT_PROMPTS)
    from mixllm.data import load_routerbench_csv

    return list(load_routerbench_csv(ROUTERBENCH).test().prompts)


@dataclass
class Row:
    """One target under one load: latency percentiles (ms), requests/s, failures by reason."""

    p50_ms: float
    p99_ms: float
    per_s: float
    failures: collections.Counter[str]

    @property
    def errors(self) -> int:
        return sum(self.failures.values())


@dataclass(frozen=True)
class Target:
    url: str
    model: str
    headers: dict[str, str] = field(default_factory=dict)
    # Each prompt made unique, so that no cache answers it; False: the same few prompts again
    # and again, for a gateway whose embeddings are cached.
    unique: bool = True


def _body(model: str, text: str, stream: bool, unique: int | None = None) -> dict[str, Any]:
    content = text if unique is None else f"{text} #{unique}"
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]}


def oha_executable() -> str | None:
    found = os.environ.get("OHA") or shutil.which("oha")
    cargo = Path.home() / ".cargo" / "bin" / "oha"
    return found or (str(cargo) if cargo.exists() else None)


def _oha_args(oha: str, target: Target, bodies: Path, clients: int, amount: str) -> list[str]:
    args = [oha, target.url + "/v1/chat/completions", "-m", "POST", "--no-tui", "--output-format",
            "json", "-H", "content-type: application/json", "-c", str(clients),
            "-Z", str(bodies)]  # fmt: skip
    for name, value in target.headers.items():
        args += ["-H", f"{name}: {value}"]
    kind, _, value = amount.partition("=")
    # A duration's last requests are waited for, not cut and counted as failures.
    return args + (["-n", value] if kind == "n" else ["-z", value, "-w"])


def oha_load(
    oha: str, target: Target, texts: list[str], clients: int, amount: str, *, stream: bool
) -> Row:
    """One oha process, ``clients`` connections, for ``amount`` (``n=`` requests or ``z=`` a
    duration); its bodies are the prompts, each made unique, one per line of a file it reads."""
    if not target.unique:
        texts = texts[:8]  # few enough for the cache to hold them all from the warm-up on
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", encoding="utf-8") as bodies:
        for i in range(max(len(texts), 1024)):
            unique = i if target.unique else None
            body = _body(target.model, texts[i % len(texts)], stream, unique)
            bodies.write(json.dumps(body) + "\n")
        bodies.flush()
        args = _oha_args(oha, target, Path(bodies.name), clients, amount)
        result = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
    failures: collections.Counter[str] = collections.Counter()
    codes = result.get("statusCodeDistribution", {})
    for code, count in codes.items():
        if code != "200":
            failures[f"HTTP {code}"] += count
    for reason, count in result.get("errorDistribution", {}).items():
        failures[reason] += count
    percentiles = result["latencyPercentiles"]
    return Row(
        (percentiles.get("p50") or math.nan) * 1e3,
        (percentiles.get("p99") or math.nan) * 1e3,
        # Answered requests per second over the whole run: failures are counted, not rated.
        codes.get("200", 0) / result["summary"]["total"],
        failures,
    )


async def httpx_load(
    target: Target, texts: list[str], clients: int, per_client: int, *, stream: bool
) -> Row:
    """Without oha: ``clients`` concurrent clients in this process, each sending
    ``per_client`` requests in turn, every prompt made unique."""
    url, model = target.url, target.model
    counter = itertools.count()
    latencies: list[float] = []
    failures: collections.Counter[str] = collections.Counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60, headers=target.headers) as client:

        async def one_client() -> None:
            for _ in range(per_client):
                i = next(counter)
                body = _body(model, texts[i % len(texts)], stream, i if target.unique else None)
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
        seconds = time.perf_counter() - started
    p50, p99 = (np.percentile(latencies, [50, 99]) * 1e3) if latencies else (math.nan, math.nan)
    return Row(float(p50), float(p99), len(latencies) / seconds, failures)


def _error_events(url: str) -> float:
    """Requests the gateway answered with an error (a stream's error event included), from its
    own metrics: a load generator sees only the stream's status."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("mixllm_requests_total{") and 'outcome="error"' in line
    )


# (prompts, clients, oha amount per prompt process, httpx requests per client)
ROWS = [
    ("short", 1, "n=400", 200),
    ("short", 64, "z=10s", 10),
    ("routerbench", 1, "n=120", 50),
    ("routerbench", 64, "z=10s", 5),
]
STREAMING = [("short", "z=15s", 15), ("routerbench", "z=15s", 15)]


def run_row(
    oha: str | None, target: Target, kind: str, clients: int, amount: str, per_client: int,
    *, stream: bool,
) -> Row:  # fmt: skip
    texts = prompts(kind)
    url = target.url
    mixllm = target.model == "mixllm"
    errors_before = _error_events(url) if mixllm else 0.0
    if oha is not None:
        oha_load(oha, target, texts, min(clients, 8), "n=64", stream=stream)  # warm-up
        row = oha_load(oha, target, texts, clients, amount, stream=stream)
    else:
        asyncio.run(httpx_load(target, texts, min(clients, 8), 4, stream=stream))
        row = asyncio.run(httpx_load(target, texts, clients, per_client, stream=stream))
    if mixllm:
        events = int(_error_events(url) - errors_before)
        if events:
            row.failures["answered with an error"] += events
    return row


def report(
    config: Path | None = None,
    state: Path | None = None,
    kinds: Sequence[str] | None = None,
    clients: Sequence[int] | None = None,
) -> list[str]:
    """The tables, or only the rows of the prompt ``kinds`` and client counts given (the
    streaming rows run at 64 clients)."""
    # `mixllm serve` starts from the shipped router when the folder holds no state: refused
    # here, or the run would measure the wrong router under the name of this one.
    if state is not None and not (state / "CURRENT").is_file():
        raise ValueError(f"--state {state}: no learned state there (mixllm train --out DIR)")
    rows = [row for row in ROWS if _chosen(row[0], row[1], kinds, clients)]
    streaming = [row for row in STREAMING if _chosen(row[0], 64, kinds, clients)]
    oha = oha_executable()
    loader = f"oha ({oha})" if oha else "httpx in the benchmark's process (oha not found)"
    embedder = embedder_table(config)
    learned = f"the learned state of {state}" if state is not None else "the shipped router"
    lines = [f"Machine: {machine()}", f"Load: {loader}", f"Router: {learned}"]
    lines += [f"Gateway {embedder}", ""]
    with (
        tempfile.TemporaryDirectory() as tmp,
        fake_upstream() as upstream,
        gateway(upstream, Path(tmp), embedder, state=state) as mixllm,
        gateway(
            upstream, Path(tmp), embedder_table(config, cached=True), "cached", state
        ) as cached,
        litellm_proxy(upstream, Path(tmp)) as peer,
    ):
        targets: dict[str, Target] = {
            "direct": Target(upstream, "small"),
            "mixllm serve": Target(mixllm, "mixllm"),
            # The same gateway with every embedding cached: what it costs apart from its encoder.
            "mixllm serve, embeddings cached": Target(cached, "mixllm", unique=False),
        }
        if peer is None:
            lines.append("LiteLLM proxy: not installed (set $LITELLM to its executable)")
        else:
            auth = {"Authorization": f"Bearer {LITELLM_KEY}"}
            targets["LiteLLM proxy"] = Target(peer, "small", auth)
        lines.append(
            "| prompts | clients | target | p50 ms | p99 ms | p50 overhead ms | "
            "p99 overhead ms | req/s | errors |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for kind, count, amount, per_client in rows:
            measured = {
                name: run_row(oha, target, kind, count, amount, per_client, stream=False)
                for name, target in targets.items()
            }
            direct = measured["direct"]
            for name, row in measured.items():
                lines.append(
                    f"| {kind} | {count} | {name} | {row.p50_ms:.2f} | {row.p99_ms:.2f} | "
                    f"{row.p50_ms - direct.p50_ms:.2f} | {row.p99_ms - direct.p99_ms:.2f} | "
                    f"{row.per_s:.0f} | {_errors(row)} |"
                )
        if streaming:
            lines.append("")
            lines.append("| prompts | streaming, 64 clients | req/s | p50 ms | p99 ms | errors |")
            lines.append("|---|---|---|---|---|---|")
        for kind, amount, per_client in streaming:
            for name, target in targets.items():
                row = run_row(oha, target, kind, 64, amount, per_client, stream=True)
                lines.append(
                    f"| {kind} | {name} | {row.per_s:.0f} | {row.p50_ms:.2f} | "
                    f"{row.p99_ms:.2f} | {_errors(row)} |"
                )
        lines.append("")
        lines.append(f"Machine after the run: {machine()}")
    return lines


def _chosen(
    kind: str, clients: int, kinds: Sequence[str] | None, counts: Sequence[int] | None
) -> bool:
    """Whether a row is among those asked for (every row when nothing is asked)."""
    return (kinds is None or kind in kinds) and (counts is None or clients in counts)


def _errors(row: Row) -> str:
    reasons = ", ".join(f"{count} {reason}" for reason, count in row.failures.most_common())
    return f"{row.errors} ({reasons})" if reasons else "0"


def test_gateway_report(benchmark: Any, summary: list[str]) -> None:
    config = os.environ.get("MIXLLM_BENCH_CONFIG")
    state = os.environ.get("MIXLLM_BENCH_STATE")
    args = (Path(config) if config else None, Path(state) if state else None)
    lines = benchmark.pedantic(report, args=args, rounds=1, iterations=1)
    summary.extend(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", type=Path, help="a router TOML whose [embedder] table the gateway uses"
    )
    parser.add_argument(
        "--state",
        type=Path,
        help="a learned state (mixllm train --out DIR) the gateway starts from, instead of the "
        "shipped router: one trained with the --config encoder",
    )
    parser.add_argument(
        "--prompts",
        choices=sorted({kind for kind, *_ in ROWS}),
        action="append",
        help="run only the rows of these prompts (repeatable; default: all)",
    )
    parser.add_argument(
        "--clients",
        type=int,
        choices=sorted({clients for _, clients, *_ in ROWS}),
        action="append",
        help="run only the rows at these client counts (repeatable; default: all; the "
        "streaming rows run at 64)",
    )
    parsed = parser.parse_args()
    print("\n".join(report(parsed.config, parsed.state, parsed.prompts, parsed.clients)))
