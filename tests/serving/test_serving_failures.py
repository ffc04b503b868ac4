"""What the gateway does when upstreams fail: 500s, 429s, 401s and 403s (a refused key), hangs
and refused connections are answered by the next model, a model that keeps failing is cooled
down and later tried again, any other 4xx goes back to the caller as it came, a stream its
upstream drops ends in an error event, and a client that leaves a stream frees its model's
slot."""

from __future__ import annotations

import socket
import threading
import time
from typing import cast

import httpx
import numpy as np
import openai
import pytest

from gateway_harness import Harness, HashEmbedder, running_gateway, wait_until
from mixllm.config import EmbedderConfig, ServeConfig
from mixllm.data import RoutingDataset

USER = [{"role": "user", "content": "Summarise the plot of Hamlet."}]
# Ties go to the first model, so "small" is chosen until it fails.
FAILS_FAST = ServeConfig(cooldown_failures=2, cooldown_s=1.0, read_timeout_s=0.5)


def client(harness: Harness) -> openai.OpenAI:
    return openai.OpenAI(base_url=harness.url + "/v1", api_key="unused", max_retries=0)


def metric(harness: Harness, line_start: str) -> float:
    for line in httpx.get(harness.url + "/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize(
    ("setting", "value", "kind"),
    [
        ("status", 500, "status_5xx"),
        ("status", 429, "status_429"),
        ("status", 401, "auth"),
        ("status", 403, "auth"),
        ("hang", True, "timeout"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_a_failing_model_is_replaced_by_the_next_best(
    setting: str, value: object, kind: str, stream: bool
) -> None:
    with running_gateway(settings=FAILS_FAST) as harness:
        setattr(harness.fake.behaviour("small-upstream"), setting, value)
        completion = client(harness).chat.completions.create(
            model="mixllm", messages=USER, stream=stream
        )
        if stream:
            chunks = list(completion)  # type: ignore[arg-type]
            assert {c.model for c in chunks} == {"large"}
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            assert completion.model == "large"  # type: ignore[union-attr]
        assert harness.fake.requests("small-upstream") == 1
        assert metric(harness, 'mixllm_fallbacks_total{model="small"}') == 1
        assert metric(harness, f'mixllm_upstream_errors_total{{kind="{kind}",model="small"}}') == 1
        # The failed attempt left the queue and took no feedback; the answer's did.
        assert harness.router.policy.in_flight("small") == 0
        assert harness.router.pending() == 1


# The router keeps no routing context: whatever is not embedded again is reused from the decision.
UNCACHED = EmbedderConfig(cache_size=0)


def embedder(harness: Harness) -> HashEmbedder:
    return cast(HashEmbedder, harness.router.embedder)


def observations(harness: Harness) -> dict[str, int]:
    return {m: int(harness.router.policy.inspect(m)["observations"]) for m in harness.router.models}


@pytest.mark.parametrize("stream", [False, True])
def test_a_fallback_embeds_the_prompt_once_and_its_decision_learns(stream: bool) -> None:
    with running_gateway(settings=FAILS_FAST, embedder=UNCACHED) as harness:
        harness.fake.behaviour("small-upstream").status = 500
        raw = client(harness).chat.completions.with_raw_response.create(
            model="mixllm", messages=USER, stream=stream
        )
        if stream:
            assert {c.model for c in raw.parse()} == {"large"}  # type: ignore[union-attr]
        else:
            assert raw.parse().model == "large"  # type: ignore[union-attr]
        assert harness.fake.requests("small-upstream") == 1
        assert metric(harness, 'mixllm_fallbacks_total{model="small"}') == 1
        # One embedding, for the first decision; the fallback's came from it.
        assert embedder(harness).batches == [1]
        assert harness.router.policy.in_flight("small") == 0
        assert harness.router.pending() == 1
        before = observations(harness)
        response = httpx.post(
            harness.url + "/v1/feedback",
            json={"decision_id": raw.headers["x-mixllm-decision-id"], "quality": 0.9},
        )
        assert response.status_code == 200 and response.json()["learned"] is True
        assert observations(harness) == {"small": before["small"], "large": before["large"] + 1}


def refit_data(n: int = 8) -> RoutingDataset:
    rng = np.random.default_rng(5)
    return RoutingDataset(
        prompts=[f"training query {i}" for i in range(n)],
        models=["small", "large"],
        quality=rng.uniform(0, 1, (n, 2)),
        cost_usd=np.full((n, 2), 1e-4),
        prompt_tokens=np.full(n, 10.0),
        output_tokens=np.full((n, 2), 5.0),
        latency_s=None,
        labels=["a", "b"] * (n // 2),
        split=None,
        ids=[str(i) for i in range(n)],
    )


def test_a_fallback_after_a_fit_routes_the_text_again() -> None:
    # A fit while the first model is tried replaces the projection its decision's context came
    # from: the fallback embeds the prompt again instead of reusing that context.
    settings = ServeConfig(read_timeout_s=1.0)
    with running_gateway(settings=settings, embedder=UNCACHED) as harness:
        harness.fake.behaviour("small-upstream").hang = True
        answers: list[str] = []
        asking = threading.Thread(
            target=lambda: answers.append(
                client(harness).chat.completions.create(model="mixllm", messages=USER).model
            )
        )
        asking.start()
        assert wait_until(lambda: harness.router.policy.in_flight("small") == 1)
        harness.router.fit(refit_data())
        asking.join(timeout=10)
        assert answers == ["large"]
        prompts = [t for call in embedder(harness).calls for t in call if "query" not in t]
        assert len(prompts) == 2 and len(set(prompts)) == 1
        assert harness.router.policy.in_flight("small") == 0
        assert harness.router.policy.in_flight("large") == 0
        assert harness.router.pending() == 1


def test_cooldown_engages_and_recovers() -> None:
    with running_gateway(settings=FAILS_FAST) as harness:
        small = harness.fake.behaviour("small-upstream")
        small.status = 500
        for _ in range(6):
            assert client(harness).chat.completions.create(model="mixllm", messages=USER).model == (
                "large"
            )
        # Two failures cooled it down: the later requests went straight to "large".
        assert harness.fake.requests("small-upstream") == 2
        assert metric(harness, 'mixllm_cooldowns_total{model="small"}') == 1
        assert httpx.get(harness.url + "/healthz").json()["available"] == ["large"]
        small.status = None
        time.sleep(FAILS_FAST.cooldown_s + 0.1)
        # Probed again after the cooldown, and chosen again once it answers.
        models = [
            client(harness).chat.completions.create(model="mixllm", messages=USER).model
            for _ in range(3)
        ]
        assert harness.fake.requests("small-upstream") >= 3
        assert "small" in models
        assert httpx.get(harness.url + "/healthz").json()["available"] == ["small", "large"]


def test_when_every_model_fails_the_client_gets_a_502_error_body() -> None:
    with running_gateway(settings=FAILS_FAST) as harness:
        for name in ("small-upstream", "large-upstream"):
            harness.fake.behaviour(name).status = 503
        response = httpx.post(
            harness.url + "/v1/chat/completions", json={"model": "mixllm", "messages": USER}
        )
        assert response.status_code == 502
        assert "no model could answer" in response.json()["error"]["message"]
        assert harness.router.pending() == 0
        assert all(harness.router.policy.in_flight(m) == 0 for m in harness.router.models)


def test_attempts_are_bounded() -> None:
    settings = ServeConfig(max_attempts=1)
    with running_gateway(settings=settings) as harness:
        harness.fake.behaviour("small-upstream").status = 500
        with pytest.raises(openai.APIStatusError) as caught:
            client(harness).chat.completions.create(model="mixllm", messages=USER)
        assert caught.value.status_code == 502
        assert harness.fake.requests("large-upstream") == 0


@pytest.mark.parametrize("status", [400, 404, 413, 422])
@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_4xx_goes_back_to_the_client_without_fallback(
    status: int, stream: bool
) -> None:
    with running_gateway(settings=FAILS_FAST) as harness:
        refusing = harness.fake.behaviour("small-upstream")
        refusing.status, refusing.error_message = status, "messages[0].content is too long"
        response = httpx.post(
            harness.url + "/v1/chat/completions",
            json={"model": "mixllm", "messages": USER, "stream": stream},
        )
        # As the upstream sent it: the caller's request is at fault.
        assert response.status_code == status
        assert response.json() == {"error": {"message": "messages[0].content is too long"}}
        assert harness.fake.requests("large-upstream") == 0
        assert harness.router.policy.in_flight("small") == 0
        assert harness.router.pending() == 0
        assert metric(harness, 'mixllm_fallbacks_total{model="small"}') == 0


# What OpenAI answers a wrong key with: part of the key, echoed.
KEY_ECHO = "Incorrect API key provided: sk-proj-...abcd"


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("stream", [False, True])
def test_a_refused_key_is_the_gateways_failure_and_its_body_is_never_relayed(
    status: int, stream: bool
) -> None:
    with running_gateway(settings=FAILS_FAST) as harness:
        for name in ("small-upstream", "large-upstream"):
            refusing = harness.fake.behaviour(name)
            refusing.status, refusing.error_message = status, KEY_ECHO
        response = httpx.post(
            harness.url + "/v1/chat/completions",
            json={"model": "mixllm", "messages": USER, "stream": stream},
        )
        assert response.status_code == 502
        message = response.json()["error"]["message"]
        assert f"small: auth: HTTP {status}" in message
        assert f"large: auth: HTTP {status}" in message
        assert "sk-" not in response.text and "Incorrect" not in response.text
        for model in ("small", "large"):
            assert (
                metric(harness, f'mixllm_upstream_errors_total{{kind="auth",model="{model}"}}') == 1
            )
        # A second refusal in a row cools the model down, as any other failure does.
        httpx.post(harness.url + "/v1/chat/completions", json={"model": "mixllm", "messages": USER})
        assert metric(harness, 'mixllm_cooldowns_total{model="small"}') == 1
        assert httpx.get(harness.url + "/healthz").json()["available"] == []
        assert harness.router.pending() == 0


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound for a moment, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize("stream", [False, True])
def test_a_model_that_cannot_be_reached_is_replaced_by_the_next_best(stream: bool) -> None:
    unreachable = {"small": {"base_url": f"http://127.0.0.1:{closed_port()}/v1"}}
    with running_gateway(settings=FAILS_FAST, model_changes=unreachable) as harness:
        completion = client(harness).chat.completions.create(
            model="mixllm", messages=USER, stream=stream
        )
        if stream:
            assert {c.model for c in completion} == {"large"}  # type: ignore[union-attr]
        else:
            assert completion.model == "large"  # type: ignore[union-attr]
        assert metric(harness, 'mixllm_upstream_errors_total{kind="connect",model="small"}') == 1
        assert metric(harness, 'mixllm_fallbacks_total{model="small"}') == 1
        assert harness.router.policy.in_flight("small") == 0
        assert harness.router.pending() == 1


def test_a_stream_dropped_by_its_upstream_ends_in_an_error_event() -> None:
    with running_gateway(settings=FAILS_FAST) as harness:
        harness.fake.behaviour("small-upstream").fail_mid_stream = True
        events = stream_events(harness, "mixllm")
        assert '"error"' in events[-1]
        assert harness.router.pending() == 0
        assert harness.router.policy.in_flight("small") == 0
        assert metric(harness, 'mixllm_requests_total{model="small",outcome="error"}') == 1


def test_a_client_leaving_a_stream_frees_the_slot_and_stops_the_upstream() -> None:
    with running_gateway() as harness:
        slow = harness.fake.behaviour("small-upstream")
        slow.tokens_per_s, slow.output_tokens = 5.0, 100
        with httpx.stream(
            "POST",
            harness.url + "/v1/chat/completions",
            json={"model": "small", "messages": USER, "stream": True},
            timeout=10,
        ) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))
            assert harness.router.policy.in_flight("small") == 1
        # Leaving the block closed the connection mid-stream.
        assert wait_until(lambda: harness.router.policy.in_flight("small") == 0, 5)
        assert wait_until(lambda: harness.fake.record("small-upstream").streams_left == 1, 5)
        assert harness.fake.record("small-upstream").streams_finished == 0
        assert harness.router.pending() == 0
        assert metric(harness, 'mixllm_client_disconnects_total{model="small"}') == 1
        assert harness.gateway.active == 0


# Decisions that expire while their upstream is still answering: the answer is still the
# client's, it just teaches nothing.
SHORT_TTL_S = 0.2
SLOWER_THAN_TTL_S = 0.6


def test_an_answer_outliving_its_decision_still_reaches_the_client() -> None:
    with running_gateway(feedback_ttl_s=SHORT_TTL_S) as harness:
        harness.fake.behaviour("small-upstream").ttft_s = SLOWER_THAN_TTL_S
        completion = client(harness).chat.completions.create(model="small", messages=USER)
        assert completion.choices[0].message.content
        assert metric(harness, 'mixllm_requests_total{model="small",outcome="ok"}') == 1
        assert harness.router.pending() == 0
        assert harness.router.policy.in_flight("small") == 0


def test_a_stream_outliving_its_decision_still_ends_with_done() -> None:
    with running_gateway(feedback_ttl_s=SHORT_TTL_S) as harness:
        harness.fake.behaviour("small-upstream").ttft_s = SLOWER_THAN_TTL_S
        events = stream_events(harness, "small")
        assert events[-1] == "data: [DONE]"
        assert all('"error"' not in event for event in events)
        assert metric(harness, 'mixllm_requests_total{model="small",outcome="ok"}') == 1
        assert harness.router.policy.in_flight("small") == 0
        assert wait_until(lambda: harness.gateway.active == 0, 5)


@pytest.mark.parametrize("stream", [False, True])
def test_a_failure_outliving_its_decision_still_falls_back(stream: bool) -> None:
    settings = ServeConfig(read_timeout_s=SLOWER_THAN_TTL_S)
    with running_gateway(settings=settings, feedback_ttl_s=SHORT_TTL_S) as harness:
        harness.fake.behaviour("small-upstream").hang = True
        completion = client(harness).chat.completions.create(
            model="mixllm", messages=USER, stream=stream
        )
        if stream:
            assert {c.model for c in completion} == {"large"}  # type: ignore[union-attr]
        else:
            assert completion.model == "large"  # type: ignore[union-attr]
        assert harness.router.policy.in_flight("small") == 0
        assert metric(harness, 'mixllm_fallbacks_total{model="small"}') == 1


def test_a_stream_failing_after_its_decision_expired_ends_in_an_error_event() -> None:
    with running_gateway(feedback_ttl_s=SHORT_TTL_S) as harness:
        dropping = harness.fake.behaviour("small-upstream")
        dropping.fail_mid_stream, dropping.tokens_per_s = True, 1 / SLOWER_THAN_TTL_S
        events = stream_events(harness, "small")
        assert '"error"' in events[-1]
        assert harness.router.policy.in_flight("small") == 0
        assert metric(harness, 'mixllm_requests_total{model="small",outcome="error"}') == 1


def stream_events(harness: Harness, model: str) -> list[str]:
    """The ``data:`` lines of one streamed completion of ``USER`` through the gateway."""
    with httpx.stream(
        "POST",
        harness.url + "/v1/chat/completions",
        json={"model": model, "messages": USER, "stream": True},
        timeout=10,
    ) as response:
        return [line for line in response.iter_lines() if line.startswith("data:")]


def test_fallbacks_stay_within_the_requests_limits() -> None:
    # "large" costs a thousand times more: "small" is chosen, "large" is its fallback.
    dear = {"large": {"price_in": 1000.0, "price_out": 1000.0}}
    with running_gateway(settings=FAILS_FAST, model_changes=dear) as harness:
        harness.fake.behaviour("small-upstream").status = 500
        url = harness.url + "/v1/chat/completions"
        within = {"model": "mixllm", "messages": USER, "mixllm": {"max_cost_usd": 1e-3}}
        refused = httpx.post(url, json=within, timeout=30)
        # The only model within the ceiling failed; the dear one is not tried.
        assert refused.status_code == 502
        assert harness.fake.requests("small-upstream") == 1
        assert harness.fake.requests("large-upstream") == 0
        answered = httpx.post(url, json={"model": "mixllm", "messages": USER}, timeout=30)
        assert answered.status_code == 200 and answered.json()["model"] == "large"
        # Nothing within the ceiling: one answer, a 400 naming the limit, nothing counted.
        pending = harness.router.pending()
        none = {"model": "mixllm", "messages": USER, "mixllm": {"max_cost_usd": 1e-12}}
        response = httpx.post(url, json=none, timeout=30)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "no_model_within_limits" and "max_cost_usd" in error["message"]
        assert harness.router.pending() == pending
        assert harness.fake.requests("small-upstream") == 2
        assert all(harness.router.policy.in_flight(m) == 0 for m in harness.router.models)


# Long enough that a gateway waiting for it, instead of noticing its client leave, is caught
# by the state: the upstream would have produced its answer (or first token) by then.
SLOW_FIRST_TOKEN_S = 3.0
CLIENT_GIVES_UP_S = 0.3


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_leaving_before_the_first_token_frees_the_slot_and_closes_the_upstream_call(
    stream: bool,
) -> None:
    with running_gateway() as harness:
        harness.fake.behaviour("small-upstream").ttft_s = SLOW_FIRST_TOKEN_S
        record = harness.fake.record("small-upstream")
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                harness.url + "/v1/chat/completions",
                json={"model": "small", "messages": USER, "stream": stream},
                timeout=httpx.Timeout(10, read=CLIENT_GIVES_UP_S),
            )
        # The upstream saw its call closed before it had produced anything.
        left = (lambda: record.streams_left == 1) if stream else (lambda: record.answers_left == 1)
        assert wait_until(left, 10)
        assert record.chunks_sent == 0
        assert record.streams_finished == 0
        assert wait_until(lambda: harness.gateway.active == 0, 5)
        assert harness.router.policy.in_flight("small") == 0
        assert harness.router.pending() == 0
        assert metric(harness, 'mixllm_client_disconnects_total{model="small"}') == 1
        assert metric(harness, 'mixllm_requests_in_flight{model="small"}') == 0
        assert metric(harness, 'mixllm_requests_total{model="small",outcome="ok"}') == 0


def test_a_stream_whose_upstream_stops_sending_ends_in_an_error_event() -> None:
    with running_gateway(settings=FAILS_FAST) as harness:
        harness.fake.behaviour("small-upstream").hang_after_tokens = 1
        events = stream_events(harness, "small")
        assert len(events) == 2 and '"tok "' in events[0]
        assert '"error"' in events[-1] and "timeout" in events[-1]
        assert harness.router.policy.in_flight("small") == 0
        assert harness.router.pending() == 0
        assert metric(harness, 'mixllm_upstream_errors_total{kind="timeout",model="small"}') == 1
        assert metric(harness, 'mixllm_requests_total{model="small",outcome="error"}') == 1
        assert metric(harness, 'mixllm_requests_in_flight{model="small"}') == 0
        # The gateway closed the hung call.
        assert wait_until(lambda: harness.fake.record("small-upstream").streams_left == 1, 5)
        assert wait_until(lambda: harness.gateway.active == 0, 5)
