"""The Router end to end on real RouterBench rows: fit, route, feedback, pool changes, persistence
across processes, and many threads at once."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mixllm
from mixllm.config import ModelConfig, RouterConfig
from mixllm.data import RoutingDataset
from mixllm.encoders.model_files import file_sha256
from mixllm.errors import ConfigError, DecisionNotFoundError, NotFittedError
from mixllm.routing.router import Router


def per_label(dataset: RoutingDataset, count: int) -> RoutingDataset:
    """The first ``count`` rows of each benchmark."""
    assert dataset.labels is not None
    taken: dict[str, int] = {}
    rows = []
    for i, label in enumerate(dataset.labels):
        if taken.get(label, 0) < count:
            taken[label] = taken.get(label, 0) + 1
            rows.append(i)
    return dataset.select(rows)


@pytest.fixture(scope="module")
def config() -> RouterConfig:
    from mixllm.routing.catalog import ROUTERBENCH_MODELS

    models = tuple(spec.model_config() for spec in ROUTERBENCH_MODELS)
    return RouterConfig(models=models, willingness_to_pay=0.05)


@pytest.fixture(scope="module")
def embedder() -> mixllm.Embedder:
    return mixllm.Embedder(quantized=True)


@pytest.fixture(scope="module")
def fitted(
    routerbench: RoutingDataset, config: RouterConfig, embedder: mixllm.Embedder
) -> tuple[Router, RoutingDataset]:
    router = Router(config, embedder=embedder)
    report = router.fit(per_label(routerbench.train(), 40))
    assert report.rows == 120 and report.tag_source == "dataset labels" and report.domains == 3
    assert set(report.rows_per_model) == set(routerbench.models)
    return router, per_label(routerbench.test(), 15)


def fresh(
    fitted: tuple[Router, RoutingDataset],
    *,
    clock: Callable[[], float] | None = None,
    **changes: object,
) -> Router:
    """A Router with its own copy of the fitted state (so tests do not share feedback), on
    ``clock`` when given."""
    router, _ = fitted
    assert router.projection is not None
    config = replace(router.config, **changes)  # type: ignore[arg-type]
    policy = mixllm.Policy.from_bytes(router.policy.to_bytes())
    return Router(
        config, embedder=router.embedder, projection=router.projection, policy=policy, clock=clock
    )


def test_route_batch_embeds_each_text_once_even_without_a_cache(
    fitted: tuple[Router, RoutingDataset],
) -> None:
    router, data = fitted
    calls: list[int] = []

    class Counting:
        def embed(self, texts: list[str]) -> object:
            calls.append(len(texts))
            return router.embedder.embed(texts)

    no_cache = replace(router.config, embedder=replace(router.config.embedder, cache_size=0))
    uncached = Router(
        no_cache, embedder=Counting(), projection=router.projection,  # type: ignore[arg-type]
        policy=mixllm.Policy.from_bytes(router.policy.to_bytes()),
    )  # fmt: skip
    texts = [data.prompts[0], data.prompts[1], data.prompts[0], data.prompts[2]]
    decisions = uncached.route_batch(texts)
    assert calls == [3]
    assert [d.model for d in decisions] == [d.model for d in fresh(fitted).route_batch(texts)]


def test_routing_before_fitting_says_what_to_do(config: RouterConfig) -> None:
    with pytest.raises(NotFittedError, match="fit"):
        Router(config).route("hello")


def test_a_decision_explains_every_model(fitted: tuple[Router, RoutingDataset]) -> None:
    router = fresh(fitted)
    decision = router.route(fitted[1].prompts[0])
    assert decision.model in router.models
    explained = decision.explain()
    assert list(explained) == router.models
    best = max((row["score"], name) for name, row in explained.items() if not row["excluded"])
    assert best[1] == decision.model
    assert decision.prompt_tokens > 0
    assert decision.willingness_to_pay == 0.05


def test_willingness_to_pay_moves_choices_towards_quality(
    fitted: tuple[Router, RoutingDataset],
) -> None:
    router = fresh(fitted)
    texts = fitted[1].prompts
    cheap = [
        d.detail.cost[d.detail.index] for d in router.route_batch(texts, willingness_to_pay=1e-4)
    ]
    rich = [
        d.detail.cost[d.detail.index] for d in router.route_batch(texts, willingness_to_pay=1e3)
    ]
    assert np.mean(rich) > 3 * np.mean(cheap)


@pytest.mark.slow
def test_reload_in_a_new_process_routes_test_queries_identically(
    fitted: tuple[Router, RoutingDataset], routerbench: RoutingDataset, tmp_path: Path
) -> None:
    # Both processes embed the same batches with fresh caches: the int8 encoder quantises
    # activations per batch, so its vectors depend (slightly) on what shares the batch. Their
    # clocks stand still: the queues the batch builds up drain with time. Every fourth test
    # query (all three benchmarks, long and short prompts) keeps the two embeddings of the
    # batch, most of this test's time, to a quarter of the split's.
    fitted_router = fresh(fitted)
    router = Router(
        fitted_router.config,
        embedder=mixllm.Embedder(quantized=True, cache_size=0, intra_op_threads=2),
        projection=fitted_router.projection,
        policy=fitted_router.policy,
        clock=lambda: 0.0,
    )
    test = routerbench.test()
    texts = test.prompts[::4]
    assert len(texts) == 237 and set(test.labels[::4]) == set(test.labels)
    before = router.route_batch(texts)
    router.save(tmp_path / "state")
    script = """
import json, sys
import mixllm
from mixllm.routing.router import Router
embedder = mixllm.Embedder(quantized=True, cache_size=0, intra_op_threads=2)
router = Router.load(sys.argv[1], embedder=embedder, clock=lambda: 0.0)
texts = json.load(sys.stdin)
print(json.dumps([[d.model, d.detail.score.tolist()] for d in router.route_batch(texts)]))
"""
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "state")],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    after = json.loads(result.stdout)
    assert [d.model for d in before] == [model for model, _ in after]
    # The same embedding, projection and arms give the same scores to the last bit.
    assert [d.detail.score.tolist() for d in before] == [scores for _, scores in after]


def test_saving_twice_keeps_one_complete_state(
    fitted: tuple[Router, RoutingDataset], tmp_path: Path
) -> None:
    router = fresh(fitted)
    first = router.save(tmp_path)
    second = router.save(tmp_path)
    assert not first.exists() and second.exists()
    # The save lock stays: removing it while another save waits on it would let a third
    # save take a new one at once.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "CURRENT", second.name]
    assert Router.load(tmp_path, embedder=router.embedder).models == router.models


def test_fit_keeps_the_lengths_it_has_when_some_are_missing(
    routerbench: RoutingDataset, config: RouterConfig, embedder: mixllm.Embedder
) -> None:
    data = per_label(routerbench.train(), 10)
    assert data.output_tokens is not None
    tokens = data.output_tokens.copy()
    gpt4 = data.models.index("gpt-4-1106-preview")
    tokens[::3, gpt4] = np.nan  # 10 of the 30 lengths not recorded
    # Equal ridges, pinned (not cross-validated): the heads of a model with every length share.
    router = Router(replace(config, ridge=1.0, length_ridge=1.0), embedder=embedder)
    router.fit(replace(data, output_tokens=tokens))
    state = router.policy.inspect("gpt-4-1106-preview")
    # The context ends with a constant 1: A's last diagonal entry is ridge + Σw.
    assert state["a"][-1, -1] == pytest.approx(router.config.ridge + 30)
    assert state["length_a"][-1, -1] == pytest.approx(router.config.length_ridge + 20)
    seen = ~np.isnan(tokens[:, gpt4])
    described = {row["name"]: row for row in router.describe_models()}["gpt-4-1106-preview"]
    geometric_mean = float(np.expm1(np.mean(np.log1p(tokens[seen, gpt4]))))
    assert described["mean_output_tokens"] == pytest.approx(geometric_mean)
    # A model with every length shares the quality head's matrices.
    other = router.policy.inspect("claude-v2")
    np.testing.assert_array_equal(other["length_a"], other["a"])


def rewrite_config(folder: Path, raw: dict[str, Any]) -> None:
    """Writes ``raw`` as a saved state's config.json, with the manifest's checksum to match:
    a file as an older mixllm (or a hand edit) would have left it."""
    (folder / "config.json").write_text(json.dumps(raw), encoding="utf-8")
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    manifest["files"]["config.json"] = file_sha256(folder / "config.json")
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


@pytest.mark.parametrize(("knob", "value"), [("length_ridge", 5.0), ("tau_margin_sd", 1.5)])
def test_a_save_without_a_later_knob_keeps_its_policys(
    fitted: tuple[Router, RoutingDataset], tmp_path: Path, knob: str, value: float
) -> None:
    """A state saved before `length_ridge` or `tau_margin_sd` existed has no such field in
    config.json: the loaded config takes the value its policy file carries, not the
    default."""
    router, _ = fitted
    assert router.projection is not None
    config = replace(router.config, ridge=30.0, **{knob: value})
    default = getattr(router.config, knob)
    assert default != value
    policy = config.new_policy()
    old = Router(config, embedder=router.embedder, projection=router.projection, policy=policy)
    folder = old.save(tmp_path)
    raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    del raw["router"][knob]
    rewrite_config(folder, raw)
    loaded = Router.load(tmp_path, embedder=router.embedder)
    assert (loaded.config.ridge, getattr(loaded.config, knob)) == (30.0, value)
    assert getattr(loaded.policy, knob) == value
    # A save whose config.json names a value its policy file contradicts is refused.
    raw["router"][knob] = default
    rewrite_config(folder, raw)
    disagree = re.escape(f"{knob} is {default!r} but the policy's is {value!r}")
    with pytest.raises(mixllm.StateFileError, match=disagree):
        Router.load(tmp_path, embedder=router.embedder)
    # Nor can such a Router be built, so none can save a state that contradicts itself.
    for other, changed in (("beta", 0.0), (knob, default), ("refactor_every", 7)):
        with pytest.raises(ConfigError, match=f"configuration's {other}"):
            Router(
                replace(config, **{other: changed}),
                embedder=router.embedder,
                projection=router.projection,
                policy=policy,
            )


def test_the_mean_length_reads_the_length_heads_own_weights(
    fitted: tuple[Router, RoutingDataset],
) -> None:
    """Three lengths of one model, its length head with its own ridge: its mean length reads
    the length head's own Σw."""
    router, _ = fitted
    assert router.projection is not None
    config = replace(router.config, ridge=30.0, length_ridge=5.0)
    policy = config.new_policy()
    old = Router(config, embedder=router.embedder, projection=router.projection, policy=policy)
    x = np.append(np.zeros(config.dim), 1.0)
    for tokens in (10.0, 100.0, 1000.0):
        policy.update("gpt-4-1106-preview", x, quality=1.0, output_tokens=tokens)
    described = {row["name"]: row for row in old.describe_models()}["gpt-4-1106-preview"]
    assert described["mean_output_tokens"] == pytest.approx(
        math.expm1(np.mean(np.log1p([10, 100, 1000])))
    )


def test_a_damaged_save_is_refused(fitted: tuple[Router, RoutingDataset], tmp_path: Path) -> None:
    router = fresh(fitted)
    folder = router.save(tmp_path)
    data = bytearray((folder / "policy.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "policy.bin").write_bytes(bytes(data))
    with pytest.raises(mixllm.StateFileError, match="checksum"):
        Router.load(tmp_path)
    with pytest.raises(mixllm.StateFileError, match="no saved router"):
        Router.load(tmp_path / "elsewhere")


def test_feedback_teaches_the_chosen_model_only(fitted: tuple[Router, RoutingDataset]) -> None:
    router = fresh(fitted)
    decision = router.route(fitted[1].prompts[1])
    chosen = decision.model
    assert router.policy.in_flight(chosen) == 1
    before = {m: router.policy.inspect(m)["observations"] for m in router.models}
    assert router.feedback(decision.id, quality=0.0, output_tokens=120, latency_s=3.5) is True
    after = {m: router.policy.inspect(m)["observations"] for m in router.models}
    assert after[chosen] == before[chosen] + 1
    assert all(after[m] == before[m] for m in router.models if m != chosen)
    state = router.policy.inspect(chosen)
    assert state["in_flight"] == 0 and state["mean_service_s"] == 3.5


def test_a_request_in_flight_carries_its_predicted_service_time(
    fitted: tuple[Router, RoutingDataset], clock: ManualClock
) -> None:
    """The router counts each request in its model's queue, on its clock, with the service time
    its decision predicted, and takes it out again on feedback, complete and expiry: the
    model's finishing time moves by each request's error over its slots when a latency is
    reported, and not at all when none is (the request's work has drained with the clock)."""
    router = fresh(fitted, clock=clock, feedback_ttl_s=0.5)
    prompt = fitted[1].prompts[20]
    # One prompt three times: one model, no queue yet, so the same choice each time.
    decisions = [router.route(prompt) for _ in range(3)]
    model = decisions[0].model
    assert all(d.model == model for d in decisions)
    predicted = [d.detail.chosen_service_s for d in decisions]
    assert min(predicted) > 0.0
    slots = router.policy.profile(model)["concurrency"]
    t0 = clock.now

    def clears_at(name: str = model) -> float | None:
        return router.policy.inspect(name)["clears_at_s"]

    assert clears_at() == pytest.approx(t0 + sum(predicted) / slots, rel=1e-12)
    router.feedback(decisions[0].id, quality=1.0, latency_s=2.0)
    left = t0 + (predicted[1] + predicted[2] + 2.0) / slots
    assert clears_at() == pytest.approx(left, rel=1e-12)
    router.complete(decisions[1].id)  # no latency reported
    assert clears_at() == pytest.approx(left, rel=1e-12)
    assert router.policy.inspect(model)["in_flight"] == 1
    clock.now += 0.6
    last = router.route(fitted[1].prompts[23])  # counted, then decisions[2] expires
    in_flight = {m: router.policy.inspect(m)["in_flight"] for m in router.models}
    assert sum(in_flight.values()) == 1 and in_flight[last.model] == 1
    share = last.detail.chosen_service_s / router.policy.profile(last.model)["concurrency"]
    if last.model == model:
        expected = max(left, clock.now) + share
    else:
        assert clears_at() is None  # its queue emptied at the expiry
        expected = clock.now + share
    assert clears_at(last.model) == pytest.approx(expected, rel=1e-12)
    described = {row["name"]: row for row in router.describe_models()}
    assert described[last.model]["in_flight"] == 1
    assert described[last.model]["predicted_wait_s"] == 0.0  # a slot is free


def test_decisions_see_the_queue_as_it_is_on_the_routers_clock(
    fitted: tuple[Router, RoutingDataset], clock: ManualClock
) -> None:
    router = fresh(fitted, clock=clock)
    prompt = fitted[1].prompts[21]
    model = router.route(prompt).model
    slots = router.policy.profile(model)["concurrency"]
    # Every slot taken by requests predicted at 40 s each, sent now.
    for _ in range(slots):
        router.policy.begin(model, 40.0, now_s=clock.now)
    waits = []
    for step in (0.0, 10.0, 10.0):
        clock.now += step
        expected = router.policy.predicted_wait_s(model, now_s=clock.now)
        detail = router.route(prompt).detail
        k = detail.models.index(model)
        assert detail.latency[k] == pytest.approx(expected + detail.service[k], rel=1e-12)
        waits.append(expected)
        if detail.model == model:  # its own request joins the queue
            router.policy.cancel(model, detail.service[k], now_s=clock.now)
    # The slots' work drains with the clock: 40 s (plus the one request routed first), then
    # 10 s less, then 10 s less again.
    assert waits[0] > 40.0
    assert waits[1] == pytest.approx(waits[0] - 10.0) and waits[2] == pytest.approx(waits[0] - 20.0)
    assert {r["name"]: r for r in router.describe_models()}[model]["predicted_wait_s"] == (
        pytest.approx(waits[2])
    )


def test_a_clock_that_fails_changes_nothing(
    fitted: tuple[Router, RoutingDataset], clock: ManualClock
) -> None:
    router = fresh(fitted, clock=clock)
    decision = router.route(fitted[1].prompts[22])
    before = (router.pending(), router.policy.to_bytes(), router.policy.inspect(decision.model))
    clock.now = float("nan")
    for call in (
        lambda: router.route(fitted[1].prompts[22]),
        lambda: router.complete(decision.id, latency_s=1.0),
        lambda: router.feedback(decision.id, quality=1.0, latency_s=1.0),
        router.describe_models,
    ):
        with pytest.raises(mixllm.InvalidInputError, match="clock returned nan"):
            call()
    after = (router.pending(), router.policy.to_bytes(), router.policy.inspect(decision.model))
    assert after[:2] == before[:2]
    assert after[2]["in_flight"] == before[2]["in_flight"] == 1
    assert after[2]["clears_at_s"] == before[2]["clears_at_s"]


def test_a_refit_and_a_new_config_keep_the_clock(
    routerbench: RoutingDataset, config: RouterConfig, embedder: mixllm.Embedder
) -> None:
    clock = ManualClock()
    router = Router(config, embedder=embedder, clock=clock)
    data = per_label(routerbench.train(), 10)
    router.fit(data)
    decision = router.route(data.prompts[0])
    share = decision.detail.chosen_service_s / router.policy.profile(decision.model)["concurrency"]
    # Refitted 5 s later, the request still in flight counts in the new arms from then.
    clock.now += 5.0
    router.fit(data)
    state = router.policy.inspect(decision.model)
    assert state["in_flight"] == 1
    assert state["clears_at_s"] == pytest.approx(clock.now + share, rel=1e-12)
    # A Router with other decision settings shares the state and the clock.
    clock.now += 1.0
    cheaper = router.with_config(willingness_to_pay=1e-4)
    other = cheaper.route(data.prompts[1])
    assert cheaper.policy is router.policy
    if other.model != decision.model:
        other_share = (
            other.detail.chosen_service_s / router.policy.profile(other.model)["concurrency"]
        )
        assert router.policy.inspect(other.model)["clears_at_s"] == pytest.approx(
            clock.now + other_share, rel=1e-12
        )
    assert cheaper.feedback(other.id, quality=1.0, latency_s=1.0)


def test_binary_feedback_weighs_kappa(fitted: tuple[Router, RoutingDataset]) -> None:
    router = fresh(fitted, binary_feedback_weight=0.25)
    decision = router.route(fitted[1].prompts[2])
    before = router.policy.inspect(decision.model)["weight_sum"]
    router.feedback(decision.id, satisfied=True)
    assert router.policy.inspect(decision.model)["weight_sum"] == pytest.approx(before + 0.25)


def test_bad_feedback_changes_nothing(fitted: tuple[Router, RoutingDataset]) -> None:
    router = fresh(fitted)
    decision = router.route(fitted[1].prompts[3])
    state = router.policy.to_bytes()
    for kwargs, error in [
        ({"quality": math.nan}, mixllm.InvalidInputError),
        ({"quality": 1e300}, mixllm.InvalidInputError),
        ({"quality": 1.0, "satisfied": True}, mixllm.InvalidInputError),
        ({}, mixllm.InvalidInputError),
        ({"satisfied": "yes"}, mixllm.InvalidInputError),
        ({"quality": 1.0, "latency_s": -1.0}, mixllm.InvalidInputError),
        ({"quality": 1.0, "output_tokens": math.inf}, mixllm.InvalidInputError),
    ]:
        with pytest.raises(error):
            router.feedback(decision.id, **kwargs)  # type: ignore[arg-type]
        assert router.policy.to_bytes() == state
        assert router.pending() == 1
    with pytest.raises(DecisionNotFoundError, match="no decision with id"):
        router.feedback("never-issued", quality=1.0)
    assert router.policy.to_bytes() == state
    # The decision is still open after all those rejections.
    assert router.feedback(decision.id, quality=1.0)
    with pytest.raises(DecisionNotFoundError, match="already answered") as caught:
        router.feedback(decision.id, quality=1.0)
    assert isinstance(caught.value, KeyError)


class ManualClock:
    """A Router's clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock() -> ManualClock:
    return ManualClock()


def test_decisions_expire_and_leave_the_queue(
    fitted: tuple[Router, RoutingDataset], clock: ManualClock
) -> None:
    router = fresh(fitted, clock=clock, feedback_ttl_s=0.05)
    old = router.route(fitted[1].prompts[4])
    clock.now += 0.1
    router.route(fitted[1].prompts[5])
    with pytest.raises(DecisionNotFoundError, match="expired"):
        router.feedback(old.id, quality=1.0)
    assert router.pending() == 1
    assert sum(router.policy.in_flight(m) for m in router.models) == 1


def test_too_many_open_decisions_drop_the_oldest(fitted: tuple[Router, RoutingDataset]) -> None:
    router = fresh(fitted, max_pending=3)
    decisions = [router.route(text) for text in fitted[1].prompts[:5]]
    assert router.pending() == 3
    assert sum(router.policy.in_flight(m) for m in router.models) == 3
    with pytest.raises(DecisionNotFoundError, match="too many"):
        router.feedback(decisions[0].id, quality=1.0)
    assert router.feedback(decisions[-1].id, quality=1.0)


def test_feedback_for_a_removed_model_is_a_no_op(fitted: tuple[Router, RoutingDataset]) -> None:
    router = fresh(fitted)
    decision = router.route(fitted[1].prompts[6])
    router.remove_model(decision.model)
    others = {m: router.policy.inspect(m)["observations"] for m in router.models}
    assert router.feedback(decision.id, quality=1.0) is False
    assert {m: router.policy.inspect(m)["observations"] for m in router.models} == others
    assert decision.model not in [m.name for m in router.config.models]
    with pytest.raises(DecisionNotFoundError, match="removed"):
        router.feedback(decision.id, quality=1.0)


def test_an_added_model_takes_part_and_learns(fitted: tuple[Router, RoutingDataset]) -> None:
    router = fresh(fitted)
    router.add_model(
        ModelConfig(
            "newcomer", 0.0, 0.0, ttft_s=0.1, tokens_per_s=200.0, concurrency=64, prior_quality=0.95
        )
    )
    assert router.models[-1] == "newcomer"
    # Free, fast and believed excellent: the router tries it.
    decision = router.route(fitted[1].prompts[7])
    assert decision.model == "newcomer"
    router.feedback(decision.id, quality=0.0)
    assert router.policy.inspect("newcomer")["observations"] == 1
    rows = {row["name"]: row for row in router.describe_models()}
    assert rows["newcomer"]["observations"] == 1 and rows["newcomer"]["price_in"] == 0.0


def test_many_threads_route_and_send_feedback(fitted: tuple[Router, RoutingDataset]) -> None:
    router = fresh(fitted)
    texts = fitted[1].prompts
    router.route_batch(texts)  # warm the context cache
    for decision_id in router._ledger.ids():  # close the warm-up decisions
        router.feedback(decision_id, quality=0.5)
    start = {m: router.policy.inspect(m)["observations"] for m in router.models}
    errors: list[BaseException] = []
    per_thread = 150

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(per_thread):
                decision = router.route(texts[int(rng.integers(len(texts)))])
                if rng.random() < 0.5:
                    router.feedback(decision.id, quality=float(rng.random()), latency_s=1.0)
                else:
                    router.feedback(decision.id, satisfied=bool(rng.random() < 0.5))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "deadlock: a worker is still running"
    assert not errors, errors
    assert router.pending() == 0
    assert all(router.policy.in_flight(m) == 0 for m in router.models)
    learned = sum(router.policy.inspect(m)["observations"] - start[m] for m in router.models)
    assert learned == 6 * per_thread


def test_complete_then_feedback_later(
    fitted: tuple[Router, RoutingDataset], clock: ManualClock
) -> None:
    router = fresh(fitted, clock=clock, feedback_ttl_s=0.5)
    decision = router.route(fitted[1].prompts[8])
    model = decision.model
    router.complete(decision.id, latency_s=4.0)
    state = router.policy.inspect(model)
    assert state["in_flight"] == 0 and state["mean_service_s"] == 4.0
    with pytest.raises(mixllm.InvalidInputError, match="already completed"):
        router.complete(decision.id)
    before = router.policy.to_bytes()
    with pytest.raises(mixllm.InvalidInputError, match="not both"):
        router.feedback(decision.id, quality=1.0, latency_s=4.0)
    assert router.policy.to_bytes() == before
    observations = state["observations"]
    assert router.feedback(decision.id, quality=1.0, output_tokens=12)
    assert router.policy.inspect(model)["observations"] == observations + 1
    assert router.policy.in_flight(model) == 0
    with pytest.raises(DecisionNotFoundError, match="no decision"):
        router.complete("never-issued")

    # A completed decision that expires unanswered does not leave its queue a second time.
    other = router.route(fitted[1].prompts[9])
    router.complete(other.id)
    clock.now += 0.6
    router.route(fitted[1].prompts[10])
    assert sum(router.policy.in_flight(m) for m in router.models) == 1
    with pytest.raises(DecisionNotFoundError, match="expired"):
        router.feedback(other.id, quality=0.0)


def test_an_added_model_can_be_warm_started_from_examples(
    fitted: tuple[Router, RoutingDataset], routerbench: RoutingDataset
) -> None:
    router = fresh(fitted)
    router.remove_model("zero-one-ai/Yi-34B-Chat")
    examples = per_label(routerbench.train(), 5)
    spec = next(m for m in fitted[0].config.models if m.name == "zero-one-ai/Yi-34B-Chat")
    router.add_model(spec, examples=examples)
    state = router.policy.inspect(spec.name)
    assert state["observations"] == 15
    column = examples.models.index(spec.name)
    mean_quality = float(np.mean(examples.quality[:, column]))
    described = {row["name"]: row for row in router.describe_models()}[spec.name]
    assert described["mean_quality"] == pytest.approx(mean_quality)
    assert examples.output_tokens is not None
    tokens = examples.output_tokens[:, column]
    geometric_mean = float(np.expm1(np.mean(np.log1p(tokens))))
    assert described["mean_output_tokens"] == pytest.approx(geometric_mean)
    # Quality-only feedback teaches the length head nothing, so the mean length stays.
    before = {row["name"]: row for row in router.describe_models()}
    decision = router.route(examples.prompts[0])
    router.feedback(decision.id, quality=1.0)
    after = {row["name"]: row for row in router.describe_models()}[decision.model]
    assert after["observations"] == before[decision.model]["observations"] + 1
    assert after["mean_output_tokens"] == before[decision.model]["mean_output_tokens"]
    with pytest.raises(mixllm.InvalidInputError, match="no outcomes of model 'other'"):
        router.add_model(replace(spec, name="other"), examples=examples)
    assert "other" not in router.models


def test_routing_and_feedback_survive_pool_changes_in_other_threads(
    fitted: tuple[Router, RoutingDataset],
) -> None:
    router = fresh(fitted)
    texts = fitted[1].prompts
    router.route_batch(texts)  # warm the context cache
    for decision_id in router._ledger.ids():
        router.feedback(decision_id, quality=0.5)
    spec = next(m for m in router.config.models if m.name == "gpt-3.5-turbo-1106")
    stop = threading.Event()
    errors: list[BaseException] = []
    outcomes: list[bool] = []

    def churn() -> None:
        try:
            while not stop.is_set():
                router.remove_model(spec.name)
                router.add_model(spec)
        except BaseException as err:
            errors.append(err)

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(200):
                decision = router.route(texts[int(rng.integers(len(texts)))])
                outcomes.append(router.feedback(decision.id, quality=1.0, latency_s=0.5))
        except BaseException as err:
            errors.append(err)

    churner = threading.Thread(target=churn)
    workers = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    churner.start()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=120)
    stop.set()
    churner.join(timeout=30)
    assert not any(t.is_alive() for t in [churner, *workers]), "deadlock"
    assert not errors, errors
    assert len(outcomes) == 800 and router.pending() == 0
    # Feedback for a decision whose model was removed meanwhile is the documented no-op.
    assert all(router.policy.in_flight(m) == 0 for m in router.models)
    assert spec.name in router.models


def test_a_re_added_model_ignores_decisions_made_with_its_old_arm(
    fitted: tuple[Router, RoutingDataset],
) -> None:
    router = fresh(fitted)
    old = router.route(fitted[1].prompts[11])
    spec = next(m for m in router.config.models if m.name == old.model)
    router.remove_model(spec.name)
    # Re-added with a prior that makes the router pick it again, so the new arm's feedback is
    # exercised too.
    router.add_model(replace(spec, prior_quality=2.0))
    new = router.route(fitted[1].prompts[11])
    assert new.model == spec.name
    fresh_state = router.policy.inspect(spec.name)
    assert router.feedback(old.id, quality=1.0, latency_s=9.0) is False
    after = router.policy.inspect(spec.name)
    assert after["observations"] == fresh_state["observations"]
    assert after["in_flight"] == fresh_state["in_flight"]
    assert after["mean_service_s"] == fresh_state["mean_service_s"]
    assert router.feedback(new.id, quality=1.0)
    assert router.policy.inspect(spec.name)["observations"] == after["observations"] + 1
