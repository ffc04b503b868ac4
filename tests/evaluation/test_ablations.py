"""mixllm's ablations in the frontier: each is compared with mixllm decision by decision, and an
ablation that routes every query alike is so for a reason the results carry (β without the
time constraint; PCA spanning the tag-enhanced projection's subspace, to which the heads are
blind up to a rotation)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from light_router import HashEmbedder
from mixllm._core import InvalidInputError
from mixllm.config import ModelConfig, RouterConfig
from mixllm.data import RoutingDataset
from mixllm.evaluation.ablations import decisions_differing, subspace_cosine
from mixllm.evaluation.bootstrap import Outcomes
from mixllm.evaluation.experiments import (
    NO_BETA,
    NO_TAGS,
    EvalSettings,
    _Data,
    frontier_experiment,
    servers_for,
)
from mixllm.evaluation.metrics import Point
from mixllm.evaluation.report import format_table
from mixllm.understanding.projection import LinearProjection, PcaProjection, TagProjection

MODELS = ("good-at-a", "good-at-b", "dear-and-good")
WIDTH = 16
D = 4


def _orthogonal(n: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return q


def test_a_rotated_context_gets_the_same_heads_bonus_and_decisions() -> None:
    """Why PCA routes as the tag-enhanced projection when both span one subspace: contexts
    that differ by a rotation fit heads whose predictions, bonus and decisions are the same."""
    rng = np.random.default_rng(0)
    n = 300
    z = rng.normal(size=(n, D))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    contexts = np.column_stack([z, np.ones(n)])
    rotated = np.column_stack([z @ _orthogonal(D, 1).T, np.ones(n)])
    assert np.abs(contexts - rotated).max() > 0.5
    quality = np.column_stack([z[:, 0] > 0, z[:, 1] > 0, np.full(n, 0.8)]).astype(np.float64)
    tokens = np.full(n, 100.0)
    config = RouterConfig(
        models=tuple(ModelConfig(m, 1.0 + 20.0 * (k == 2), 1.0) for k, m in enumerate(MODELS)),
        dim=D,
        ridge=3.0,
        length_ridge=1.0,
    )
    policies = []
    for x in (contexts, rotated):
        policy = config.new_policy(D + 1)
        for k, name in enumerate(MODELS):
            policy.fit(name, x[:200], quality[:200, k], tokens[:200])
        policies.append(policy)
    seen = set()
    for lam in (1e-4, 1e-3, 1e-2, math.inf):
        chosen = [
            p.decide_batch(x[200:], prompt_tokens=50.0, willingness_to_pay=lam, now_s=0.0)
            for p, x in zip(policies, (contexts, rotated), strict=True)
        ]
        np.testing.assert_array_equal(chosen[0], chosen[1])
        seen |= set(chosen[0].tolist())
    assert len(seen) > 1  # the decisions depend on the context


def test_subspace_cosine_is_one_for_one_subspace_and_zero_for_an_orthogonal_direction() -> None:
    rows = _orthogonal(WIDTH, 2)
    mean = np.zeros(WIDTH)
    first = LinearProjection(rows[:D], mean)
    assert subspace_cosine(first, LinearProjection(_orthogonal(D, 3) @ rows[:D], mean)) == (
        pytest.approx(1.0, abs=1e-12)
    )
    # One direction of the second lies outside the first's span.
    second = LinearProjection(np.vstack([rows[1:D], rows[D]]), mean)
    assert subspace_cosine(first, second) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(InvalidInputError, match="8 and 16 entries"):
        subspace_cosine(LinearProjection(np.eye(8)[:D], np.zeros(8)), first)


def test_decisions_are_compared_at_the_willingness_to_pay_both_swept() -> None:
    def swept(lambdas: list[float], choice: list[list[int]]) -> tuple[list[Point], Outcomes]:
        zeros = np.zeros((len(lambdas), 4))
        return [Point(lam, 0.0, 0.0) for lam in lambdas], Outcomes(zeros, zeros, np.array(choice))

    mine = swept([0.1, 1.0, math.inf], [[0, 0, 1, 1], [0, 1, 1, 1], [2, 2, 2, 2]])
    theirs = swept([0.1, 0.3, math.inf], [[0, 0, 1, 2], [5, 5, 5, 5], [2, 2, 2, 2]])
    found = decisions_differing(mine, theirs)
    assert found == {"points_compared": 2, "decisions_differing_pct": pytest.approx(12.5)}
    no_choices = ([Point(0.1, 0.0, 0.0)], Outcomes(np.zeros((1, 4)), np.zeros((1, 4))))
    with pytest.raises(InvalidInputError, match="no choices"):
        decisions_differing(mine, no_choices)


def _data(domains_lead: bool, seed: int = 0) -> _Data:
    """Three domains. Model 0 answers domain a, model 1 domain b, the dear model 2 all. With
    ``domains_lead`` the domains differ along the directions of most variance, as RouterBench's
    benchmarks do; otherwise along directions of little variance, which PCA leaves out and the
    tag-enhanced projection keeps."""
    rng = np.random.default_rng(seed)
    n = 360
    domain = np.arange(n) % 3
    vectors = 0.01 * rng.normal(size=(n, WIDTH))
    spread = np.array([2.0, 1.8, 1.6, 1.4])
    vectors[:, :D] += rng.normal(size=(n, D)) * (0.3 if domains_lead else spread)
    centres = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    axes = [0, 1] if domains_lead else [8, 9]
    vectors[:, axes] += (4.0 if domains_lead else 1.5) * centres[domain]
    quality = np.column_stack([domain == 0, domain == 1, np.full(n, True)]).astype(np.float64)
    quality[:, 2] *= 0.9
    cost = np.tile([1e-4, 1e-4, 1e-2], (n, 1))
    dataset = RoutingDataset(
        prompts=[f"query {i}" for i in range(n)],
        models=list(MODELS),
        quality=quality,
        cost_usd=cost,
        prompt_tokens=np.full(n, 50.0),
        output_tokens=np.full((n, 3), 100.0),
        latency_s=None,
        labels=[f"domain {d}" for d in domain],
        split=["train" if i < 270 else "test" for i in range(n)],
        ids=[str(i) for i in range(n)],
    )
    split = np.array(dataset.split)
    return _Data(
        dataset=dataset,
        vectors=vectors,
        output_tokens=np.full((n, 3), 100.0),
        train=split == "train",
        test=split == "test",
        servers=servers_for(MODELS),
        embedder=HashEmbedder(WIDTH),  # stands in for the encoder: labels tag, no text is embedded
        reference=MODELS[2],
    )


def _frontier(data: _Data) -> dict[str, Any]:
    config = RouterConfig(models=tuple(ModelConfig(m, 1.0, 1.0) for m in MODELS), dim=D, tau_s=30.0)
    settings = EvalSettings(
        lambdas=(1e-4, 1e-3, 1e-2, 1e-1, math.inf),
        refine_rounds=0,
        resamples=0,
        router=config,
        progress=False,
    )
    return frontier_experiment(data, settings, lambda _label, _done, _total: None)


@pytest.mark.parametrize("tau", ["no_time_constraint", "time_constraint"])
def test_pca_routes_as_mixllm_when_the_domains_lead_the_variance(tau: str) -> None:
    data = _data(domains_lead=True)
    train = data.vectors[data.train]
    labels = np.arange(len(data.dataset))[data.train] % 3
    tag = TagProjection.fit(train, labels, d=D)
    assert subspace_cosine(tag, PcaProjection.fit(train, d=D)) > 0.9999
    section = _frontier(data)[tau]
    found = section["variants"][NO_TAGS]
    assert found["subspace_cosine"] > 0.9999
    assert found["points_compared"] == 5
    assert found["decisions_differing_pct"] == 0.0
    routers = section["routers"]
    assert routers[NO_TAGS]["aiq"] == routers["mixllm"]["aiq"]


def test_pca_routes_otherwise_when_the_domains_lie_along_little_variance() -> None:
    frontier = _frontier(_data(domains_lead=False))
    section = frontier["no_time_constraint"]
    found = section["variants"][NO_TAGS]
    assert found["subspace_cosine"] < 0.5
    assert found["decisions_differing_pct"] > 10.0
    # PCA drops the directions that tell the domains apart, and with them the cheap answers.
    routers = section["routers"]
    assert routers["mixllm"]["aiq"] > routers[NO_TAGS]["aiq"] + 1.0
    printed = format_table(
        {"frontier": frontier, "reference_model": MODELS[2], "data": {"models": list(MODELS)}}
    )
    share = found["decisions_differing_pct"]
    assert f"{NO_TAGS} sends {share:.2f}% of the decisions elsewhere than mixllm" in printed
    assert "the tags change nothing" not in printed


def test_the_report_says_which_ablation_routes_as_mixllm_and_why() -> None:
    frontier = _frontier(_data(domains_lead=True))
    no_tau = frontier["no_time_constraint"]["variants"]
    assert no_tau[NO_BETA]["latency_penalty_off"] is True
    assert no_tau[NO_BETA]["decisions_differing_pct"] == 0.0
    under_tau = frontier["time_constraint"]["variants"]
    assert under_tau[NO_BETA]["latency_penalty_off"] is False
    printed = format_table(
        {"frontier": frontier, "reference_model": MODELS[2], "data": {"models": list(MODELS)}}
    )
    no_beta = (
        f"{NO_BETA} routes every query as mixllm at each of the 5 λ both swept: without the "
        "time constraint the latency penalty β weighs is nil."
    )
    assert printed.count(no_beta) == 1
    assert printed.count(f"{NO_TAGS} routes every query as mixllm at each of the 5 λ") == 2
    assert printed.count("so on this data the tags change nothing") == 2
