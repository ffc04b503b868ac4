"""The gateway over real HTTP on loopback, called with the official openai client: routing,
streaming, pass-through, the decision id, malformed requests, models, health and metrics."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import httpx
import openai
import pytest

from gateway_harness import Harness, running_gateway, wait_until
from mixllm.config import ServeConfig

USER = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    with running_gateway(settings=ServeConfig(max_body_bytes=64 * 1024)) as running:
        yield running


def client(harness: Harness) -> openai.OpenAI:
    return openai.OpenAI(base_url=harness.url + "/v1", api_key="unused", max_retries=0)


def test_a_routed_answer_names_its_model_and_decision(harness: Harness) -> None:
    raw = client(harness).chat.completions.with_raw_response.create(model="mixllm", messages=USER)
    completion = raw.parse()
    decision_id = raw.headers["x-mixllm-decision-id"]
    assert completion.model in harness.router.models
    assert completion.model_extra == {
        "mixllm": {"decision_id": decision_id, "model": completion.model}
    }
    assert completion.choices[0].message.content == "tok " * 5
    # The upstream was asked for its own name of the model.
    assert harness.fake.requests(f"{completion.model}-upstream") >= 1
    assert harness.fake.requests(completion.model) == 0


def test_every_answer_is_completed_in_the_router(harness: Harness) -> None:
    before = {row["name"]: row for row in harness.router.describe_models()}
    completion = client(harness).chat.completions.create(model="mixllm", messages=USER)
    after = {row["name"]: row for row in harness.router.describe_models()}
    model = completion.model
    assert after[model]["in_flight"] == 0
    # The measured latency reached the model's service time.
    assert after[model]["mean_service_s"] != before[model]["mean_service_s"]


def test_a_stream_is_relayed_with_its_decision_id() -> None:
    async def run(url: str) -> tuple[str, list[str], str]:
        async_client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        raw = await async_client.chat.completions.with_raw_response.create(
            model="mixllm", messages=USER, stream=True
        )
        pieces, models = [], set()
        async for chunk in raw.parse():
            models.add(chunk.model)
            pieces.extend(c.delta.content or "" for c in chunk.choices)
        (model,) = models
        return raw.headers["x-mixllm-decision-id"], pieces, model

    with running_gateway() as harness:
        decision_id, pieces, model = asyncio.run(run(harness.url))
        assert "".join(pieces) == "tok " * 5
        assert decision_id
        row = {r["name"]: r for r in harness.router.describe_models()}[model]
        assert row["in_flight"] == 0 and row["mean_service_s"] > 0
        assert harness.gateway.speed.of(model)["observed_ttft_s"] is not None


def test_unknown_fields_pass_through_and_the_gateway_fields_do_not(harness: Harness) -> None:
    completion = client(harness).chat.completions.create(
        model="mixllm",
        messages=USER,
        temperature=0.2,
        extra_body={"top_k": 7, "mixllm": {"willingness_to_pay": 0.5}},
    )
    sent = harness.fake.record(f"{completion.model}-upstream").bodies[-1]
    assert sent["top_k"] == 7 and sent["temperature"] == 0.2
    assert "mixllm" not in sent


def test_a_pool_model_goes_straight_through_and_counts_in_its_queue() -> None:
    with running_gateway() as harness:
        harness.fake.behaviour("large-upstream").ttft_s = 1.0
        done = threading.Event()

        def call() -> None:
            client(harness).chat.completions.create(model="large", messages=USER)
            done.set()

        thread = threading.Thread(target=call)
        thread.start()
        assert wait_until(lambda: harness.router.policy.in_flight("large") == 1, 5)
        thread.join(timeout=10)
        assert done.is_set() and harness.router.policy.in_flight("large") == 0
        assert harness.fake.requests("small-upstream") == 0


def test_allowed_models_from_a_header_limit_the_choice(harness: Harness) -> None:
    for _ in range(3):
        completion = client(harness).chat.completions.create(
            model="mixllm", messages=USER, extra_headers={"x-mixllm-models": "large"}
        )
        assert completion.model == "large"


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (json.dumps({"model": "mixllm"}).encode(), 400, "messages"),
        (json.dumps({"model": "mixllm", "messages": [1]}).encode(), 400, "messages[0]"),
        (json.dumps({"messages": USER}).encode(), 400, "model"),
        (json.dumps({"model": "gpt-9", "messages": USER}).encode(), 404, "gpt-9"),
        (
            json.dumps({"model": "mixllm", "messages": USER, "stream": "yes"}).encode(),
            400,
            "stream",
        ),
        (json.dumps({"model": "mixllm:cheapest", "messages": USER}).encode(), 400, "cheapest"),
        (json.dumps({"model": "mixllm:-1", "messages": USER}).encode(), 400, "> 0"),
        # A bad suffix is refused even when the body (or a header) sets the operating point.
        (
            json.dumps(
                {"model": "mixllm:cheapest", "messages": USER, "mixllm": {"willingness_to_pay": 1}}
            ).encode(),
            400,
            "cheapest",
        ),
        *(
            (
                json.dumps({"model": "mixllm", "messages": USER, "mixllm": value}).encode(),
                400,
                f"mixllm must be an object (or null), got {kind}",
            )
            for value, kind in [
                ([], "an array"),
                (0, "a number"),
                (False, "a boolean"),
                ("", "a string"),
                ("x", "a string"),
                ([{"models": ["small"]}], "an array"),
            ]
        ),
        (
            json.dumps({"model": "mixllm", "messages": USER, "mixllm": {"models": ["x"]}}).encode(),
            400,
            "not in the pool",
        ),
        (
            json.dumps(
                {"model": "mixllm", "messages": USER, "mixllm": {"max_cost_usd": -1}}
            ).encode(),
            400,
            "max_cost_usd",
        ),
        (
            json.dumps({"model": "mixllm", "messages": USER, "pad": "x" * 70_000}).encode(),
            413,
            "bytes",
        ),
    ],
)
def test_a_malformed_request_gets_a_4xx_error_body_and_changes_nothing(
    harness: Harness, body: bytes, status: int, says: str
) -> None:
    pending = harness.router.pending()
    sent = {m: harness.fake.requests(f"{m}-upstream") for m in harness.router.models}
    response = httpx.post(
        harness.url + "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert says in error["message"] and error["type"] == "invalid_request_error"
    assert harness.router.pending() == pending
    assert sent == {m: harness.fake.requests(f"{m}-upstream") for m in harness.router.models}


def test_a_null_mixllm_field_is_taken_as_absent(harness: Harness) -> None:
    completion = client(harness).chat.completions.create(
        model="mixllm", messages=USER, extra_body={"mixllm": None}
    )
    assert completion.model in harness.router.models
    assert "mixllm" not in harness.fake.record(f"{completion.model}-upstream").bodies[-1]


def test_a_bad_suffix_is_refused_even_beside_a_header(harness: Harness) -> None:
    with pytest.raises(openai.BadRequestError, match="cheapest"):
        client(harness).chat.completions.create(
            model="mixllm:cheapest",
            messages=USER,
            extra_headers={"x-mixllm-willingness-to-pay": "1"},
        )


def test_unknown_paths_and_methods_answer_in_the_error_shape(harness: Harness) -> None:
    for response, status in [
        (httpx.get(harness.url + "/v1/chat/completions"), 405),
        (httpx.post(harness.url + "/v1/completions", json={}), 404),
    ]:
        assert response.status_code == status
        assert response.json()["error"]["message"]


def test_a_bad_header_value_is_a_400(harness: Harness) -> None:
    with pytest.raises(openai.BadRequestError, match="x-mixllm-max-latency-s"):
        client(harness).chat.completions.create(
            model="mixllm", messages=USER, extra_headers={"x-mixllm-max-latency-s": "soon"}
        )


def test_models_health_and_metrics(harness: Harness) -> None:
    client(harness).chat.completions.create(model="small", messages=USER)
    before = {m.id: m.model_extra for m in client(harness).models.list().data}
    # Speeds are observed on streams only: a whole answer's time mixes both phases.
    assert before["small"]["mixllm"]["observed_tokens_per_s"] is None  # type: ignore[index]
    list(client(harness).chat.completions.create(model="small", messages=USER, stream=True))
    models = client(harness).models.list()
    ids = [m.id for m in models.data]
    assert ids == ["mixllm", *harness.router.models]
    described = {m.id: m.model_extra for m in models.data}
    assert described["small"] is not None
    assert described["small"]["mixllm"]["observed_tokens_per_s"] is not None
    health = httpx.get(harness.url + "/healthz").json()
    assert health["status"] == "ok" and health["available"] == harness.router.models
    metrics = httpx.get(harness.url + "/metrics").text
    assert 'mixllm_requests_total{model="small",outcome="ok"}' in metrics
    assert 'mixllm_decisions_total{model="small"}' in metrics
    assert 'mixllm_request_latency_seconds_bucket{le="0.01",model="small"}' in metrics
    assert sample(metrics, 'mixllm_requests_in_flight{model="small"}') == 0
    assert 'mixllm_rejected_requests_total{status="400"}' in metrics


def sample(metrics: str, series: str) -> float | None:
    """The value of one sample line of Prometheus text, None when the series is absent."""
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def test_the_in_flight_gauge_counts_a_request_while_it_runs() -> None:
    with running_gateway() as harness:
        harness.fake.behaviour("large-upstream").ttft_s = 1.0
        thread = threading.Thread(
            target=lambda: client(harness).chat.completions.create(model="large", messages=USER)
        )
        thread.start()
        gauge = 'mixllm_requests_in_flight{model="large"}'
        assert wait_until(lambda: sample(httpx.get(harness.url + "/metrics").text, gauge) == 1)
        thread.join(timeout=10)
        assert sample(httpx.get(harness.url + "/metrics").text, gauge) == 0


def test_a_stream_is_counted_in_the_time_to_first_token_histogram() -> None:
    with running_gateway() as harness:
        count = 'mixllm_time_to_first_token_seconds_count{model="small"}'
        assert sample(httpx.get(harness.url + "/metrics").text, count) is None
        client(harness).chat.completions.create(model="small", messages=USER)
        # A whole answer has no first token of its own.
        assert sample(httpx.get(harness.url + "/metrics").text, count) is None
        for expected in (1, 2):
            list(client(harness).chat.completions.create(model="small", messages=USER, stream=True))
            assert sample(httpx.get(harness.url + "/metrics").text, count) == expected


def test_the_api_key_is_sent_upstream_and_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXLLM_TEST_KEY", "sk-secret-123")
    changes = {"small": {"api_key_env": "MIXLLM_TEST_KEY"}}
    with running_gateway(("small",), model_changes=changes) as harness:
        raw = client(harness).chat.completions.with_raw_response.create(
            model="mixllm", messages=USER
        )
        assert harness.fake.record("small-upstream").authorizations == ["Bearer sk-secret-123"]
        texts = [
            raw.http_response.text,
            str(raw.headers),
            httpx.get(harness.url + "/v1/models").text,
            httpx.get(harness.url + "/metrics").text,
        ]
        assert not any("sk-secret" in text for text in texts)


def test_concurrent_streams_are_all_answered_and_embedded_in_batches() -> None:
    async def run(url: str) -> list[str]:
        async_client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)

        async def one(i: int) -> str:
            stream = await async_client.chat.completions.create(
                model="mixllm",
                messages=[{"role": "user", "content": f"question number {i}"}],
                stream=True,
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        return await asyncio.gather(*(one(i) for i in range(32)))

    with running_gateway() as harness:
        harness.fake.behaviour("small-upstream").ttft_s = 0.05
        harness.fake.behaviour("large-upstream").ttft_s = 0.05
        answers = asyncio.run(run(harness.url))
        assert answers == ["tok " * 5] * 32
        assert all(harness.router.policy.in_flight(m) == 0 for m in harness.router.models)
        assert harness.router.pending() == 32
        batches = harness.router.embedder.batches  # type: ignore[attr-defined]
        assert sum(batches) == 32 and len(batches) < 32, batches
