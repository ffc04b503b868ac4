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
    # Every query is as likely to be drawn: each one's count, averaged over the 200 resamples,
    # is 1 give or take its standard error (about 0.07).
    assert np.all(np.abs(counts.mean(axis=0) - 1.0) < 0.35)
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
    mine_run, other_run = points_of(mine, whole, ref), points_of(other, whole, ref)
    observed = shortfall(mine_run, other_run, 100.0)
    assert len(observed["behind"]) == 2  # two stretches to measure
    found = compare(
        mine, {"other": other}, ref, {"other": observed}, C_RANGE, resamples=resamples, seed=seed
    )["other"]
    assert found["resamples"] == resamples
    assert found["aiq_lead"] == pytest.approx(aiq(mine_run, *C_RANGE) - aiq(other_run, *C_RANGE))
    expected = oracle(mine, other, ref, resample_counts(queries, resamples, seed), observed)
    np.testing.assert_allclose(found["aiq_lead_interval"], expected["aiq_lead_interval"])
    assert found["mixllm_at_or_above_share"] == pytest.approx(expected["at_or_above"])
    for stretch, got, want in zip(
        observed["behind"], found["behind"], expected["behind"], strict=True
    ):
        assert stretch["from_pct"] <= stretch["max_gap_at_pct"] <= stretch["to_pct"]
        np.testing.assert_allclose(got["gap_interval"], want["gap_interval"], atol=1e-12)
        assert got["gap_positive_share"] == pytest.approx(want["gap_positive_share"])


def oracle(
    mine: Outcomes,
    other: Outcomes,
    ref: tuple[np.ndarray, np.ndarray],
    counts: np.ndarray,
    observed: dict,
) -> dict:
    """`compare`'s resampled figures, each resample recomputed from its drawn query indices."""
    leads, at_or_above, gaps = [], [], [[] for _ in observed["behind"]]
    for row in counts:
        drawn = np.repeat(np.arange(len(row)), row.astype(int))
        m, o = points_of(mine, drawn, ref), points_of(other, drawn, ref)
        leads.append(aiq(m, *C_RANGE) - aiq(o, *C_RANGE))
        at_or_above.append(not shortfall(m, o, 100.0)["behind"])
        for stretch, found in zip(observed["behind"], gaps, strict=True):
            c = max(stretch["max_gap_at_pct"], min(x for x, _ in m), min(x for x, _ in o))
            found.append(float(hull_quality(o, [c])[0] - hull_quality(m, [c])[0]))
    return {
        "aiq_lead_interval": np.percentile(leads, [2.5, 97.5]),
        "at_or_above": np.mean(at_or_above),
        "behind": [
            {
                "gap_interval": np.percentile(g, [2.5, 97.5]),
                "gap_positive_share": np.mean(np.array(g) > 1e-9),
            }
            for g in gaps
        ],
    }


def test_a_stretch_at_a_baselines_own_cheapest_point_is_measured_where_both_run() -> None:
    # The baseline starts dearer than mine, well above my hull there: the stretch begins at its
    # cheapest point, which moves with the draw; where it moves past the run's, the gap is
    # taken at the baseline's cheapest point in that resample, not where its hull is 0.
    rng = np.random.default_rng(8)
    queries, resamples = 30, 200
    spend = np.linspace(0.05, 1.0, 6)[:, None]
    mine = Outcomes(
        np.tile(0.2 + 0.6 * spend, (1, queries)), spend * rng.uniform(0.5, 1.5, (6, queries))
    )
    other = Outcomes(np.full((1, queries), 0.9), 0.3 * rng.uniform(0.2, 1.8, (1, queries)))
    ref = reference(rng, queries)
    whole = np.arange(queries)
    mine_run, other_run = points_of(mine, whole, ref), points_of(other, whole, ref)
    observed = shortfall(mine_run, other_run, 100.0)
    at = observed["behind"][0]["max_gap_at_pct"]
    assert at == pytest.approx(other_run[0][0])  # its own cheapest point
    counts = resample_counts(queries, resamples, seed=1)
    moved = sum(
        points_of(other, np.repeat(whole, row.astype(int)), ref)[0][0] > at for row in counts
    )
    assert 0.2 * resamples < moved < 0.8 * resamples  # the draw moves it both ways
    found = compare(
        mine, {"other": other}, ref, {"other": observed}, C_RANGE, resamples=resamples, seed=1
    )["other"]
    want = oracle(mine, other, ref, counts, observed)["behind"][0]
    np.testing.assert_allclose(found["behind"][0]["gap_interval"], want["gap_interval"])
    # Measured where both run, the baseline is ahead in every resample.
    assert found["behind"][0]["gap_interval"][0] > 0.0


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
    assert found["aiq_lead_interval"][1] < 0.0
    assert found["mixllm_at_or_above_share"] == 0.0
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
    assert found["same"]["aiq_lead"] == 0.0
    assert found["same"]["aiq_lead_interval"] == [0.0, 0.0]
    assert found["same"]["mixllm_at_or_above_share"] == 1.0


def test_paired_differences_match_each_resample_recomputed() -> None:
    rng = np.random.default_rng(5)
    queries = 35
    first, second = outcomes(rng, 4, queries, shift=0.1), outcomes(rng, 4, queries)
    ref = reference(rng, queries)
    counts = resample_counts(queries, 80, seed=9)
    found = paired_differences(first, second, ref, C_RANGE, counts)
    whole = np.arange(queries)
    run_a, run_b = points_of(first, whole, ref), points_of(second, whole, ref)
    assert found["mean_quality"] == pytest.approx(
        np.mean([q for _, q in run_a]) - np.mean([q for _, q in run_b])
    )
    assert found["aiq"] == pytest.approx(aiq(run_a, *C_RANGE) - aiq(run_b, *C_RANGE))
    means, aiqs = [], []
    for row in counts:
        drawn = np.repeat(whole, row.astype(int))
        a, b = points_of(first, drawn, ref), points_of(second, drawn, ref)
        means.append(np.mean([q for _, q in a]) - np.mean([q for _, q in b]))
        aiqs.append(aiq(a, *C_RANGE) - aiq(b, *C_RANGE))
    np.testing.assert_allclose(found["mean_quality_interval"], np.percentile(means, [2.5, 97.5]))
    np.testing.assert_allclose(found["aiq_interval"], np.percentile(aiqs, [2.5, 97.5]), atol=1e-9)
    assert found["resamples"] == 80
    assert found["mean_quality_interval"][0] > 0.0  # better answers at every point
    same = paired_differences(first, first, ref, C_RANGE, counts)
    assert (same["mean_quality"], same["aiq"]) == (0.0, 0.0)
    assert same["mean_quality_interval"] == same["aiq_interval"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="same points and queries"):
        paired_differences(first, outcomes(rng, 3, queries), ref, C_RANGE, counts)
    with pytest.raises(ValueError, match=r"counts must be \(resamples, 35\)"):
        paired_differences(first, second, ref, C_RANGE, counts[:, :10])


def test_resamples_that_drew_no_reference_quality_are_left_out_and_counted() -> None:
    rng = np.random.default_rng(3)
    queries = 4
    mine, other = outcomes(rng, 3, queries), outcomes(rng, 2, queries)
    # The reference scored on one query of four: about a third of the draws miss it.
    ref = (np.array([0.0, 0.0, 0.0, 1.0]), np.ones(queries))
    counts = resample_counts(queries, 200, seed=2)
    usable = int((counts[:, 3] > 0).sum())
    assert 100 < usable < 170
    whole = np.arange(queries)
    observed = shortfall(points_of(mine, whole, ref), points_of(other, whole, ref), 100.0)
    found = compare(mine, {"o": other}, ref, {"o": observed}, C_RANGE, resamples=200, seed=2)
    assert found["o"]["resamples"] == usable
    assert all(np.isfinite(found["o"]["aiq_lead_interval"]))
    assert paired_differences(mine, mine, ref, C_RANGE, counts)["resamples"] == usable
    with pytest.raises(ValueError, match="too few test queries to resample"):
        compare(mine, {}, (np.zeros(queries), np.ones(queries)), {}, C_RANGE, resamples=10)


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
    # The scored part of a run that served other queries first (the continual experiment).
    np.testing.assert_array_equal(
        Outcomes.stack(runs, slice(1, 3)).quality, [[0.0, 0.5], [0.0, 1.0]]
    )
    with pytest.raises(ValueError, match="one shape"):
        Outcomes(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="one shape"):
        Outcomes(np.zeros(3), np.zeros(3))
    ref = (np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match="mine has 3 queries, the reference 4"):
        compare(stacked, {}, ref, {}, C_RANGE)
    four = Outcomes(np.ones((1, 4)), np.ones((1, 4)))
    with pytest.raises(ValueError, match="b has 3 queries"):
        compare(four, {"b": stacked}, ref, {"b": {"behind": []}}, C_RANGE)
    with pytest.raises(ValueError, match=r"shortfalls are for \[\], the baselines \['b'\]"):
        compare(four, {"b": four}, ref, {}, C_RANGE)
