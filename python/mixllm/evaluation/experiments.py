"""The MixLLM paper's experiments on a RouterBench-shaped dataset.

:func:`run_evaluation` embeds every prompt once (cached on disk, :mod:`.vectors`), builds every
router from the train split, and runs the experiments named in ``settings.experiments``:

* ``frontier``: every router over a sweep of willingness to pay on the test stream, without and
  with the time constraint τ; AIQ and the points nearest the paper's headline.
* ``continual``: offline:online = 80:20, 50:50, 30:70 and 1:99 of the train split; the Router
  is fitted on the offline part, then serves the online part and the test split as one stream
  with no feedback, refined feedback or binary feedback (the paper's simulated user); scored
  on test.
* ``new-models``: the Router starts without two models and gets them halfway through the test
  stream; their share of traffic before and after.
* ``out-of-domain``: per benchmark, train without it and test on it, without and with online
  learning, against the router trained on every benchmark.

The streams are simulated (:mod:`.simulator`); the online experiments drive the real
`mixllm.Router` (``route`` at arrival, ``feedback`` with quality and latency at completion).
Queries arrive shuffled, or in the data's order (``settings.arrivals``).
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, cast, get_args

import numpy as np
from numpy.typing import NDArray

from mixllm._core import InvalidInputError, Policy
from mixllm.config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_TOKENS_PER_S,
    DEFAULT_TTFT_S,
    TUNED_KNOBS,
    EmbedderConfig,
    ModelConfig,
    RouterConfig,
)
from mixllm.data import RoutingDataset
from mixllm.encoders.embedding import Embedder, Truncation
from mixllm.errors import ConfigError
from mixllm.evaluation import baselines as bl
from mixllm.evaluation.ablations import decisions_differing, subspace_cosine
from mixllm.evaluation.bootstrap import Outcomes, compare, paired_differences, resample_counts
from mixllm.evaluation.metrics import Point, aiq, cost_to_reach, quality_at_cost, shortfall
from mixllm.evaluation.simulator import ServerProfile, SimulationResult, Stream, StreamConfig
from mixllm.evaluation.simulator import simulate as run_stream
from mixllm.evaluation.unobserved import unobserved_count, with_unobserved_filled
from mixllm.evaluation.vectors import embed_cached
from mixllm.progress import Progress, ProgressLine
from mixllm.routing.catalog import ROUTERBENCH_MODELS
from mixllm.routing.fitting import MIN_FIT_QUERIES
from mixllm.routing.router import Router
from mixllm.understanding.projection import LinearProjection, PcaProjection

__all__ = ["EXPERIMENTS", "EvalSettings", "best_single_model", "run_evaluation"]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
EXPERIMENTS = ("frontier", "continual", "new-models", "out-of-domain")
NO_CONSTRAINT_TAU_S = 1e9  # the policy's τ when there is no time constraint: no penalty
HEADLINE = (97.25, 24.18)  # the paper's headline under the time constraint (quality %, cost %)
QUALITY_TARGET = 97.25
# Offline:online shares of train in the continual experiment: the paper's three, and one with
# almost nothing offline. On RouterBench's subset the router stops improving at a few dozen
# offline queries, so only the last leaves online learning something to learn
# (docs/evaluation.md, "Continual training").
CONTINUAL_SPLITS = ((80, 20), (50, 50), (30, 70), (1, 99))


def check_continual_splits(splits: Sequence[tuple[int, int]]) -> None:
    """Refuses offline:online percentages that do not add up to 100, leave nothing offline
    to fit, or repeat a pair, naming the first such pair."""
    for i, (offline, online) in enumerate(splits):
        if offline < 1 or online < 0 or offline + online != 100:
            raise InvalidInputError(
                f"{offline}:{online} must be percentages adding up to 100, with at least 1 offline"
            )
        if (offline, online) in splits[:i]:
            raise InvalidInputError(f"{offline}:{online} is given twice")


ADDED_MODELS = ("zero-one-ai/Yi-34B-Chat", "mistralai/mixtral-8x7b-chat")
# mixllm's ablations in the frontier: without the latency penalty, and PCA for the
# tag-enhanced projection.
NO_BETA = "mixllm β=0"
NO_TAGS = "mixllm no tags (PCA)"

# The order the queries arrive in: shuffled with the run's seed, as a service's mixed traffic
# would come (the paper split the whole benchmark 80/20, not file by file); or the
# data's, where RouterBench's files list one benchmark after another, so that the test stream is
# three blocks and every queue sees one benchmark's answers at a time.
ArrivalOrder = Literal["data", "shuffled"]
ARRIVAL_ORDERS: tuple[str, ...] = get_args(ArrivalOrder)
# Mixed into the seed of the arrival order, so that it is not the same draw as the continual
# experiment's offline/online split, which uses the seed alone.
_ARRIVALS_SEED_KEY = 1


@dataclass(frozen=True)
class EvalSettings:
    """What to run. ``tau_s`` is the time constraint of the constrained runs."""

    tau_s: float = 30.0
    queries_per_interval: int = 100
    interval_s: float = 10.0
    experiments: tuple[str, ...] = EXPERIMENTS
    lambdas: tuple[float, ...] = (*tuple(float(v) for v in np.logspace(-5, 1, 31)), math.inf)
    experiment_lambdas: tuple[float, ...] = tuple(float(v) for v in np.logspace(-4, 0, 9))
    refine_rounds: int = 3
    seed: int = 0
    # The encoder, when ``router`` does not say: as a deployed Router runs it (float32) unless
    # the int8 copy is asked for, for a faster run.
    quantized: bool = False
    # The model every point's quality and cost are a percentage of: by default the best single
    # model on the train split (`best_single_model`).
    reference: str | None = None
    threads: int = 2
    # How prompts are cut to the encoder's window (see `mixllm.Embedder`), overriding
    # ``router``'s embedder settings when set; every router in the run gets the same vectors.
    max_tokens: int | None = None
    truncation: Truncation | None = None
    # The configuration evaluated as "mixllm" (its knobs, embedder and tagger, and the prices
    # and speeds of the models it lists; the data's other models come from the catalog).
    # None: the defaults with RouterBench's catalog. τ is always the run's own.
    router: RouterConfig | None = None
    # Evaluate on a validation split instead: the train rows alone, a stratified quarter of
    # them as "test" (`mixllm.validation_split`, with ``seed``). The real test rows are not read.
    validation: bool = False
    # Resamples of the test queries behind the intervals of each frontier comparison with a
    # baseline and of the continual experiment's differences between feedback modes
    # (`mixllm.evaluation.bootstrap`); 0: none.
    resamples: int = 1000
    # The continual experiment's offline:online shares of train, in percent.
    continual_splits: tuple[tuple[int, int], ...] = CONTINUAL_SPLITS
    arrivals: ArrivalOrder = "shuffled"
    progress: bool = True

    def stream(self, tau_s: float | None) -> StreamConfig:
        return StreamConfig(self.queries_per_interval, self.interval_s, tau_s)

    def embedder(self) -> EmbedderConfig:
        """The encoder every router of the run shares."""
        if self.router is not None:
            base = self.router.embedder
        else:
            base = EmbedderConfig(quantized=self.quantized)
        overrides: dict[str, Any] = {"intra_op_threads": self.threads, "cache_size": 0}
        if self.max_tokens is not None:
            overrides["max_tokens"] = self.max_tokens
        if self.truncation is not None:
            overrides["truncation"] = self.truncation
        return replace(base, **overrides)


class _Vectors:
    """Stands in for the Embedder inside a Router: returns the run's precomputed vectors."""

    def __init__(self, texts: Sequence[str], vectors: F64, fallback: Embedder) -> None:
        self._rows = {text: i for i, text in enumerate(texts)}
        self._vectors = vectors.astype(np.float32)
        self._fallback = fallback  # for other texts, e.g. the zero-shot tagger's prototypes
        self.dim = vectors.shape[1]

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        items = list(texts)
        if all(t in self._rows for t in items):
            return self._vectors[[self._rows[t] for t in items]]
        return self._fallback.embed(items)


def servers_for(models: Sequence[str], base: RouterConfig | None = None) -> list[ServerProfile]:
    """The speeds each model's simulated server runs at: the catalog's (docs/model-catalog.md)
    for a model it profiles, else those ``base`` (the evaluated configuration) gives where it
    lists the model, which are what its router believes, else placeholder ones
    (`assumed_speeds`). A configured model whose speeds are not given has the placeholders."""
    configured = {m.name: m for m in base.models} if base is not None else {}
    known = {spec.name: spec for spec in ROUTERBENCH_MODELS}
    out = []
    for name in models:
        given = known.get(name) or configured.get(name)
        if given is None:
            out.append(
                ServerProfile(name, DEFAULT_TTFT_S, DEFAULT_TOKENS_PER_S, DEFAULT_CONCURRENCY)
            )
        else:
            out.append(ServerProfile(name, given.ttft_s, given.tokens_per_s, given.concurrency))
    return out


def assumed_speeds(models: Sequence[str], base: RouterConfig | None = None) -> list[str]:
    """The models `servers_for` runs at the placeholder speeds: the catalog does not profile
    them and ``base`` gives none other (a configuration that leaves a model's speeds out gives it
    the placeholders), so what the time constraint does to them is made up."""
    placeholder = (DEFAULT_TTFT_S, DEFAULT_TOKENS_PER_S, DEFAULT_CONCURRENCY)
    speeds = {s.name: (s.ttft_s, s.tokens_per_s, s.concurrency) for s in servers_for(models, base)}
    return [name for name in models if speeds[name] == placeholder]


def router_config(
    models: Sequence[str],
    *,
    tau_s: float | None = None,
    beta: float | None = None,
    base: RouterConfig | None = None,
    learned: Mapping[str, ModelConfig] | None = None,
) -> RouterConfig:
    """A pool of ``models``: the knobs of ``base`` (default: the defaults), ``tau_s`` and
    ``beta`` when given, and each model's prices and speeds from ``base`` where it lists the
    model, else prices from ``learned`` (learned from the data's logged costs, as ``mixllm
    train`` without a configuration learns them) with the catalog's speeds where it knows the
    model, else the catalog's prices and speeds, else placeholder ones."""
    configured = {m.name: m for m in base.models} if base is not None else {}
    known = {spec.name: spec for spec in ROUTERBENCH_MODELS}
    configs = []
    for name in models:
        spec = known.get(name)
        if name in configured:
            configs.append(configured[name])
        elif learned is not None and name in learned:
            priced = learned[name]
            if spec is not None:
                priced = replace(
                    priced,
                    ttft_s=spec.ttft_s,
                    tokens_per_s=spec.tokens_per_s,
                    concurrency=spec.concurrency,
                )
            configs.append(priced)
        elif spec is None:
            configs.append(
                ModelConfig(
                    name, 1.0, 1.0, DEFAULT_TTFT_S, DEFAULT_TOKENS_PER_S, DEFAULT_CONCURRENCY
                )
            )
        else:
            configs.append(spec.model_config())
    start = base if base is not None else RouterConfig(models=tuple(configs))
    return replace(
        start,
        models=tuple(configs),
        tau_s=start.tau_s if tau_s is None else tau_s,
        beta=start.beta if beta is None else beta,
    )


# -- sweeps ----------------------------------------------------------------------------------


def _point(result: SimulationResult, lam: float, ref_q: float, ref_c: float) -> Point:
    return _scored_point(result, slice(None), lam, (ref_q, ref_c))


def sweep(
    router: bl.SweepRouter,
    stream: Stream,
    lambdas: Sequence[float],
    reference: tuple[float, float],
    *,
    refine_rounds: int = 0,
    gap_pct: float = 1.0,
) -> tuple[list[Point], Outcomes]:
    """The router's points over ``lambdas`` (one point for a fixed router), and what every
    query got at each of them (in the same order). With ``refine_rounds``, λ is bisected
    (geometrically) between neighbours whose quality or cost differ by more than ``gap_pct``
    points, to trace the frontier where it moves."""
    ref_q, ref_c = reference
    if not router.sweeps:
        result = router.run(stream, math.inf)
        return [_point(result, math.nan, ref_q, ref_c)], Outcomes.stack([result])
    results = {lam: router.run(stream, lam) for lam in lambdas}
    points = {lam: _point(result, lam, ref_q, ref_c) for lam, result in results.items()}
    for _ in range(refine_rounds):
        finite = sorted(lam for lam in points if math.isfinite(lam))
        new = [
            math.sqrt(a * b)
            for a, b in itertools.pairwise(finite)
            if abs(points[a].quality_pct - points[b].quality_pct) > gap_pct
            or abs(points[a].cost_pct - points[b].cost_pct) > gap_pct
        ]
        if not new:
            break
        for lam in new[:24]:
            results[lam] = router.run(stream, lam)
            points[lam] = _point(results[lam], lam, ref_q, ref_c)
    order = sorted(points)
    return [points[lam] for lam in order], Outcomes.stack([results[lam] for lam in order])


def _summary(points: Sequence[Point], c_range: tuple[float, float]) -> dict[str, Any]:
    pairs = [(p.cost_pct, p.quality_pct) for p in points]
    return {
        "aiq": aiq(pairs, *c_range),
        "cost_for_97.25": cost_to_reach(points, QUALITY_TARGET),
        "quality_at_30": quality_at_cost(points, 30.0),
        "max_quality": max(p.quality_pct for p in points),
        "violations_min": min(p.violations for p in points),
        "points": [p.to_dict() for p in points],
    }


# -- building routers ------------------------------------------------------------------------


@dataclass
class _Data:
    dataset: RoutingDataset
    vectors: F64
    output_tokens: F64
    train: NDArray[np.bool_]
    test: NDArray[np.bool_]
    servers: list[ServerProfile]
    embedder: Embedder = field(repr=False)
    reference: str = ""
    # Each model's prices learned from the train split's logged costs, for models the
    # evaluated configuration does not price.
    learned: dict[str, ModelConfig] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return self.dataset.models


def _fit_policy(
    contexts: F64, dataset: RoutingDataset, rows: NDArray[np.bool_], config: RouterConfig
) -> Policy:
    """Every model's arm fitted on ``rows`` (as Router.fit does)."""
    policy = config.new_policy(contexts.shape[1])
    for model in config.models:
        k = dataset.models.index(model.name)
        tokens = dataset.output_tokens[rows, k] if dataset.output_tokens is not None else None
        policy.fit(model.name, contexts[rows], dataset.quality[rows, k], tokens)
    return policy


def _fit_router(data: _Data, rows: NDArray[np.bool_], config: RouterConfig) -> Router:
    """The real Router, fitted on ``rows`` with the run's precomputed vectors."""
    embedder = cast(Embedder, _Vectors(data.dataset.prompts, data.vectors, data.embedder))
    router = Router(config, embedder=embedder)
    router.fit(data.dataset.select(np.flatnonzero(rows)))
    return router


def _stream(data: _Data, rows: NDArray[np.bool_] | I64, config: StreamConfig) -> Stream:
    ds = data.dataset
    return Stream.build(
        ds.quality[rows], ds.cost_usd[rows], data.output_tokens[rows], data.servers, config
    )


def _policy_routers(
    data: _Data, tau_s: float | None, settings: EvalSettings
) -> tuple[list[Any], list[Any], dict[str, dict[str, Any]]]:
    """The routers built on a Policy, whose τ (the decision's and the stream's) is the run's:
    mixllm and its variants, and the rivals (MetaLLM-style LinUCB on raw embeddings); and per
    variant, what decides whether it can route otherwise than mixllm (`.ablations`): whether
    the latency penalty is off, how far PCA's subspace is from the tag-enhanced projection's."""
    ds, train, test = data.dataset, data.train, data.test
    models = data.models
    policy_tau = tau_s if tau_s is not None else NO_CONSTRAINT_TAU_S
    stream_config = settings.stream(tau_s)
    v_test = data.vectors[test]
    prompt_tokens = ds.prompt_tokens[test]
    out_test = data.output_tokens[test]
    columns = list(range(len(models)))
    routers: list[Any] = []

    def policy_router(name: str, policy: Policy, contexts: F64) -> bl.PolicyRouter:
        return bl.PolicyRouter(
            name, policy, contexts, prompt_tokens, out_test, columns, data.servers,
            stream_config, feedback="refined",
        )  # fmt: skip

    config = router_config(models, tau_s=policy_tau, base=settings.router, learned=data.learned)
    mix = _fit_router(data, train, config)
    # The variants run with the knobs mixllm's fit chose by cross-validation.
    tuned = {knob: getattr(mix.config, knob) for knob in TUNED_KNOBS}
    config = replace(config, **tuned)
    projection = cast(LinearProjection, mix.projection)
    routers.append(policy_router("mixllm", mix.policy, projection.context(v_test)))
    no_beta = router_config(
        models, tau_s=policy_tau, beta=0.0, base=settings.router, learned=data.learned
    )
    no_beta = replace(no_beta, **tuned)
    ctx_all = projection.context(data.vectors)
    routers.append(policy_router(NO_BETA, _fit_policy(ctx_all, ds, train, no_beta), ctx_all[test]))
    pca = PcaProjection.fit(data.vectors[train], d=config.dim)
    ctx_pca = pca.context(data.vectors)
    routers.append(policy_router(NO_TAGS, _fit_policy(ctx_pca, ds, train, config), ctx_pca[test]))
    facts: dict[str, dict[str, Any]] = {
        NO_BETA: {"latency_penalty_off": tau_s is None},
        NO_TAGS: {"subspace_cosine": subspace_cosine(projection, pca)},
    }
    raw = np.column_stack([data.vectors, np.ones(len(ds))])
    linucb = router_config(models, tau_s=NO_CONSTRAINT_TAU_S, beta=0.0, learned=data.learned)
    rivals = [
        policy_router(
            f"LinUCB raw {data.vectors.shape[1]}-d", _fit_policy(raw, ds, train, linucb), raw[test]
        )
    ]
    return routers, rivals, facts


def _fixed_routers(data: _Data, settings: EvalSettings) -> list[Any]:
    """The routers whose choices do not depend on τ (built once for both frontiers): the
    oracle, KNN, MLP, random and each single model."""
    ds, train, test = data.dataset, data.train, data.test
    models = data.models
    q_train, c_train = ds.quality[train], ds.cost_usd[train]
    v_train, v_test = data.vectors[train], data.vectors[test]
    c_hat = bl.ridge_predict(v_train, c_train, v_test, alpha=1.0)
    routers: list[Any] = []
    q_test, cost_test = ds.quality[test], ds.cost_usd[test]
    routers.append(bl.ScoreRouter("oracle", q_test, cost_test, data.servers))
    k = _choose_k(v_train, q_train, c_train)
    routers.append(
        bl.ScoreRouter(f"KNN (k={k})", bl.knn_quality(v_train, q_train, v_test, k), c_hat,
                       data.servers)
    )  # fmt: skip
    try:
        mlp = bl.mlp_quality(v_train, q_train, v_test, seed=settings.seed)
        routers.append(bl.ScoreRouter("MLP", mlp, c_hat, data.servers))
    except ImportError:
        print(
            "MLP router skipped: needs scikit-learn (pip install 'mixllm[eval]')", file=sys.stderr
        )
    rng = np.random.default_rng(settings.seed)
    n_test = int(test.sum())
    routers.append(
        bl.FixedRouter("random", rng.integers(0, len(models), n_test).astype(np.int64),
                       data.servers)
    )  # fmt: skip
    for k_model, name in enumerate(models):
        routers.append(bl.FixedRouter(name, np.full(n_test, k_model, dtype=np.int64), data.servers))
    return routers


def _choose_k(vectors: F64, quality: F64, cost: F64) -> int:
    """KNN's k chosen on the train split alone (leave-one-out area over a λ sweep), among the
    candidates a small train split can hold (leave-one-out leaves ``len - 1`` neighbours)."""
    candidates = sorted({min(k, len(vectors) - 1) for k in (5, 10, 20, 40, 80)})
    best_k, best = candidates[0], -math.inf
    for k in candidates:
        q_hat = bl.knn_quality(vectors, quality, vectors, k, exclude_self=True)
        c_hat = bl.knn_quality(vectors, cost, vectors, k, exclude_self=True)
        rows = np.arange(len(vectors))
        total = 0.0
        for lam in np.logspace(-4, 0, 9):
            choice = np.argmax(q_hat - c_hat / lam, axis=1)
            total += quality[rows, choice].sum()
        if total > best:
            best_k, best = k, total
    return best_k


def _reference_per_query(data: _Data, rows: NDArray[np.bool_] | I64) -> tuple[F64, F64]:
    """The reference model's quality and cost on each of ``rows``."""
    g = data.models.index(data.reference)
    return data.dataset.quality[rows, g], data.dataset.cost_usd[rows, g]


def _reference(data: _Data, rows: NDArray[np.bool_] | I64) -> tuple[float, float]:
    """The reference model's total quality and cost over ``rows``: the 100% of every point."""
    quality, cost = _reference_per_query(data, rows)
    return float(quality.sum()), float(cost.sum())


def _single_model_range(data: _Data, rows: NDArray[np.bool_]) -> tuple[float, float]:
    ref_c = _reference(data, rows)[1]
    costs = 100.0 * data.dataset.cost_usd[rows].sum(axis=0) / ref_c
    return float(costs.min()), float(costs.max())


def frontier_experiment(data: _Data, settings: EvalSettings, progress: Progress) -> dict[str, Any]:
    """Every router's frontier on the test stream, without and with the time constraint."""
    out: dict[str, Any] = {}
    reference = _reference(data, data.test)
    c_range = _single_model_range(data, data.test)
    g = data.models.index(data.reference)
    fixed = _fixed_routers(data, settings)
    for key, tau in (("no_time_constraint", None), ("time_constraint", settings.tau_s)):
        variants, rivals, facts = _policy_routers(data, tau, settings)
        routers = variants + rivals + fixed
        stream = _stream(data, data.test, settings.stream(tau))
        queued = bl.FixedRouter(
            f"{data.reference} queued", np.full(len(stream), g, dtype=np.int64), data.servers
        ).run(stream, math.inf)
        section: dict[str, Any] = {
            "tau_s": tau,
            "reference": {
                "model": data.reference,
                "quality": reference[0],
                "cost_usd": reference[1],
                "queued_quality": float(queued.quality.sum()),
                "queued_violations": queued.violations,
                "queued_quality_pct_of_offline": 100.0 * float(queued.quality.sum()) / reference[0],
            },
            "aiq_cost_range_pct": list(c_range),
            "routers": {},
        }
        outcomes: dict[str, Outcomes] = {}
        swept: dict[str, tuple[list[Point], Outcomes]] = {}
        for i, router in enumerate(routers):
            progress(f"frontier {key}: {router.name}", i, len(routers))
            points, outcomes[router.name] = sweep(
                router, stream, settings.lambdas, reference, refine_rounds=settings.refine_rounds
            )
            swept[router.name] = (points, outcomes[router.name])
            section["routers"][router.name] = _summary(points, c_range)
        progress(f"frontier {key}", len(routers), len(routers))
        # Each variant beside mixllm: how much of its routing differs, and why it may not.
        section["variants"] = {
            name: {**decisions_differing(swept["mixllm"], swept[name]), **found}
            for name, found in facts.items()
        }
        # Every router but mixllm's own variants and the oracle (an upper bound, not a rival).
        baselines = [r.name for r in fixed if r.name != "oracle"] + [r.name for r in rivals]
        shortfalls = _shortfalls(section["routers"], baselines, c_range[1])
        if settings.resamples:
            progress(f"frontier {key}: resampling", 0, 1)
            resampled = compare(
                outcomes["mixllm"],
                {name: outcomes[name] for name in baselines},
                _reference_per_query(data, data.test),
                shortfalls,
                c_range,
                resamples=settings.resamples,
                seed=settings.seed,
            )
            shortfalls = _with_intervals(shortfalls, resampled)
        section["mixllm_shortfall"] = shortfalls
        if tau is not None:
            pts = [Point(**_from_dict(p)) for p in section["routers"]["mixllm"]["points"]]
            nearest = min(
                pts, key=lambda p: math.hypot(p.quality_pct - HEADLINE[0], p.cost_pct - HEADLINE[1])
            )
            section["nearest_to_paper_headline"] = nearest.to_dict()
        out[key] = section
    return out


def _shortfalls(routers: dict[str, Any], baselines: Sequence[str], c_max: float) -> dict[str, Any]:
    """Where each baseline's frontier is above mixllm's, from mixllm's cheapest point up
    (`metrics.shortfall`), and each baseline's own cheapest point."""

    def pairs(name: str) -> list[tuple[float, float]]:
        return [(p["cost_pct"], p["quality_pct"]) for p in routers[name]["points"]]

    return {
        name: {
            **shortfall(pairs("mixllm"), pairs(name), c_max),
            "cheapest_pct": min(c for c, _ in pairs(name)),
        }
        for name in baselines
    }


def _with_intervals(
    shortfalls: dict[str, Any], resampled: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Each baseline's shortfall with its bootstrap (`bootstrap.compare`) folded in: the AIQ
    lead, its interval and the share of resamples at or above it beside the stretches, each
    stretch's gap interval in the stretch."""
    out = {}
    for name, found in shortfalls.items():
        extra = resampled[name]
        out[name] = {
            **found,
            **{key: value for key, value in extra.items() if key != "behind"},
            "behind": [
                {**stretch, **interval}
                for stretch, interval in zip(found["behind"], extra["behind"], strict=True)
            ],
        }
    return out


def _from_dict(point: dict[str, Any]) -> dict[str, Any]:
    data = dict(point)
    if data["willingness_to_pay"] == "inf":
        data["willingness_to_pay"] = math.inf
    return data


# -- online experiments with the real Router ---------------------------------------------------


class _RouterListener:
    """Drives a copy of a Router on the simulation's clock: ``route`` at arrival, ``feedback``
    at completion (refined or binary; without feedback the same fitted state is driven through
    :class:`bl.PolicyRouter`, since a Router request leaves its queue only through feedback)."""

    def __init__(
        self,
        router: Router,
        data: _Data,
        rows: I64,
        stream: Stream,
        columns: dict[str, int],
        willingness_to_pay: float,
        feedback: bl.FeedbackMode,
        on_query: Callable[[int, Router], None] | None = None,
    ) -> None:
        # Simulated seconds: the arrival being routed, or the completion being reported.
        self.now = 0.0
        self.router = _copy(router, clock=lambda: self.now)
        self.data = data
        self.rows = rows
        self.stream = stream
        self.columns = columns
        self.wtp = willingness_to_pay
        self.feedback = feedback
        self.on_query = on_query
        self.ids: dict[int, str] = {}
        self.config = StreamConfig(tau_s=stream.tau_s)

    def choose(self, query: int, now: float) -> int:
        self.now = now
        if self.on_query is not None:
            self.on_query(query, self.router)
        row = int(self.rows[query])
        decision = self.router.route(
            self.data.dataset.prompts[row],
            willingness_to_pay=self.wtp,
            prompt_tokens=float(self.data.dataset.prompt_tokens[row]),
        )
        self.ids[query] = decision.id
        return self.columns[decision.model]

    def finished(
        self, query: int, model: int, waiting_s: float, service_s: float, now: float
    ) -> None:
        self.now = now
        decision_id = self.ids.pop(query)
        tokens = float(self.data.output_tokens[int(self.rows[query]), model])
        quality = float(self.stream.quality[query, model])
        if self.feedback == "refined":
            self.router.feedback(
                decision_id, quality=quality, output_tokens=tokens, latency_s=service_s
            )
            return
        satisfied = (
            quality > self.config.satisfied_quality and waiting_s < self.config.satisfied_wait_s
        )
        self.router.feedback(
            decision_id, satisfied=satisfied, output_tokens=tokens, latency_s=service_s
        )


def _copy(router: Router, clock: Callable[[], float]) -> Router:
    """A Router with its own copy of ``router``'s state, on ``clock`` (simulated seconds).
    Its decisions do not expire: a configuration's feedback lifetime is meant for a service's
    clock, and a simulated wait longer than it would end the run."""
    return Router(
        replace(router.config, feedback_ttl_s=1e12),
        embedder=router.embedder,
        projection=router.projection,
        policy=Policy.from_bytes(router.policy.to_bytes()),
        clock=clock,
    )


def _online_run(
    data: _Data,
    router: Router,
    rows: I64,
    config: StreamConfig,
    willingness_to_pay: float,
    feedback: bl.FeedbackMode,
    on_query: Callable[[int, Router], None] | None = None,
) -> SimulationResult:
    """One pass of the rows through a copy of ``router``."""
    stream = _stream(data, rows, config)
    if feedback == "none":
        projection = cast(LinearProjection, router.projection)
        frozen = bl.PolicyRouter(
            "frozen", router.policy, projection.context(data.vectors[rows]),
            data.dataset.prompt_tokens[rows], data.output_tokens[rows],
            [data.models.index(m) for m in router.models], data.servers, config,
            feedback="none",
        )  # fmt: skip
        return frozen.run(stream, willingness_to_pay)
    columns = {name: k for k, name in enumerate(data.models)}
    listener = _RouterListener(
        router, data, rows, stream, columns, willingness_to_pay, feedback, on_query
    )
    return run_stream(stream, listener, data.servers)


def _scored_point(
    result: SimulationResult, part: slice, lam: float, reference: tuple[float, float]
) -> Point:
    return Point(
        lam,
        100.0 * float(result.quality[part].sum()) / reference[0],
        100.0 * float(result.cost[part].sum()) / reference[1],
        int(result.violated[part].sum()),
    )


def continual_experiment(data: _Data, settings: EvalSettings, progress: Progress) -> dict[str, Any]:
    """Offline:online splits of train; no / refined / binary feedback; scored on test, with
    the resampled differences between the modes (`bootstrap.paired_differences`)."""
    rng = np.random.default_rng(settings.seed)
    train_rows = rng.permutation(np.flatnonzero(data.train))
    test_rows = np.flatnonzero(data.test)
    reference = _reference(data, test_rows)
    c_range = _single_model_range(data, data.test)
    config = router_config(
        data.models, tau_s=settings.tau_s, base=settings.router, learned=data.learned
    )
    stream_config = settings.stream(settings.tau_s)
    per_query = _reference_per_query(data, test_rows)
    # One draw of the test queries for every split and mode: the differences are paired.
    counts = (
        resample_counts(len(test_rows), settings.resamples, settings.seed)
        if settings.resamples
        else None
    )
    out: dict[str, Any] = {}
    jobs = len(settings.continual_splits) * 3
    for s_i, (offline_pct, online_pct) in enumerate(settings.continual_splits):
        n_offline = max(MIN_FIT_QUERIES, round(len(train_rows) * offline_pct / 100))
        offline = np.zeros(len(data.dataset), dtype=np.bool_)
        offline[train_rows[:n_offline]] = True
        router = _fit_router(data, offline, config)
        rows = np.concatenate([train_rows[n_offline:], test_rows]).astype(np.int64)
        scored = slice(len(rows) - len(test_rows), len(rows))
        section: dict[str, Any] = {
            "offline_rows": n_offline,
            "online_rows": len(rows) - len(test_rows),
        }
        modes: tuple[bl.FeedbackMode, ...] = ("none", "refined", "binary")
        outcomes: dict[str, Outcomes] = {}
        for m_i, mode in enumerate(modes):
            progress(f"continual {offline_pct}:{online_pct} {mode}", 3 * s_i + m_i, jobs)
            results = [
                _online_run(data, router, rows, stream_config, lam, mode)
                for lam in settings.experiment_lambdas
            ]
            points = [
                _scored_point(result, scored, lam, reference)
                for result, lam in zip(results, settings.experiment_lambdas, strict=True)
            ]
            outcomes[mode] = Outcomes.stack(results, scored)
            summary = _summary(points, c_range)
            summary["mean_quality"] = float(np.mean([p.quality_pct for p in points]))
            summary["mean_cost"] = float(np.mean([p.cost_pct for p in points]))
            section[mode] = summary
        if counts is not None:
            section["differences"] = {
                f"{a} - {b}": paired_differences(
                    outcomes[a], outcomes[b], per_query, c_range, counts
                )
                for a, b in (("refined", "none"), ("binary", "none"), ("refined", "binary"))
            }
        out[f"{offline_pct}:{online_pct}"] = section
    progress("continual", jobs, jobs)
    return out


def new_models_experiment(
    data: _Data, settings: EvalSettings, progress: Progress, warm_examples: int = 25
) -> dict[str, Any]:
    """Start without two models, add them halfway through the test stream."""
    added = [m for m in ADDED_MODELS if m in data.models]
    if len(added) < 2:
        added = data.models[-2:]
    base_models = [m for m in data.models if m not in added]
    test_rows = np.flatnonzero(data.test).astype(np.int64)
    n = len(test_rows)
    half = n // 2
    stream_config = settings.stream(settings.tau_s)

    def pool(models: Sequence[str]) -> RouterConfig:
        return router_config(
            models, tau_s=settings.tau_s, base=settings.router, learned=data.learned
        )

    full = _fit_router(data, data.train, pool(data.models))
    base = _fit_router(data, data.train, pool(base_models))
    new_configs = pool(added).models
    rng = np.random.default_rng(settings.seed)
    warm_rows = rng.choice(np.flatnonzero(data.train), warm_examples, replace=False)
    added_columns = [data.models.index(m) for m in added]

    def adder(warm: bool) -> Callable[[int, Router], None]:
        def on_query(query: int, router: Router) -> None:
            if query != half:
                return
            for model in new_configs:
                router.add_model(model)
                if warm:
                    k = data.models.index(model.name)
                    projection = cast(LinearProjection, router.projection)
                    router.policy.fit(
                        model.name,
                        projection.context(data.vectors[warm_rows]),
                        data.dataset.quality[warm_rows, k],
                        data.output_tokens[warm_rows, k],
                    )

        return on_query

    variants: list[tuple[str, Router, Callable[[int, Router], None] | None]] = [
        ("all models from the start", full, None),
        ("never added", base, None),
        ("added halfway, cold start", base, adder(False)),
        (f"added halfway, warm start ({warm_examples} examples)", base, adder(True)),
    ]
    out: dict[str, Any] = {"added": added, "added_at_query": half, "variants": {}}
    lambdas = (1e-3, 1e-2, 1e-1)
    first, second = slice(0, half), slice(half, n)
    last_quarter = slice(n - n // 4, n)
    reference_second = _reference(data, test_rows[second])
    for v_i, (name, router, hook) in enumerate(variants):
        progress(f"new models: {name}", v_i, len(variants))
        per_lambda = []
        for lam in lambdas:
            result = _online_run(data, router, test_rows, stream_config, lam, "refined", hook)
            is_new = np.isin(result.choice, added_columns)
            point = _scored_point(result, slice(half, n), lam, reference_second)
            per_lambda.append(
                {
                    "willingness_to_pay": lam,
                    "share_first_half": float(is_new[first].mean()),
                    "share_second_half": float(is_new[second].mean()),
                    "share_last_quarter": float(is_new[last_quarter].mean()),
                    "second_half_quality_pct": point.quality_pct,
                    "second_half_cost_pct": point.cost_pct,
                    "second_half_violations": point.violations,
                }
            )
        out["variants"][name] = per_lambda
    progress("new models", len(variants), len(variants))
    return out


def out_of_domain_experiment(
    data: _Data, settings: EvalSettings, progress: Progress
) -> dict[str, Any]:
    """Per benchmark: trained without it vs with it, tested on it."""
    labels = np.array(data.dataset.labels or [""] * len(data.dataset))
    benches = sorted(set(labels[data.test]))
    stream_config = settings.stream(settings.tau_s)
    config = router_config(
        data.models, tau_s=settings.tau_s, base=settings.router, learned=data.learned
    )
    in_domain = _fit_router(data, data.train, config)
    out: dict[str, Any] = {}
    for b_i, bench in enumerate(benches):
        progress(f"out of domain: {bench}", b_i, len(benches))
        if len(benches) < 2:
            break
        test_rows = np.flatnonzero(data.test & (labels == bench)).astype(np.int64)
        train_mask = data.train & (labels != bench)
        ood = _fit_router(data, train_mask, config)
        reference = _reference(data, test_rows)
        mask = np.zeros(len(labels), dtype=np.bool_)
        mask[test_rows] = True
        c_range = _single_model_range(data, mask)
        section: dict[str, Any] = {}
        variants: list[tuple[str, Router, bl.FeedbackMode]] = [
            ("in-domain", in_domain, "none"),
            ("out-of-domain", ood, "none"),
            ("out-of-domain + online", ood, "refined"),
        ]
        for name, router, mode in variants:
            points = [
                _scored_point(
                    _online_run(data, router, test_rows, stream_config, lam, mode),
                    slice(0, len(test_rows)), lam, reference,
                )
                for lam in settings.experiment_lambdas
            ]  # fmt: skip
            summary = _summary(points, c_range)
            summary["mean_quality"] = float(np.mean([p.quality_pct for p in points]))
            section[name] = summary
        base = section["in-domain"]["mean_quality"]
        section["drop_pct"] = 100.0 * (base - section["out-of-domain"]["mean_quality"]) / base
        section["drop_with_online_pct"] = (
            100.0 * (base - section["out-of-domain + online"]["mean_quality"]) / base
        )
        out[bench] = section
    progress("out of domain", len(benches), len(benches))
    return out


def best_single_model(dataset: RoutingDataset) -> str:
    """The model with the highest mean quality over its observed rows (the cheaper on a tie):
    the reference of an evaluation that names none, chosen on the rows given (the train
    split), never on test."""
    quality = np.where(np.isnan(dataset.quality), 0.0, dataset.quality)
    seen = (~np.isnan(dataset.quality)).sum(axis=0)
    mean_quality = quality.sum(axis=0) / np.maximum(seen, 1)
    costs = np.where(np.isnan(dataset.cost_usd), 0.0, dataset.cost_usd).sum(axis=0)
    mean_cost = costs / np.maximum((~np.isnan(dataset.cost_usd)).sum(axis=0), 1)
    best = min(range(len(dataset.models)), key=lambda k: (-mean_quality[k], mean_cost[k]))
    return dataset.models[best]


def _learned_pool(train: RoutingDataset) -> dict[str, ModelConfig]:
    """The models whose prices the train rows' logged costs teach, at those prices."""
    from mixllm.routing.pricing import learn_prices

    return {
        name: ModelConfig(name, price.price_in, price.price_out)
        for name, price in learn_prices(train).items()
    }


def check_arrivals(arrivals: str) -> None:
    """Refuses an arrival order that is not one of `ARRIVAL_ORDERS`, naming it."""
    if arrivals not in ARRIVAL_ORDERS:
        raise InvalidInputError(
            f"arrivals must be one of {', '.join(ARRIVAL_ORDERS)}, got {arrivals!r}"
        )


def in_arrival_order(
    dataset: RoutingDataset, vectors: F64, arrivals: ArrivalOrder, seed: int
) -> tuple[RoutingDataset, F64]:
    """The queries (rows of ``dataset``, with their ``vectors``) in the order they arrive:
    the data's, or shuffled with ``seed``. Each keeps its split."""
    check_arrivals(arrivals)
    if arrivals == "data":
        return dataset, vectors
    order = np.random.default_rng([seed, _ARRIVALS_SEED_KEY]).permutation(len(dataset))
    return dataset.select(order), vectors[order]


def _check_settings(dataset: RoutingDataset, settings: EvalSettings) -> None:
    """Refuses settings that cannot run on ``dataset``, before anything is embedded."""
    unknown = [e for e in settings.experiments if e not in EXPERIMENTS]
    if unknown:
        raise InvalidInputError(f"unknown experiment(s) {unknown}; known: {', '.join(EXPERIMENTS)}")
    if settings.resamples < 0:
        raise InvalidInputError(f"resamples must be 0 or more, got {settings.resamples}")
    check_continual_splits(settings.continual_splits)
    check_arrivals(settings.arrivals)
    if settings.reference is not None and settings.reference not in dataset.models:
        raise InvalidInputError(
            f"the reference model {settings.reference!r} is not in the data, whose models are "
            f"{', '.join(dataset.models)}"
        )
    if settings.router is not None:
        missing = [m.name for m in settings.router.models if m.name not in dataset.models]
        if missing:
            raise ConfigError(
                f"the configuration lists model(s) the data has no outcomes for: "
                f"{', '.join(missing)}; the data has {', '.join(dataset.models)}"
            )


def _run_description(
    dataset: RoutingDataset, settings: EvalSettings, data: _Data
) -> dict[str, Any]:
    """The run's settings as used, its data and its reference model (the results' head)."""
    return {
        "settings": {
            # The encoder settings as used (`embedder`), not the run's defaults they override.
            **{
                k: v
                for k, v in asdict(settings).items()
                if k not in ("lambdas", "router", "quantized", "max_tokens", "truncation")
            },
            "lambdas": [v if math.isfinite(v) else "inf" for v in settings.lambdas],
            "router": settings.router.to_dict() if settings.router is not None else None,
            "embedder": asdict(settings.embedder()),
        },
        "data": {
            "queries": len(dataset),
            "train": int(data.train.sum()),
            "test": int(data.test.sum()),
            "models": dataset.models,
            "labels": sorted(set(dataset.labels)) if dataset.labels else [],
        },
        "reference_model": data.reference,
    }


def run_evaluation(dataset: RoutingDataset, settings: EvalSettings) -> dict[str, Any]:
    """Runs the experiments; returns everything `report.write_report` needs."""
    from mixllm.data import TEST_SPLIT_SEED, split_train_test, validation_split

    started = time.perf_counter()
    _check_settings(dataset, settings)
    if settings.validation:
        dataset = validation_split(dataset, seed=settings.seed)
    elif dataset.split is None:
        dataset = split_train_test(dataset, 0.2, seed=TEST_SPLIT_SEED)
    unobserved = unobserved_count(dataset)
    if unobserved:
        print(
            f"{unobserved} outcome(s) not recorded in the data: scored as quality 0 at the "
            "model's mean recorded cost",
            file=sys.stderr,
        )
        dataset = with_unobserved_filled(dataset)
    progress = ProgressLine(settings.progress)
    embedder = settings.embedder().build()
    vectors = embed_cached(
        dataset.prompts, embedder, progress=lambda d, t: progress("embedding prompts", d, t)
    )
    # After embedding, so that the vectors cached in the data's order are reused.
    dataset, vectors = in_arrival_order(dataset, vectors, settings.arrivals, settings.seed)
    split = np.array(dataset.split)
    train = split == "train"
    reference = settings.reference or best_single_model(dataset.select(train))
    tokens = (
        dataset.output_tokens
        if dataset.output_tokens is not None
        else np.full(dataset.quality.shape, np.nan)
    )
    data = _Data(
        dataset=dataset,
        vectors=vectors,
        output_tokens=tokens,
        train=train,
        test=split == "test",
        servers=servers_for(dataset.models, settings.router),
        embedder=embedder,
        reference=reference,
        learned=_learned_pool(dataset.select(train)),
    )
    results = _run_description(dataset, settings, data)
    results["data"]["unrecorded_outcomes"] = unobserved
    results["data"]["assumed_speeds"] = assumed_speeds(dataset.models, settings.router)
    runners = {
        "frontier": frontier_experiment,
        "continual": continual_experiment,
        "new-models": new_models_experiment,
        "out-of-domain": out_of_domain_experiment,
    }
    for name in settings.experiments:
        results[name] = runners[name](data, settings, progress)
    results["runtime_s"] = time.perf_counter() - started
    return results
