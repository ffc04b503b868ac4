"""The evaluation package: simulator, metrics and baselines on small hand-made data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mixllm._core import Policy
from mixllm.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_TOKENS_PER_S,
    DEFAULT_TTFT_S,
    EmbedderConfig,
    ModelConfig,
    RouterConfig,
)
from mixllm.data import RoutingDataset
from mixllm.evaluation import baselines as bl
from mixllm.evaluation.experiments import (
    ARRIVAL_ORDERS,
    CONTINUAL_SPLITS,
    EvalSettings,
    assumed_speeds,
    check_continual_splits,
    in_arrival_order,
    router_config,
    servers_for,
)
from mixllm.evaluation.metrics import (
    Point,
    aiq,
    cost_to_reach,
    hull,
    hull_quality,
    quality_at_cost,
    shortfall,
)
from mixllm.evaluation.simulator import (
    FixedChoices,
    ServerProfile,
    Stream,
    StreamConfig,
    arrival_times,
    simulate,
    simulate_fixed,
)
from mixllm.evaluation.vectors import embed_cached
from mixllm.routing.catalog import ROUTERBENCH_MODELS


def _stream(service: list[list[float]], arrivals: list[float], tau: float | None) -> Stream:
    n, k = len(service), len(service[0])
    return Stream(
        arrivals=np.array(arrivals, dtype=np.float64),
        quality=np.ones((n, k)),
        cost=np.full((n, k), 0.5),
        service_s=np.array(service, dtype=np.float64),
        tau_s=tau,
    )


# -- simulator --------------------------------------------------------------------------------


def test_second_simultaneous_query_waits_exactly_the_first_service_time() -> None:
    servers = [ServerProfile("a", 0.1, 10.0, concurrency=1)]
    stream = _stream([[3.0], [2.0]], [0.0, 0.0], tau=None)
    result = simulate(stream, FixedChoices(np.array([0, 0])), servers)
    assert result.waiting_s[0] == pytest.approx(3.0)
    assert result.waiting_s[1] - 2.0 == pytest.approx(3.0)  # queue wait = first's service


def test_concurrency_two_serves_both_at_once() -> None:
    servers = [ServerProfile("a", 0.1, 10.0, concurrency=2)]
    stream = _stream([[3.0], [2.0]], [0.0, 0.0], tau=None)
    result = simulate(stream, FixedChoices(np.array([0, 0])), servers)
    np.testing.assert_allclose(result.waiting_s, [3.0, 2.0])


def test_waiting_beyond_tau_scores_zero_but_still_costs() -> None:
    servers = [ServerProfile("a", 0.1, 10.0, concurrency=1)]
    stream = _stream([[3.0], [2.0]], [0.0, 0.0], tau=4.0)
    result = simulate_fixed(stream, np.array([0, 0]), servers)
    np.testing.assert_array_equal(result.violated, [False, True])
    np.testing.assert_allclose(result.quality, [1.0, 0.0])
    np.testing.assert_allclose(result.cost, [0.5, 0.5])
    assert result.violations == 1


def test_finished_requests_are_reported_before_the_next_decision() -> None:
    servers = [ServerProfile("a", 0.1, 10.0, concurrency=1)]
    stream = _stream([[1.0], [1.0], [1.0]], [0.0, 0.5, 2.0], tau=None)
    log: list[tuple[str, int]] = []

    class Recorder:
        def choose(self, query: int, now: float) -> int:
            log.append(("choose", query))
            return 0

        def finished(
            self, query: int, model: int, waiting_s: float, service_s: float, now: float
        ) -> None:
            log.append(("finished", query))
            assert now == pytest.approx(float(stream.arrivals[query]) + waiting_s, abs=1e-12)

    simulate(stream, Recorder(), servers)
    # Query 0 ends at 1.0, query 1 (queued) at 2.0: both are reported before query 2 at 2.0.
    assert log == [
        ("choose", 0),
        ("choose", 1),
        ("finished", 0),
        ("finished", 1),
        ("choose", 2),
        ("finished", 2),
    ]


def test_arrivals_default_to_100_per_10_s() -> None:
    times = arrival_times(250, StreamConfig())
    assert times[100] == pytest.approx(10.0)
    assert times[1] == pytest.approx(0.1)


def test_service_time_is_ttft_plus_generation() -> None:
    servers = [ServerProfile("a", 0.5, 20.0, 1), ServerProfile("b", 0.2, 100.0, 1)]
    stream = Stream.build(
        np.ones((1, 2)), np.ones((1, 2)), np.array([[40.0, np.nan]]), servers, StreamConfig()
    )
    assert stream.service_s[0, 0] == pytest.approx(0.5 + 2.0)
    assert stream.service_s[0, 1] == pytest.approx(0.2)  # no token count at all: ttft only


# -- metrics ----------------------------------------------------------------------------------


def test_hull_drops_dominated_and_non_convex_points() -> None:
    points = [(10.0, 50.0), (20.0, 55.0), (30.0, 80.0), (40.0, 70.0), (60.0, 90.0)]
    # (20, 55) lies under the chord from (10, 50) to (30, 80); (40, 70) is dominated.
    assert hull(points) == [(10.0, 50.0), (30.0, 80.0), (60.0, 90.0)]


def test_aiq_of_one_point_is_flat_after_it_and_zero_before() -> None:
    assert aiq([(50.0, 80.0)], 0.0, 100.0) == pytest.approx(40.0)
    assert aiq([(0.0, 80.0)], 0.0, 100.0) == pytest.approx(80.0)


def test_aiq_of_a_line_and_of_a_falling_pair() -> None:
    assert aiq([(0.0, 50.0), (100.0, 100.0)], 0.0, 100.0) == pytest.approx(75.0)
    # Quality falling with cost: only the cheaper point counts, flat after it.
    assert aiq([(50.0, 90.0), (100.0, 80.0)], 0.0, 100.0) == pytest.approx(45.0)
    # Area between the knots is a trapezoid, then flat.
    assert aiq([(0.0, 0.0), (50.0, 100.0)], 0.0, 100.0) == pytest.approx((25.0 + 50.0) / 1.0)


def test_hull_quality_is_what_aiq_integrates() -> None:
    points = [(1.0, 50.0), (2.0, 40.0), (3.0, 80.0)]
    np.testing.assert_allclose(
        hull_quality(points, [0.5, 1.0, 2.0, 3.0, 4.0]), [0.0, 50.0, 65.0, 80.0, 80.0]
    )
    grid = np.linspace(0.0, 10.0, 100_001)
    values = hull_quality(points, grid)
    mean = float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(grid))) / 10.0
    assert mean == pytest.approx(aiq(points, 0.0, 10.0), abs=1e-3)
    assert hull_quality([], [1.0]).tolist() == [0.0]


def test_shortfall_finds_the_exact_stretches_where_another_frontier_is_above() -> None:
    mine = [(1.0, 50.0), (3.0, 80.0)]

    def behind(other: list[tuple[float, float]], c_max: float = 4.0) -> list[tuple[float, ...]]:
        found = shortfall(mine, other, c_max)
        assert (found["from_pct"], found["to_pct"]) == (1.0, max(1.0, c_max))
        return [
            (pytest.approx(b["from_pct"]), pytest.approx(b["to_pct"]), pytest.approx(b["max_gap"]))
            for b in found["behind"]
        ]

    # Hull (0.5, 40) - (2, 70) - (3, 75): equal to mine at 1, 5 above at 2, crossing at 2.5.
    assert behind([(0.5, 40.0), (2.0, 70.0), (3.0, 75.0)]) == [(1.0, 2.5, 5.0)]
    # Above everywhere (its dearer point is dominated by its cheaper one).
    assert behind([(0.1, 99.0), (1.0, 10.0)]) == [(1.0, 4.0, 49.0)]
    assert behind(mine) == []
    # A flat 60 is above mine (50 rising to 80 at 3) up to 5/3.
    assert behind([(0.1, 60.0)]) == [(1.0, 5.0 / 3.0, 10.0)]
    # A router starting dearer than me is 0 before its cheapest point: no stretch there.
    assert behind([(2.0, 79.0)]) == [(2.0, 2.0 + 14.0 / 15.0, 14.0)]
    # Two separate stretches, each with its own largest gap; a touch without a gap is none.
    # Hull (0.5, 55) - (2.5, 77) - (3.5, 82), (1.5, 58) under its chord: gaps 10.5 at 1, 4.5
    # at 2.5, -0.5 at 3, 2 at 3.5 and flat 2 after, so zeros at 2.95 and 3.1.
    two = [(0.5, 55.0), (1.5, 58.0), (2.5, 77.0), (3.5, 82.0)]
    assert behind(two) == [(1.0, 2.95, 10.5), (3.1, 4.0, 2.0)]
    # Where each largest gap is: at 1, and first reached at 3.5 (flat 2 after it).
    assert [b["max_gap_at_pct"] for b in shortfall(mine, two, 4.0)["behind"]] == [1.0, 3.5]
    # A router starting dearer than me is furthest ahead at its own cheapest point here.
    assert shortfall(mine, [(2.0, 79.0)], 4.0)["behind"][0]["max_gap_at_pct"] == 2.0
    assert behind([(1.0, 50.0), (2.0, 65.0)]) == []
    # A range ending before my cheapest point is that point alone.
    assert behind([(0.1, 60.0)], 0.5) == [(1.0, 1.0, 10.0)]
    for bad in ([(math.nan, 50.0)], [(1.0, math.inf)]):
        with pytest.raises(ValueError, match="non-finite"):
            shortfall(mine, bad, 4.0)
    with pytest.raises(ValueError, match="no points"):
        shortfall([], mine, 4.0)
    with pytest.raises(ValueError, match="c_max"):
        shortfall(mine, mine, math.inf)


def test_quality_and_cost_lookups() -> None:
    points = [Point(1.0, 90.0, 10.0), Point(2.0, 98.0, 30.0), Point(3.0, 99.0, 50.0)]
    assert quality_at_cost(points, 30.0) == 98.0
    assert cost_to_reach(points, 97.25) == 30.0
    assert math.isnan(cost_to_reach(points, 100.0))


# -- baselines --------------------------------------------------------------------------------


def test_oracle_is_optimal_among_routers_on_synthetic_data() -> None:
    rng = np.random.default_rng(1)
    n, k = 60, 4
    quality = rng.integers(0, 2, (n, k)).astype(np.float64)
    cost = rng.uniform(0.001, 0.01, (n, k))
    servers = [ServerProfile(f"m{i}", 0.1, 50.0, 8) for i in range(k)]
    stream = Stream.build(quality, cost, np.full((n, k), 10.0), servers, StreamConfig())
    oracle = bl.ScoreRouter("oracle", quality, cost, servers)
    noisy = bl.ScoreRouter("noisy", quality + rng.normal(0, 0.5, (n, k)), cost, servers)
    fixed = [bl.FixedRouter(f"m{i}", np.full(n, i), servers) for i in range(k)]
    random = bl.FixedRouter("random", rng.integers(0, k, n), servers)
    for lam in (1e-3, 1e-2, 1e-1, math.inf):

        def utility(router: bl.SweepRouter, lam: float = lam) -> float:
            result = router.run(stream, lam)
            penalty = 0.0 if math.isinf(lam) else result.cost.sum() / lam
            return float(result.quality.sum() - penalty)

        best = utility(oracle)
        for other in (noisy, random, *fixed):
            assert best >= utility(other) - 1e-9


def test_knn_quality_averages_the_nearest_neighbours() -> None:
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    quality = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    predicted = bl.knn_quality(train, quality, np.array([[1.0, 0.05]]), k=2)
    np.testing.assert_allclose(predicted, [[0.5, 0.0]])
    # A k beyond the training queries takes them all (a small validation split has few).
    everything = bl.knn_quality(train, quality, np.array([[1.0, 0.05]]), k=80)
    np.testing.assert_allclose(everything, [quality.mean(axis=0)])
    # Leave-one-out: every other query, never the query itself.
    loo = bl.knn_quality(train, quality, train, k=80, exclude_self=True)
    expected = [np.delete(quality, i, axis=0).mean(axis=0) for i in range(3)]
    np.testing.assert_allclose(loo, expected)
    # ... and with k = 1, the nearest other query (rows 0 and 1 are each other's).
    nearest = bl.knn_quality(train, quality, train, k=1, exclude_self=True)
    np.testing.assert_allclose(nearest, quality[[1, 0, 1]])
    with pytest.raises(ValueError, match="at least one"):
        bl.knn_quality(train[:1], quality[:1], train[:1], k=5, exclude_self=True)


def test_policy_router_learns_online_and_counts_requests_out_of_flight() -> None:
    n, k = 200, 2
    servers = [ServerProfile("cheap", 0.1, 100.0, 4), ServerProfile("good", 0.1, 100.0, 4)]
    quality = np.column_stack([np.zeros(n), np.ones(n)])
    cost = np.column_stack([np.full(n, 1e-4), np.full(n, 2e-4)])
    stream = Stream.build(quality, cost, np.full((n, k), 5.0), servers, StreamConfig(tau_s=30.0))
    policy = Policy(3, tau_s=30.0)
    for server in servers:
        policy.add_model(server.name, price_in=1.0, price_out=1.0, ttft_s=0.1,
                         tokens_per_s=100.0, concurrency=4, prior_quality=0.5)  # fmt: skip
    contexts = np.column_stack([np.ones((n, 2)) / np.sqrt(2), np.ones(n)])
    router = bl.PolicyRouter(
        "p", policy, contexts, np.full(n, 10.0), np.full((n, k), 5.0), [0, 1], servers,
        StreamConfig(tau_s=30.0),
    )  # fmt: skip
    result = router.run(stream, 1.0)
    assert (result.choice[-50:] == 1).all()  # learned that "good" is right
    # The original is untouched: runs learn on a copy.
    assert policy.in_flight("good") == 0
    assert policy.inspect("good")["observations"] == 0


def test_router_config_takes_knobs_and_listed_prices_from_the_configuration() -> None:
    catalog = {spec.name: spec for spec in ROUTERBENCH_MODELS}
    gpt4, gpt35 = "gpt-4-1106-preview", "gpt-3.5-turbo-1106"
    own = ModelConfig(gpt4, 1.0, 2.0, 0.3, 99.0, 3)
    base = RouterConfig(
        models=(own,), alpha=0.5, beta=0.7, ridge=10.0, dim=16, tau_s=5.0,
        embedder=EmbedderConfig(truncation="tail"),
    )  # fmt: skip
    config = router_config([gpt4, gpt35, "not-in-the-catalog"], tau_s=30.0, base=base)
    assert (config.alpha, config.beta, config.ridge, config.dim) == (0.5, 0.7, 10.0, 16)
    assert config.tau_s == 30.0  # the run's τ, not the file's
    assert config.embedder.truncation == "tail"
    assert config.models[0] == own
    assert config.models[1] == catalog[gpt35].model_config()
    assert config.models[2].name == "not-in-the-catalog"
    assert router_config([gpt4], tau_s=30.0, beta=0.0, base=base).beta == 0.0
    default = router_config([gpt4], tau_s=30.0)
    # The ridges are left to the fit's cross-validation.
    assert (default.alpha, default.ridge, default.dim) == (0.01, None, 64)
    assert default.models[0] == catalog[gpt4].model_config()


def test_simulated_servers_run_at_the_speeds_the_evaluated_router_believes() -> None:
    catalog = {spec.name: spec for spec in ROUTERBENCH_MODELS}
    gpt4, gpt35, own_name = "gpt-4-1106-preview", "gpt-3.5-turbo-1106", "my-model"
    unsaid = "configured-without-speeds"
    base = RouterConfig(
        models=(
            ModelConfig(gpt4, 1.0, 2.0, 0.3, 99.0, 3),
            ModelConfig(own_name, 1, 1, 2.0, 7.0, 1),
            ModelConfig(unsaid, 1, 1),
        )
    )
    names = [gpt4, gpt35, own_name, unsaid, "unknown"]
    speeds = [(s.ttft_s, s.tokens_per_s, s.concurrency) for s in servers_for(names, base)]
    placeholder = (DEFAULT_TTFT_S, DEFAULT_TOKENS_PER_S, DEFAULT_CONCURRENCY)
    assert speeds == [
        *[(catalog[n].ttft_s, catalog[n].tokens_per_s, catalog[n].concurrency) for n in names[:2]],
        (2.0, 7.0, 1),  # a model of the user's own, at the speeds its router believes
        placeholder,
        placeholder,
    ]
    assert assumed_speeds(names, base) == [unsaid, "unknown"]
    assert assumed_speeds(names) == [own_name, unsaid, "unknown"]
    config = router_config(names, tau_s=30.0, base=base)
    believed = {m.name: (m.ttft_s, m.tokens_per_s, m.concurrency) for m in config.models}
    assert believed[own_name] == speeds[2]


def test_eval_embedder_settings_follow_the_configuration_then_the_flags() -> None:
    # As a deployed Router runs the encoder (float32), unless the int8 copy is asked for.
    assert EvalSettings().embedder() == EmbedderConfig(
        quantized=False, intra_op_threads=2, cache_size=0
    )
    assert EvalSettings(quantized=True).embedder().quantized
    model = ModelConfig("m", 1.0, 1.0, 0.1, 10.0, 1)
    configured = RouterConfig(models=(model,), embedder=EmbedderConfig(truncation="tail"))
    settings = EvalSettings(router=configured)
    assert settings.embedder().truncation == "tail"
    assert not settings.embedder().quantized  # as configured: the float encoder
    override = EvalSettings(router=configured, truncation="head", max_tokens=128)
    assert (override.embedder().truncation, override.embedder().max_tokens) == ("head", 128)


class CountingEncoder:
    """Stands in for an Embedder: what the vector cache reads of one, and how often it ran."""

    def __init__(
        self,
        model_sha256: str = "a" * 64,
        truncation: str = "head",
        tokenizer_sha256: str = "t" * 64,
        max_tokens: int = 256,
    ) -> None:
        self.model_sha256 = model_sha256
        self.tokenizer_sha256 = tokenizer_sha256
        self.max_tokens = max_tokens
        self.truncation = truncation
        self.dim = 3
        self.calls = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        return np.array([[len(t), 1.0, 2.0] for t in texts], dtype=np.float32)


def test_vector_cache_is_keyed_by_the_encoder_and_its_window(tmp_path) -> None:
    texts = ["a question", "another, longer question"]

    def embedded(encoder: CountingEncoder) -> int:
        vectors = embed_cached(texts, encoder, directory=tmp_path)  # type: ignore[arg-type]
        np.testing.assert_array_equal(vectors[:, 0], [len(t) for t in texts])
        return encoder.calls

    assert embedded(CountingEncoder()) == 1
    assert embedded(CountingEncoder()) == 0  # read back from the cache
    # Another model or tokenizer file of the same name and dimension, or another window:
    # embedded anew.
    assert embedded(CountingEncoder(model_sha256="b" * 64)) == 1
    assert embedded(CountingEncoder(tokenizer_sha256="u" * 64)) == 1
    assert embedded(CountingEncoder(max_tokens=128)) == 1
    assert embedded(CountingEncoder(truncation="tail")) == 1
    # Other texts, or the same texts in another order: embedded anew.
    assert embed_cached(texts[::-1], CountingEncoder(), directory=tmp_path).shape == (2, 3)  # type: ignore[arg-type]
    assert len(list(tmp_path.glob("*.npy"))) == 6


def test_continual_splits_are_checked_by_the_evaluation_itself() -> None:
    check_continual_splits(CONTINUAL_SPLITS)
    check_continual_splits([(100, 0), (1, 99)])
    for bad, message in (
        ([(50, 60)], "50:60 must be percentages adding up to 100"),
        ([(30, 70), (0, 100)], "0:100 must be .* with at least 1 offline"),
        ([(30, 70), (80, 20), (30, 70)], "30:70 is given twice"),
    ):
        with pytest.raises(ValueError, match=message):
            check_continual_splits(bad)


def test_shuffled_arrivals_reorder_every_query_with_its_vector_and_split(
    routerbench: RoutingDataset,
) -> None:
    assert ARRIVAL_ORDERS == ("data", "shuffled")
    vectors = np.arange(len(routerbench), dtype=np.float64)[:, None] * np.ones((1, 3))
    same, same_vectors = in_arrival_order(routerbench, vectors, "data", seed=0)
    assert same is routerbench and same_vectors is vectors

    shuffled, moved = in_arrival_order(routerbench, vectors, "shuffled", seed=0)
    order = moved[:, 0].astype(np.int64)  # each row's position in the data
    assert sorted(order) == list(range(len(routerbench)))
    assert shuffled.ids == [routerbench.ids[i] for i in order]
    assert shuffled.split == [routerbench.split[i] for i in order]  # type: ignore[index]
    np.testing.assert_array_equal(shuffled.quality, routerbench.quality[order])
    np.testing.assert_array_equal(shuffled.output_tokens, routerbench.output_tokens[order])  # type: ignore[index]

    def first_test_benchmarks(data: RoutingDataset) -> set[str]:
        labels, split = data.labels or [], data.split or []
        return set([b for b, s in zip(labels, split, strict=True) if s == "test"][:100])

    # The data lists one benchmark after another; shuffled, the test stream's first hundred
    # queries hold all three, as mixed traffic would.
    assert len(first_test_benchmarks(routerbench)) == 1
    assert len(first_test_benchmarks(shuffled)) == 3
    # The same seed, the same order; another seed, another.
    again, _ = in_arrival_order(routerbench, vectors, "shuffled", seed=0)
    other, _ = in_arrival_order(routerbench, vectors, "shuffled", seed=1)
    assert again.ids == shuffled.ids and other.ids != shuffled.ids
    with pytest.raises(ValueError, match="arrivals must be one of data, shuffled, got 'sorted'"):
        in_arrival_order(routerbench, vectors, "sorted", seed=0)  # type: ignore[arg-type]
