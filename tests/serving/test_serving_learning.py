"""The gateway learns from the traffic it relays: feedback reaches the chosen model's arm with
the answer's measured length, and an upstream that slows down loses traffic by itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from fake_upstream import VirtualClock
from gateway_harness import Harness, HashEmbedder, running_gateway, wait_until
from mixllm.config import ServeConfig
from mixllm.routing.router import Router
from mixllm.serving import app as serving_app

USER = [{"role": "user", "content": "Write a haiku about routers."}]


def client(harness: Harness) -> openai.OpenAI:
    return openai.OpenAI(base_url=harness.url + "/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("stream", [False, True])
def test_completion_teaches_the_length_and_feedback_the_quality(stream: bool) -> None:
    with running_gateway() as harness:
        harness.fake.behaviour("small-upstream").output_tokens = 40
        start = harness.router.policy.inspect("small")
        raw = client(harness).chat.completions.with_raw_response.create(
            model="small", messages=USER, stream=stream
        )
        if stream:
            list(raw.parse())  # type: ignore[call-overload]
        decision_id = raw.headers["x-mixllm-decision-id"]
        # With no feedback yet, the length head learned the 40 tokens the upstream produced
        # (counted from the stream, or read from `usage`): its prior was 5. (The context's last
        # entry is the constant 1.)
        assert wait_until(
            lambda: (
                harness.router.policy.inspect("small")["b_log_length"][-1]
                != start["b_log_length"][-1]
            )
        )
        before = harness.router.policy.inspect("small")
        length_residual = before["b_log_length"] - start["b_log_length"]
        assert length_residual[-1] == pytest.approx(np.log1p(40) - np.log1p(5))
        assert before["observations"] == start["observations"]
        np.testing.assert_array_equal(before["b_quality"], start["b_quality"])
        other = harness.router.policy.inspect("large")
        response = httpx.post(
            harness.url + "/v1/feedback", json={"decision_id": decision_id, "quality": 0.9}
        )
        assert response.status_code == 200 and response.json()["learned"] is True
        after = harness.router.policy.inspect("small")
        assert after["observations"] == before["observations"] + 1
        assert not np.array_equal(after["b_quality"], before["b_quality"])
        # The feedback teaches quality only: the length is not learned twice.
        np.testing.assert_array_equal(after["b_log_length"], before["b_log_length"])
        assert harness.router.policy.inspect("large")["observations"] == other["observations"]
        # The same decision takes no second feedback.
        again = httpx.post(
            harness.url + "/v1/feedback", json={"decision_id": decision_id, "satisfied": True}
        )
        assert again.status_code == 404 and "already answered" in again.json()["error"]["message"]


def test_the_learned_length_follows_the_traffic_without_feedback() -> None:
    with running_gateway(("small",)) as harness:
        harness.fake.behaviour("small-upstream").output_tokens = 200
        texts = [f"Question number {i} about routers?" for i in range(12)]
        probe = "Another question about routers?"

        def predicted() -> float:
            decision = harness.router.route(probe)
            harness.router.cancel(decision.id)
            return float(decision.detail.output_tokens[0])

        before = predicted()
        chat = client(harness).chat.completions
        for i, text in enumerate(texts):
            messages = [{"role": "user", "content": text}]
            if i % 2:
                list(chat.create(model="mixllm", messages=messages, stream=True))  # type: ignore[arg-type]
            else:
                chat.create(model="mixllm", messages=messages)  # type: ignore[arg-type]
        after = predicted()
        # The prior was 5 tokens; every answer was 200, none was rated.
        assert before == pytest.approx(5.0, rel=0.5)
        assert after > 4 * before
        assert harness.router.policy.inspect("small")["observations"] == 0


def test_binary_feedback_and_bad_feedback() -> None:
    with running_gateway() as harness:
        raw = client(harness).chat.completions.with_raw_response.create(
            model="mixllm", messages=USER
        )
        decision_id = raw.headers["x-mixllm-decision-id"]
        model = raw.parse().model
        before = harness.router.policy.inspect(model)["weight_sum"]
        for body, status in [
            ({"decision_id": "nope", "quality": 1.0}, 404),
            ({"decision_id": decision_id}, 400),
            ({"decision_id": decision_id, "quality": 1.0, "satisfied": True}, 400),
            ({"decision_id": decision_id, "quality": "good"}, 400),
            ({"decision_id": decision_id, "rating": 5}, 400),
            ({"quality": 1.0}, 400),
        ]:
            response = httpx.post(harness.url + "/v1/feedback", json=body)
            assert response.status_code == status, body
            assert response.json()["error"]["message"]
        assert harness.router.policy.inspect(model)["weight_sum"] == before
        ok = httpx.post(
            harness.url + "/v1/feedback", json={"decision_id": decision_id, "satisfied": False}
        )
        assert ok.status_code == 200
        weight = harness.router.config.binary_feedback_weight
        assert harness.router.policy.inspect(model)["weight_sum"] == pytest.approx(before + weight)
        metrics = httpx.get(harness.url + "/metrics").text
        assert 'mixllm_feedback_total{kind="satisfied",learned="true"} 1.0' in metrics


def test_a_slowed_upstream_loses_traffic_within_a_few_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The gateway times its upstreams on a clock that only the upstream's waits move: the
    # latencies it learns are the upstream's own, however busy the machine running the test.
    clock = VirtualClock()
    monkeypatch.setattr(serving_app, "time", clock)
    # τ = 1 s and β = 1: a model a few hundred milliseconds slower than its peer scores lower.
    with running_gateway(tau_s=1.0, beta=1.0) as harness:
        harness.fake.clock = clock

        async def models_chosen(count: int) -> list[str]:
            async_client = openai.AsyncOpenAI(
                base_url=harness.url + "/v1", api_key="unused", max_retries=0
            )
            chosen = []
            for _ in range(count):
                completion = await async_client.chat.completions.create(
                    model="mixllm", messages=USER
                )
                chosen.append(completion.model)
            return chosen

        # Warm up both models' connections and service times.
        for name in ("small", "large"):
            client(harness).chat.completions.create(model=name, messages=USER)
        assert asyncio.run(models_chosen(3)) == ["small"] * 3
        harness.fake.behaviour("small-upstream").ttft_s = 0.3
        chosen = asyncio.run(models_chosen(8))
        switched = chosen.index("large")
        assert switched <= 3, chosen
        assert chosen[switched:] == ["large"] * (len(chosen) - switched), chosen


def test_the_state_is_saved_periodically_and_at_shutdown(tmp_path: Path) -> None:
    state = tmp_path / "state"
    settings = ServeConfig(snapshot_every_s=0.2)
    with running_gateway(settings=settings, state_dir=state) as harness:
        assert wait_until(lambda: (state / "CURRENT").is_file(), 5)
        first = (state / "CURRENT").read_text()
        raw = client(harness).chat.completions.with_raw_response.create(
            model="small", messages=USER
        )
        httpx.post(
            harness.url + "/v1/feedback",
            json={"decision_id": raw.headers["x-mixllm-decision-id"], "quality": 1.0},
        )
        assert wait_until(lambda: (state / "CURRENT").read_text() != first, 5)
    # The last save, at shutdown, holds the feedback.
    assert Router.load(state, embedder=HashEmbedder()).policy.inspect("small")["observations"] == 1
