"""`mixllm serve` end to end, as a user runs it: the shipped router, a configuration file, the
real command in a subprocess in front of a fake upstream, and SIGTERM under load."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from fake_upstream import FakeUpstream, ServerThread
from mixllm.routing.router import Router

USER = [{"role": "user", "content": "Which is heavier, a kilogram of feathers or of iron?"}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, upstream: str, port: int, drain_timeout_s: float = 10.0) -> None:
    path.write_text(
        f"""
[serve]
port = {port}
drain_timeout_s = {drain_timeout_s}
snapshot_every_s = 600.0

[[models]]
name = "fast-small"
price_in = 0.15
price_out = 0.6
ttft_s = 0.1
tokens_per_s = 20.0
concurrency = 8
base_url = "{upstream}/v1"

[[models]]
name = "slow-large"
price_in = 2.5
price_out = 10.0
ttft_s = 0.1
tokens_per_s = 20.0
concurrency = 8
base_url = "{upstream}/v1"
""",
        encoding="utf-8",
    )


def start(config: Path, state: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "mixllm", "serve", "--config", str(config), "--state", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            pytest.fail(f"mixllm serve exited with {process.returncode}:\n{output}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    pytest.fail("mixllm serve did not become healthy")


def test_a_model_without_an_upstream_is_refused_at_start(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text(
        '[[models]]\nname = "m"\nprice_in = 1.0\nprice_out = 1.0\nttft_s = 0.1\n'
        "tokens_per_s = 10.0\nconcurrency = 1\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "mixllm", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "no upstream for m" in result.stderr and "base_url" in result.stderr


def test_sigterm_under_load_answers_or_errors_every_request_and_saves(tmp_path: Path) -> None:
    fake = FakeUpstream()
    with ServerThread(fake.app) as upstream:
        for name in ("fast-small", "slow-large"):
            # About a second per streamed answer: requests are in flight when SIGTERM comes.
            fake.behaviour(name).tokens_per_s = 20.0
            fake.behaviour(name).output_tokens = 20
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        config, state = tmp_path / "router.toml", tmp_path / "state"
        write_config(config, upstream.url, port)
        process = start(config, state)
        try:
            wait_healthy(url, process)
            client = openai.OpenAI(
                base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30
            )
            # The first request loads the sentence encoder.
            client.chat.completions.create(model="mixllm", messages=USER)
            outcomes: list[str] = []
            started = threading.Event()
            lock = threading.Lock()

            def worker() -> None:
                for _ in range(4):
                    try:
                        stream = client.chat.completions.create(
                            model="mixllm", messages=USER, stream=True
                        )
                        started.set()
                        text = "".join(
                            c.choices[0].delta.content or "" for c in stream if c.choices
                        )
                        outcome = "answer" if text == "tok " * 20 else "cut"
                    except openai.APIError:
                        outcome = "error"
                    with lock:
                        outcomes.append(outcome)

            threads = [threading.Thread(target=worker) for _ in range(6)]
            for thread in threads:
                thread.start()
            assert started.wait(30)
            time.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            for thread in threads:
                thread.join(timeout=60)
            assert not any(t.is_alive() for t in threads), "a request never ended"
            # A graceful shutdown, then a normal exit (not by the signal it caught).
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:
                process.kill()
        output = process.stdout.read().decode() if process.stdout else ""
        assert len(outcomes) == 24, outcomes
        # The requests in flight at SIGTERM were drained to their answer; later ones refused.
        assert "cut" not in outcomes, outcomes
        assert outcomes.count("answer") >= 6, outcomes
        assert "router state saved" in output, output
    saved = Router.load(state)
    assert saved.models == ["fast-small", "slow-large"]
    served = {row["name"]: row for row in saved.describe_models()}
    # What the traffic taught (service times) was in the snapshot.
    assert any(row["mean_service_s"] > 0.5 for row in served.values()), served


def test_sigterm_cuts_a_stream_longer_than_the_drain_then_saves_and_exits_cleanly(
    tmp_path: Path,
) -> None:
    fake = FakeUpstream()
    with ServerThread(fake.app) as upstream:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        config, state = tmp_path / "router.toml", tmp_path / "state"
        write_config(config, upstream.url, port, drain_timeout_s=1.0)
        process = start(config, state)
        try:
            wait_healthy(url, process)
            client = openai.OpenAI(
                base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30
            )
            # The first request loads the sentence encoder.
            client.chat.completions.create(model="mixllm", messages=USER)
            for name in ("fast-small", "slow-large"):
                # Twenty seconds of answer, far beyond the drain.
                fake.behaviour(name).tokens_per_s = 1.0
                fake.behaviour(name).output_tokens = 20
            stream = client.chat.completions.create(model="mixllm", messages=USER, stream=True)
            chunks = iter(stream)
            assert next(chunks).choices[0].delta.content == "tok "
            process.send_signal(signal.SIGTERM)
            with pytest.raises(openai.APIError):
                for _ in chunks:
                    pass
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
        output = process.stdout.read().decode() if process.stdout else ""
        assert "router state saved" in output, output
    saved = Router.load(state)
    assert saved.models == ["fast-small", "slow-large"]
    assert all(row["in_flight"] == 0 for row in saved.describe_models())
