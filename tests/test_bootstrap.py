"""The paired bootstrap of frontier comparisons, against a direct recomputation of each
resample from the drawn queries."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixllm.evaluation.bootstrap import Outcomes, compare, paired_differences, resample_counts
from mixllm.evaluation.metrics import aiq, hull_quality, shortfall
from mixllm.evaluation.simulator import SimulationResult

C_RANGE = (1.0, 100.0)


def outcomes(rng: np.random.Generator, points: int, queries: int, shift: float = 0.0) -> Outcomes:
    """A router whose dearer points buy better answers (quality in [0, 1], with ``shift``)."""
    spend = np.sort(rng.uniform(0.0, 1.0, size=points))[:, None]
    quality = np.clip(rng.uniform(0.0, 1.0, (points, queries)) * 0.5 + 0.5 * spend + shift, 0, 1)
    cost = spend * rng.uniform(0.5, 1.5, (points, queries)) + 0.01
    return Outcomes(quality, cost)


def reference(rng: np.random.Generator, queries: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.uniform(0.5, 1.0, queries), rng.uniform(0.8, 1.2, queries)


def points_of(o: Outcomes, drawn: np.ndarray, ref: tuple[np.ndarray, np.ndarray]) -> list:
    """The (cost %, quality %) points over the queries ``drawn`` (indices, with repeats)."""
    return [
        (
            100.0 * o.cost[k, drawn].sum() / ref[1][drawn].sum(),
            100.0 * o.quality[k, drawn].sum() / ref[0][drawn].sum(),
        )
        for k in range(o.quality.shape[0])
    ]


def test_resample_counts_draw_every_query_set_of_the_same_size_reproducibly() -> None:
    counts = resample_counts(50, 200, seed=4)
    assert counts.shape == (200, 50)
    assert (counts.sum(axis=1) == 50).all()
    np.testing.assert_array_equal(counts, resample_counts(50, 200, seed=4))
    assert not np.array_equal(counts, resample_counts(50, 200, seed=5))
    # Each query is drawn once per resample on average.
    assert counts.mean() == pytest.approx(1.0)
    for queries, resamples in ((0, 10), (10, 0)):
        with pytest.raises(ValueError, match="need queries and resamples"):
            resample_counts(queries, resamples, seed=0)


def test_compare_matches_each_resample_recomputed_from_its_drawn_queries() -> None:
    rng = np.random.default_rng(20)
    queries, resamples, seed = 40, 60, 3
    mine = outcomes(rng, 8, queries)
    other = outcomes(rng, 6, queries)
    ref = reference(rng, queries)
    whole = np.arange(queries)
    observed = shortfall(points_of(mine, whole, ref), points_of(other, whole, ref), 100.0)
    assert len(observed["behind"]) == 2  # two stretches to measure
    found = compare(
        mine, {"other": other}, ref, {"other": observed}, C_RANGE, resamples=resamples, seed=seed
    )["other"]

    counts = resample_counts(queries, resamples, seed)
    leads, dominated = [], []
    drawn_points = []
    for row in counts:
        drawn = np.repeat(np.arange(queries), row.astype(int))
        m, o = points_of(mine, drawn, ref), points_of(other, drawn, ref)
        drawn_points.append((m, o))
        leads.append(aiq(m, *C_RANGE) - aiq(o, *C_RANGE))
        dominated.append(not shortfall(m, o, 100.0)["behind"])
    np.testing.assert_allclose(found["aiq_lead"], np.percentile(leads, [2.5, 50, 97.5]), atol=1e-9)
    assert found["dominated_share"] == pytest.approx(np.mean(dominated))
    assert len(found["behind"]) == len(observed["behind"])
    for stretch, interval in zip(observed["behind"], found["behind"], strict=True):
        at = interval["gap_at_pct"]
        assert stretch["from_pct"] <= at <= stretch["to_pct"]
        # The stretch's worst cost: the observed gap there is its largest.
        gap = hull_quality(points_of(other, whole, ref), [at]) - hull_quality(
            points_of(mine, whole, ref), [at]
        )
        assert gap[0] == pytest.approx(stretch["max_gap"])
        gaps = []
        for m, o in drawn_points:
            c = max(at, min(cost for cost, _ in m), min(cost for cost, _ in o))
            gaps.append(float(hull_quality(o, [c])[0] - hull_quality(m, [c])[0]))
        np.testing.assert_allclose(interval["gap_interval"], np.percentile(gaps, [2.5, 97.5]))
        assert interval["gap_positive_share"] == pytest.approx(np.mean(np.array(gaps) > 0))


def test_compare_measures_a_stretch_where_the_baseline_is_ahead() -> None:
    rng = np.random.default_rng(2)
    queries = 30
    mine = outcomes(rng, 5, queries)
    # Far better answers at the same costs: ahead everywhere, in every resample.
    other = Outcomes(np.clip(mine.quality + 0.4, 0, 1), mine.cost.copy())
    ref = reference(rng, queries)
    whole = np.arange(queries)
    observed = shortfall(points_of(mine, whole, ref), points_of(other, whole, ref), 100.0)
    assert observed["behind"]
    found = compare(mine, {"other": other}, ref, {"other": observed}, C_RANGE, resamples=100)[
        "other"
    ]
    assert found["aiq_lead"][2] < 0.0
    assert found["dominated_share"] == 0.0
    assert found["behind"][0]["gap_interval"][0] > 0.0
    assert found["behind"][0]["gap_positive_share"] == 1.0


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    points=st.integers(1, 6),
    queries=st.integers(2, 40),
    resamples=st.integers(1, 30),
)
def test_a_router_against_itself_leads_by_nothing_and_is_never_behind(
    seed: int, points: int, queries: int, resamples: int
) -> None:
    rng = np.random.default_rng(seed)
    mine = outcomes(rng, points, queries)
    ref = reference(rng, queries)
    same = Outcomes(mine.quality.copy(), mine.cost.copy())
    observed = {"same": {"behind": []}}
    found = compare(mine, {"same": same}, ref, observed, C_RANGE, resamples=resamples, seed=seed)
    assert found["same"]["aiq_lead"] == [0.0, 0.0, 0.0]
    assert found["same"]["dominated_share"] == 1.0


def test_paired_differences_match_each_resample_recomputed() -> None:
    rng = np.random.default_rng(5)
    queries = 35
    first, second = outcomes(rng, 4, queries, shift=0.1), outcomes(rng, 4, queries)
    ref = reference(rng, queries)
    counts = resample_counts(queries, 80, seed=9)
    found = paired_differences(first, second, ref, C_RANGE, counts)
    means, aiqs = [], []
    for row in counts:
        drawn = np.repeat(np.arange(queries), row.astype(int))
        a, b = points_of(first, drawn, ref), points_of(second, drawn, ref)
        means.append(np.mean([q for _, q in a]) - np.mean([q for _, q in b]))
        aiqs.append(aiq(a, *C_RANGE) - aiq(b, *C_RANGE))
    np.testing.assert_allclose(found["mean_quality"], np.percentile(means, [2.5, 50, 97.5]))
    np.testing.assert_allclose(found["aiq"], np.percentile(aiqs, [2.5, 50, 97.5]), atol=1e-9)
    assert found["mean_quality"][0] > 0.0  # better answers at every point
    same = paired_differences(first, first, ref, C_RANGE, counts)
    assert same == {"mean_quality": [0.0, 0.0, 0.0], "aiq": [0.0, 0.0, 0.0]}
    with pytest.raises(ValueError, match="same points and queries"):
        paired_differences(first, outcomes(rng, 3, queries), ref, C_RANGE, counts)
    with pytest.raises(ValueError, match=r"counts must be \(resamples, 35\)"):
        paired_differences(first, second, ref, C_RANGE, counts[:, :10])


def test_outcomes_of_a_sweep_and_bad_shapes() -> None:
    runs = [
        SimulationResult(
            choice=np.zeros(3, dtype=np.int64),
            waiting_s=np.zeros(3),
            quality=np.array([1.0, 0.0, 0.5]) * k,
            cost=np.array([0.1, 0.2, 0.3]) * k,
            violated=np.zeros(3, dtype=bool),
        )
        for k in (1.0, 2.0)
    ]
    stacked = Outcomes.stack(runs)
    assert stacked.quality.shape == (2, 3) and stacked.queries == 3
    np.testing.assert_array_equal(stacked.cost[1], [0.2, 0.4, 0.6])
    with pytest.raises(ValueError, match="one shape"):
        Outcomes(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="one shape"):
        Outcomes(np.zeros(3), np.zeros(3))
    ref = (np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match="mine has 3 queries, the reference 4"):
        compare(stacked, {}, ref, {}, C_RANGE)
    with pytest.raises(ValueError, match="b has 3 queries"):
        compare(Outcomes(np.ones((1, 4)), np.ones((1, 4))), {"b": stacked}, ref, {}, C_RANGE)
