"""Which quality predictor (and which routing context) routes best on the RouterBench subset.

    python studies/quality_predictors.py [--data DIR] [--folds 5] [--quick]
                                         [--truncation head|tail|both|question] [--max-tokens N]
                                         [--vectors FILE.npy] [--only A|B] [--test A|B]
                                         [--online] [--needed-signal]

Prints one Markdown table per way of embedding the prompts: the Embedder's default keeps each
prompt's first 256 tokens ("head"); "tail" keeps the last 256 (tokenizer truncation from the
left; vectors cached apart from the default ones). On this subset every ARC-Challenge and
Winogrande prompt starts with the same few-shot examples, longer than 256 tokens, so with "head"
each of those benchmarks collapses to two distinct vectors and no predictor can tell its
questions apart; the "val AUC in benchmark" column (mean over benchmark x model of the AUC of
q̂ for the 0/1 quality, per fold) measures how much per-query signal a predictor has.

Every predictor is chosen on the train split alone: stratified K-fold cross-validation inside
train (the projection, the heads and the tagger-free parts all refitted per fold), scored on
the out-of-fold predictions of all 2,205 train queries. The finalists are then fitted on the
whole train split and scored once on the 945 test queries.

Routing is the static rule of the evaluation's score routers (argmax q̂ - ĉ/λ over a λ sweep,
no queue, no exploration bonus, no online learning), scored with the evaluation's own code
(`experiments.sweep`, `ScoreRouter`, `metrics.aiq`): quality and cost in % of GPT-4 on the
same queries, AIQ over the single-model cost range. The linear heads are the Policy's
(ridge on the context, residual over the prior quality, A = ridge·I + XᵀX; a numpy replica
checked against `Policy.decide` at start-up); the cost estimate is the Policy's too (prompt
tokens x input price + predicted output tokens x output price, the length head a ridge on
log(1 + tokens) over the same context with its own ridge, `length_ridge`, 1 unless a row says
otherwise). Nonlinear heads reuse the default context's cost.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from mixllm._core import Policy
from mixllm.data import RoutingDataset, load_routerbench_csv
from mixllm.encoders.embedding import Embedder
from mixllm.evaluation import baselines as bl
from mixllm.evaluation.experiments import router_config, servers_for, sweep
from mixllm.evaluation.metrics import aiq, cost_to_reach, quality_at_cost
from mixllm.evaluation.simulator import Stream, StreamConfig
from mixllm.evaluation.vectors import embed_cached
from mixllm.understanding.projection import TagProjection
from mixllm.understanding.tagging import DomainLabels, Tagger

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "routerbench_subset_routerdc"
)
LAMBDAS = (*tuple(float(v) for v in np.logspace(-5, 1, 31)), math.inf)
TARGET = 97.25
FINALISTS = (
    "ridge, tag 64-d (default)",
    "ridge 10, tag 64-d",
    "ridge 10, tag 64-d ⊗ tagger domain",
    "logistic C=1, tag 64-d + tagger",
    "random forest, raw 384-d",
)

# RouterBench's strongest model: the 100% of this benchmark's figures.
REFERENCE_MODEL = "gpt-4-1106-preview"


@dataclass
class Data:
    dataset: RoutingDataset
    vectors: F64
    domain: I64  # benchmark label id per row
    tag_probs: F64  # zero-shot tagger probabilities (n, 20)
    train: I64
    test: I64
    price_in: F64
    price_out: F64
    fee: F64

    @property
    def quality(self) -> F64:
        return self.dataset.quality

    @property
    def log_length(self) -> F64:
        assert self.dataset.output_tokens is not None
        return np.log1p(self.dataset.output_tokens)


Window = Literal["head", "tail", "question"]


def without_shared_template(dataset: RoutingDataset) -> list[str]:
    """Each prompt without the few-shot template its benchmark's train prompts all start with
    (their common prefix, cut back to its last blank line so no example is cut in half). Only
    train prompts decide the template; a prompt that does not start with it is kept whole."""
    assert dataset.labels is not None and dataset.split is not None
    prompts = list(dataset.prompts)
    for label in sorted(set(dataset.labels)):
        members = [i for i, lab in enumerate(dataset.labels) if lab == label]
        train_prompts = [prompts[i] for i in members if dataset.split[i] == "train"]
        # Character by character is what is wanted here: the prompts are text, not paths.
        shared = os.path.commonprefix(train_prompts)  # noqa: RUF071
        template = shared[: shared.rfind("\n\n") + 2] if "\n\n" in shared else ""
        for i in members:
            if template and prompts[i].startswith(template):
                prompts[i] = prompts[i][len(template) :]
    return prompts


def load(
    directory: Path, window: Window = "head", max_tokens: int = 256, vectors: Path | None = None
) -> Data:
    """The dataset, its vectors (the int8 encoder's through the given window, or ``vectors``:
    an (n, dim) .npy in the dataset's row order, from any encoder), and the tagger's view."""
    dataset = load_routerbench_csv(directory)
    embedder = Embedder(
        quantized=True,
        intra_op_threads=2,
        cache_size=0,
        truncation="head" if window == "question" else window,
        max_tokens=max_tokens,
    )
    if vectors is not None:
        given = np.load(vectors, allow_pickle=False)
        if given.ndim != 2 or len(given) != len(dataset):
            raise SystemExit(f"{vectors}: shape {given.shape}, expected ({len(dataset)}, dim)")
        vectors_ = np.asarray(given, dtype=np.float64)
    else:
        texts = without_shared_template(dataset) if window == "question" else dataset.prompts
        vectors_ = embed_cached(texts, embedder)
    _, domain = DomainLabels.from_labels(dataset.labels or [""] * len(dataset))
    # The tagger's domain prototypes are MiniLM vectors: on another encoder's vectors its
    # probabilities come from the int8 MiniLM's own vectors (through the run's window).
    tagged = vectors_ if vectors is None else embed_cached(dataset.prompts, embedder)
    tag_probs = Tagger(embedder).tag_vectors(tagged).probabilities
    split = np.array(dataset.split)
    models = router_config(dataset.models, tau_s=1e9).models
    return Data(
        dataset,
        vectors_,
        np.asarray(domain, dtype=np.int64),
        np.asarray(tag_probs, dtype=np.float64),
        np.flatnonzero(split == "train"),
        np.flatnonzero(split == "test"),
        np.array([m.price_in for m in models]) / 1e6,
        np.array([m.price_out for m in models]) / 1e6,
        np.array([m.fee for m in models]),
    )


# -- heads -------------------------------------------------------------------------------------


def ridge_heads(x_fit: F64, y: F64, x_out: F64, ridge: float, prior: F64 | float) -> F64:
    """The Policy's head for every column of ``y``: prior + x·θ with
    θ = (ridge·I + XᵀX)⁻¹Xᵀ(y - prior)."""
    a = x_fit.T @ x_fit + ridge * np.eye(x_fit.shape[1])
    theta = np.linalg.solve(a, x_fit.T @ (y - prior))
    out: F64 = x_out @ theta + prior
    return out


def cost_hat(data: Data, log_length_hat: F64, rows: I64) -> F64:
    tokens = np.expm1(np.clip(log_length_hat, 0.0, 13.8))
    prompt = data.dataset.prompt_tokens[rows][:, None]
    out: F64 = prompt * data.price_in + tokens * data.price_out + data.fee
    return out


PRIOR_LOG_LENGTH = math.log1p(256.0)  # ModelConfig.prior_output_tokens


# -- contexts: fitted on the fit rows, evaluated on any rows ---------------------------------

ContextFn = Callable[[Data, I64], Callable[[I64], F64]]


def tag_context(d: int) -> ContextFn:
    def build(data: Data, fit: I64) -> Callable[[I64], F64]:
        projection = TagProjection.fit(data.vectors[fit], data.domain[fit], d=d)
        return lambda rows: projection.context(data.vectors[rows])

    return build


def raw_context(data: Data, fit: I64) -> Callable[[I64], F64]:
    return lambda rows: np.column_stack([data.vectors[rows], np.ones(len(rows))])


def domain_only(data: Data, fit: I64) -> Callable[[I64], F64]:
    """No text at all: each model's mean quality per benchmark (the per-benchmark policy)."""
    return lambda rows: np.eye(int(data.domain.max()) + 1)[data.domain[rows]]


def with_domain(base: ContextFn, source: str, interact: bool = False) -> ContextFn:
    """Appends the domain (one-hot of the label, or the tagger's probabilities); with
    ``interact`` the context is x ⊗ domain (a separate linear head per domain)."""

    def build(data: Data, fit: I64) -> Callable[[I64], F64]:
        inner = base(data, fit)

        def context(rows: I64) -> F64:
            x = inner(rows)
            if source == "label":
                dom = np.eye(int(data.domain.max()) + 1)[data.domain[rows]]
            else:
                dom = data.tag_probs[rows]
            if interact:
                return np.einsum("ni,nk->nik", x, dom).reshape(len(rows), -1)
            return np.column_stack([x, dom])

        return context

    return build


# -- predictors: (fit rows, output rows) -> (q̂, ĉ) -------------------------------------------

Predictor = Callable[[Data, I64, I64], tuple[F64, F64]]


def linear(
    context: ContextFn, ridge: float = 1.0, prior: str = "0.5", length_ridge: float = 1.0
) -> Predictor:
    def predict(data: Data, fit: I64, out: I64) -> tuple[F64, F64]:
        ctx = context(data, fit)
        x_fit, x_out = ctx(fit), ctx(out)
        q_prior: F64 | float = 0.5 if prior == "0.5" else data.quality[fit].mean(axis=0)
        q = ridge_heads(x_fit, data.quality[fit], x_out, ridge, q_prior)
        ll = ridge_heads(x_fit, data.log_length[fit], x_out, length_ridge, PRIOR_LOG_LENGTH)
        return q, cost_hat(data, ll, out)

    return predict


def default_cost(data: Data, fit: I64, out: I64) -> F64:
    ctx = tag_context(64)(data, fit)
    ll = ridge_heads(ctx(fit), data.log_length[fit], ctx(out), 1.0, PRIOR_LOG_LENGTH)
    return cost_hat(data, ll, out)


def features(data: Data, fit: I64, kind: str) -> Callable[[I64], F64]:
    if kind == "raw":
        return lambda rows: data.vectors[rows]
    if kind == "raw+dom":
        return lambda rows: np.column_stack([data.vectors[rows], data.tag_probs[rows]])
    ctx = tag_context(64)(data, fit)
    return lambda rows: np.column_stack([ctx(rows), data.tag_probs[rows]])


def sklearn_per_model(make: Callable[[], object], kind: str, proba: bool) -> Predictor:
    def predict(data: Data, fit: I64, out: I64) -> tuple[F64, F64]:
        feats = features(data, fit, kind)
        x_fit, x_out = feats(fit), feats(out)
        q = np.empty((len(out), data.quality.shape[1]))
        for k in range(q.shape[1]):
            y = data.quality[fit, k]
            if proba and len(np.unique(y)) < 2:
                q[:, k] = y[0]
                continue
            model = make()
            model.fit(x_fit, y)  # type: ignore[attr-defined]
            q[:, k] = (
                model.predict_proba(x_out)[:, 1]  # type: ignore[attr-defined]
                if proba
                else model.predict(x_out)  # type: ignore[attr-defined]
            )
        return q, default_cost(data, fit, out)

    return predict


def per_benchmark_mean(data: Data, fit: I64, out: I64) -> F64:
    """Each model's mean quality on each benchmark's fit rows, for the out rows."""
    q = np.zeros((len(out), data.quality.shape[1]))
    for label in np.unique(data.domain[out]):
        q[data.domain[out] == label] = data.quality[fit[data.domain[fit] == label]].mean(axis=0)
    return q


def tfidf(analyzer: str, ridge: float) -> Predictor:
    """Words instead of sentence vectors: per benchmark, a ridge head per model on TF-IDF
    features of the prompt without its shared template (word 1-2-grams or character 3-5-grams
    within words), over the benchmark's mean."""

    def predict(data: Data, fit: I64, out: I64) -> tuple[F64, F64]:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import Ridge

        texts = without_shared_template(data.dataset)
        q = per_benchmark_mean(data, fit, out)
        for label in np.unique(data.domain[out]):
            f, inside = fit[data.domain[fit] == label], data.domain[out] == label
            vectorizer = (
                TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
                if analyzer == "word"
                else TfidfVectorizer(
                    analyzer="char_wb", ngram_range=(3, 5), min_df=3, sublinear_tf=True
                )
            )
            x_fit = vectorizer.fit_transform([texts[i] for i in f])
            x_out = vectorizer.transform([texts[i] for i in out[inside]])
            y = data.quality[f] - data.quality[f].mean(axis=0)
            q[inside] += Ridge(alpha=ridge).fit(x_fit, y).predict(x_out)
        return q, default_cost(data, fit, out)

    return predict


def shared_difficulty(ridge: float, rank: int) -> Predictor:
    """One "difficulty" for all models: per benchmark, ridge heads for every model on the raw
    vectors, their fitted values cut to their top ``rank`` directions across models (reduced-
    rank regression), over the benchmark's mean. Pools the models' noisy 0/1 outcomes."""

    def predict(data: Data, fit: I64, out: I64) -> tuple[F64, F64]:
        q = per_benchmark_mean(data, fit, out)
        for label in np.unique(data.domain[out]):
            f, inside = fit[data.domain[fit] == label], data.domain[out] == label
            centre = data.vectors[f].mean(axis=0)
            x_fit, x_out = data.vectors[f] - centre, data.vectors[out[inside]] - centre
            y = data.quality[f] - data.quality[f].mean(axis=0)
            a = x_fit.T @ x_fit + ridge * np.eye(x_fit.shape[1])
            theta = np.linalg.solve(a, x_fit.T @ y)
            _, _, directions = np.linalg.svd(x_fit @ theta, full_matrices=False)
            keep = directions[:rank].T @ directions[:rank]
            q[inside] += x_out @ theta @ keep
        return q, default_cost(data, fit, out)

    return predict


def knn(k: int) -> Predictor:
    def predict(data: Data, fit: I64, out: I64) -> tuple[F64, F64]:
        q = bl.knn_quality(data.vectors[fit], data.quality[fit], data.vectors[out], k)
        return q, default_cost(data, fit, out)

    return predict


def blend(first: Predictor, second: Predictor, weight: float = 0.5) -> Predictor:
    """``weight`` of ``first``'s quality plus the rest of ``second``'s; ``first``'s cost."""

    def predict(data: Data, fit: I64, out: I64) -> tuple[F64, F64]:
        q_first, c_hat = first(data, fit, out)
        q_second, _ = second(data, fit, out)
        return weight * q_first + (1.0 - weight) * q_second, c_hat

    return predict


# -- scoring -----------------------------------------------------------------------------------


def frontier(data: Data, rows: I64, q_hat: F64, c_hat: F64) -> dict[str, float]:
    ds = data.dataset
    stream = Stream.build(
        ds.quality[rows], ds.cost_usd[rows], np.zeros_like(ds.quality[rows]),
        servers_for(ds.models), StreamConfig(tau_s=None),
    )  # fmt: skip
    g = ds.models.index(REFERENCE_MODEL)
    reference = (float(ds.quality[rows, g].sum()), float(ds.cost_usd[rows, g].sum()))
    router = bl.ScoreRouter("candidate", q_hat, c_hat, servers_for(ds.models))
    points, _ = sweep(router, stream, LAMBDAS, reference, refine_rounds=3)
    costs = 100.0 * ds.cost_usd[rows].sum(axis=0) / reference[1]
    return {
        "aiq": aiq([(p.cost_pct, p.quality_pct) for p in points], costs.min(), costs.max()),
        "cost_at_target": cost_to_reach(points, TARGET),
        "quality_at_30": quality_at_cost(points, 30.0),
    }


def cross_validated(
    data: Data, predictor: Predictor, folds: int, seed: int = 0
) -> dict[str, float]:
    """Out-of-fold predictions for every train row (folds stratified by benchmark)."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(data.train), dtype=np.int64)
    for label in np.unique(data.domain[data.train]):
        members = np.flatnonzero(data.domain[data.train] == label)
        fold_of[rng.permutation(members)] = np.arange(len(members)) % folds
    n_models = data.quality.shape[1]
    q_hat = np.empty((len(data.train), n_models))
    c_hat = np.empty((len(data.train), n_models))
    auc = []
    for f in range(folds):
        fit, out = data.train[fold_of != f], data.train[fold_of == f]
        q, c = predictor(data, fit, out)
        q_hat[fold_of == f], c_hat[fold_of == f] = q, c
        # Per fold: pooled out-of-fold scores would mix folds' offsets (a constant predictor
        # scores below 0.5 pooled, since a fold's held-out mean moves against its fit mean).
        auc.append(within_benchmark_auc(data, out, q))
    scores = frontier(data, data.train, q_hat, c_hat)
    scores["auc"] = float(np.mean(auc))
    return scores


def within_benchmark_auc(data: Data, rows: I64, q_hat: F64) -> float:
    """Mean over (benchmark, model) of the AUC of q̂ for that model's 0/1 quality on that
    benchmark's queries: 0.5 = no per-query signal beyond the benchmark's mean."""
    from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]

    values = []
    for label in np.unique(data.domain[rows]):
        inside = data.domain[rows] == label
        for k in range(q_hat.shape[1]):
            y = data.quality[rows[inside], k]
            if 0 < y.sum() < len(y):
                values.append(roc_auc_score(y, q_hat[inside, k]))
    return float(np.mean(values))


def on_test(data: Data, predictor: Predictor) -> dict[str, float]:
    q, c = predictor(data, data.train, data.test)
    scores = frontier(data, data.test, q, c)
    scores["auc"] = within_benchmark_auc(data, data.test, q)
    return scores


def check_replica(data: Data) -> None:
    """The numpy heads give the Policy's predictions (same context, same prior, same ridges;
    the two ridges differ so that a head using the other's would be caught)."""
    ctx = tag_context(64)(data, data.train)
    x_fit, x_out = ctx(data.train), ctx(data.test[:5])
    ridge, length_ridge = 10.0, 1.0
    policy = Policy(
        x_fit.shape[1], alpha=0.0, beta=0.0, ridge=ridge, length_ridge=length_ridge, tau_s=1e9
    )
    config = router_config(data.dataset.models, tau_s=1e9)
    for k, model in enumerate(config.models):
        policy.add_model(model.name, **model.policy_kwargs())
        tokens = None if data.dataset.output_tokens is None else data.dataset.output_tokens
        assert tokens is not None
        policy.fit(model.name, x_fit, data.quality[data.train, k], tokens[data.train, k])
    q = ridge_heads(x_fit, data.quality[data.train], x_out, ridge, 0.5)
    ll = ridge_heads(x_fit, data.log_length[data.train], x_out, length_ridge, PRIOR_LOG_LENGTH)
    c = cost_hat(data, ll, data.test[:5])
    for i, row in enumerate(data.test[:5]):
        decision = policy.decide(
            x_out[i], prompt_tokens=float(data.dataset.prompt_tokens[row]), willingness_to_pay=1.0
        )
        assert np.allclose(decision.quality, q[i], atol=1e-8), (decision.quality, q[i])
        assert np.allclose(decision.cost, c[i], rtol=1e-6, atol=1e-12), (decision.cost, c[i])


def predictors(quick: bool) -> dict[str, Predictor]:
    from sklearn.ensemble import (  # type: ignore[import-untyped]
        HistGradientBoostingClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

    out: dict[str, Predictor] = {
        "ridge, tag 64-d (default)": linear(tag_context(64)),
    }
    for d in (96, 128, 192):
        out[f"ridge, tag {d}-d"] = linear(tag_context(d))
    out["ridge, raw 384-d"] = linear(raw_context)
    for r in (0.1, 0.3, 3.0, 10.0, 30.0, 100.0):
        out[f"ridge {r:g}, tag 64-d"] = linear(tag_context(64), ridge=r)
    for r in (10.0, 30.0):
        # The length head shrunk as hard as quality (one shared ridge, as before length_ridge).
        out[f"ridge {r:g}, tag 64-d, length ridge {r:g}"] = linear(
            tag_context(64), ridge=r, length_ridge=r
        )
    for d in (128, 384):
        out[f"ridge 10, tag {d}-d"] = linear(tag_context(d), ridge=10.0)
    out["ridge, tag 64-d, prior = train mean"] = linear(tag_context(64), prior="mean")
    for source in ("label", "tagger"):
        out[f"ridge, tag 64-d + {source} domain"] = linear(with_domain(tag_context(64), source))
        out[f"ridge, tag 64-d ⊗ {source} domain"] = linear(
            with_domain(tag_context(64), source, interact=True)
        )
    out["ridge, raw 384-d + tagger domain"] = linear(with_domain(raw_context, "tagger"))
    for r in (3.0, 10.0, 30.0):
        out[f"ridge {r:g}, tag 64-d ⊗ tagger domain"] = linear(
            with_domain(tag_context(64), "tagger", interact=True), ridge=r
        )
    out["per-benchmark mean only (label one-hot)"] = linear(
        domain_only, ridge=1e-6, length_ridge=1e-6
    )
    for k in (10, 40, 80, 160):
        out[f"kNN k={k}, raw"] = knn(k)
    ridge10 = linear(tag_context(64), ridge=10.0)
    for k in (40, 80):
        out[f"blend: ½ ridge 10 tag 64-d + ½ kNN k={k}"] = blend(ridge10, knn(k))
    for c in (0.1, 1.0):
        out[f"logistic C={c:g}, tag 64-d + tagger"] = sklearn_per_model(
            lambda c=c: LogisticRegression(C=c, max_iter=1000), "tag+dom", proba=True
        )
    out["random forest, tag 64-d + tagger"] = sklearn_per_model(
        lambda: RandomForestRegressor(
            n_estimators=100 if quick else 300, min_samples_leaf=5, max_features="sqrt",
            n_jobs=2, random_state=0,
        ),
        "tag+dom", proba=False,
    )  # fmt: skip
    out["random forest, raw 384-d"] = sklearn_per_model(
        lambda: RandomForestRegressor(
            n_estimators=100 if quick else 300, min_samples_leaf=5, max_features="sqrt",
            n_jobs=2, random_state=0,
        ),
        "raw", proba=False,
    )  # fmt: skip
    out["gradient boosting, tag 64-d + tagger"] = sklearn_per_model(
        lambda: HistGradientBoostingClassifier(
            max_iter=100, learning_rate=0.05, max_leaf_nodes=15, l2_regularization=1.0,
            random_state=0,
        ),
        "tag+dom", proba=True,
    )  # fmt: skip
    for analyzer in ("word", "char"):
        for r in (3.0, 10.0):
            out[f"tf-idf {analyzer} ridge {r:g}, per benchmark"] = tfidf(analyzer, r)
    for rank in (1, 2):
        for r in (3.0, 10.0):
            out[f"shared difficulty rank {rank}, ridge {r:g}, raw"] = shared_difficulty(r, rank)
    return out


def online(data: Data) -> None:
    """The harness's own Policy routers on test (online learning from refined feedback, no time
    constraint), as `mixllm eval` runs its `mixllm` and `LinUCB raw 384-d` rows."""
    from dataclasses import replace

    from mixllm.evaluation import experiments as ex

    ds = data.dataset
    assert ds.output_tokens is not None
    train = np.zeros(len(ds), dtype=np.bool_)
    train[data.train] = True
    test = data.test
    servers = servers_for(ds.models)
    config = StreamConfig(tau_s=None)
    stream = Stream.build(
        ds.quality[test], ds.cost_usd[test], ds.output_tokens[test], servers, config
    )
    g = ds.models.index(REFERENCE_MODEL)
    reference = (float(ds.quality[test, g].sum()), float(ds.cost_usd[test, g].sum()))
    costs = 100.0 * ds.cost_usd[test].sum(axis=0) / reference[1]
    tag = TagProjection.fit(data.vectors[data.train], data.domain[data.train], d=64)
    ctx = tag.context(data.vectors)
    raw = np.column_stack([data.vectors, np.ones(len(ds))])
    print("\n| Policy router, online | test AIQ | test cost % @97.25 | test Q % @30 |")
    print("|---|---|---|---|")
    variants = (
        ("mixllm (tag 64-d, ridge 1)", ctx, 1.0, 0.1),
        ("mixllm (tag 64-d, ridge 10)", ctx, 10.0, 0.1),
        ("LinUCB raw 384-d", raw, 1.0, 0.0),
    )
    for name, contexts, ridge, beta in variants:
        router_cfg = replace(router_config(ds.models, tau_s=1e9, beta=beta), ridge=ridge)
        policy = ex._fit_policy(contexts, ds, train, router_cfg)
        router = bl.PolicyRouter(
            name, policy, contexts[test], ds.prompt_tokens[test], ds.output_tokens[test],
            list(range(len(ds.models))), servers, config, feedback="refined",
        )  # fmt: skip
        points, _ = sweep(router, stream, LAMBDAS, reference, refine_rounds=3)
        pairs = [(p.cost_pct, p.quality_pct) for p in points]
        print(
            f"| {name} | {aiq(pairs, costs.min(), costs.max()):.2f} "
            f"| {cost_to_reach(points, TARGET):.2f} | {quality_at_cost(points, 30.0):.2f} |"
        )


NOISE_LEVELS = (math.inf, 4.0, 3.0, 2.5, 2.0, 1.5, 1.0)


def needed_signal(data: Data, seeds: int = 5) -> None:
    """How much per-query signal the 30% target needs, on test: a calibrated predictor that
    knows each benchmark's mean quality per model (from train) and sees each query's true 0/1
    quality through Gaussian noise of scale sigma, independently per model. Its q̂ is the
    posterior P(quality = 1 | benchmark, noisy view); sigma = inf is the per-benchmark mean
    alone. The within-benchmark AUC it reaches is the yardstick for the AUC real predictors
    reach."""
    mean_q, c_hat = linear(domain_only, ridge=1e-6, length_ridge=1e-6)(data, data.train, data.test)
    prior = np.clip(mean_q, 1e-3, 1.0 - 1e-3)
    truth = data.quality[data.test]
    print(
        "\n| noise sigma | test AUC in benchmark | test AIQ | test cost % @97.25 | test Q % @30 "
        "| noise draws at ≤ 30% cost |"
    )
    print("|---|---|---|---|---|---|")
    for sigma in NOISE_LEVELS:
        runs = []
        # sigma = inf ignores the noise: one run says it all.
        for seed in range(seeds if math.isfinite(sigma) else 1):
            view = truth + np.random.default_rng(seed).normal(size=truth.shape) * sigma
            # log P(view | 0) - log P(view | 1) for N(quality, σ²) noise
            log_ratio = (1.0 - 2.0 * view) / (2.0 * sigma**2) if math.isfinite(sigma) else 0.0
            q_hat = 1.0 / (1.0 + (1.0 - prior) / prior * np.exp(log_ratio))
            scores = frontier(data, data.test, q_hat, c_hat)
            scores["auc"] = within_benchmark_auc(data, data.test, q_hat)
            runs.append(scores)
        mean = {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}
        reached = sum(r["cost_at_target"] <= 30.0 for r in runs)
        print(
            f"| {sigma:g} | {mean['auc']:.3f} | {mean['aiq']:.2f} | {mean['cost_at_target']:.2f} "
            f"| {mean['quality_at_30']:.2f} | {reached} of {len(runs)} |",
            flush=True,
        )


def _cells(scores: dict[str, float]) -> list[str]:
    keys = ("aiq", "cost_at_target", "quality_at_30")
    return [*(f"{scores[k]:.2f}" for k in keys), f"{scores['auc']:.3f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer trees")
    parser.add_argument(
        "--truncation", choices=("head", "tail", "both", "question"), default="both",
        help="embed each prompt's first 256 tokens (the Embedder's default), its last, both, "
        "or the first tokens after its benchmark's shared few-shot template",
    )  # fmt: skip
    parser.add_argument(
        "--vectors", type=Path,
        help="an (n, dim) .npy of another encoder's vectors, in the dataset's row order",
    )  # fmt: skip
    parser.add_argument(
        "--needed-signal", action="store_true",
        help="only the per-query signal the 30%% target needs (a noisy-oracle sweep on test)",
    )  # fmt: skip
    parser.add_argument(
        "--max-tokens", type=int, default=256, help="tokens embedded per prompt (256; up to 512)"
    )
    parser.add_argument("--only", default="", help="substrings of predictor names, '|'-separated")
    parser.add_argument(
        "--test", default="|".join(FINALISTS), help="predictors scored on test, '|'-separated"
    )
    parser.add_argument(
        "--online", action="store_true", help="also the harness's Policy routers on test"
    )
    args = parser.parse_args()
    chosen = predictors(args.quick)
    if args.only:
        keys = args.only.split("|")
        chosen = {n: p for n, p in chosen.items() if any(k in n for k in keys)}
    finalists = set(args.test.split("|")) if args.test else set()
    if args.needed_signal:
        needed_signal(load(args.data))
        return
    # Given vectors are the same whatever the window: "both" would print one table twice.
    both = args.truncation == "both" and args.vectors is None
    windows: tuple[Window, ...] = (
        ("head", "tail") if both else ("head" if args.truncation == "both" else args.truncation,)
    )
    for window in windows:
        which = {
            "head": f"first {args.max_tokens} tokens",
            "tail": f"last {args.max_tokens} tokens",
            "question": f"first {args.max_tokens} tokens after the shared few-shot template",
        }[window]
        source = f"{args.vectors}" if args.vectors else f"prompts embedded from their {which}"
        print(f"\n### {source} ({window})\n")
        data = load(args.data, window, args.max_tokens, args.vectors)
        table(data, chosen, finalists, args.folds)
        if args.online:
            online(data)


def table(data: Data, chosen: dict[str, Predictor], finalists: set[str], folds: int) -> None:
    check_replica(data)
    print(
        "| predictor | val AIQ | val cost % @97.25 | val Q % @30 | val AUC in benchmark "
        "| test AIQ | test cost % @97.25 | test Q % @30 | test AUC | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, predictor in chosen.items():
        started = time.perf_counter()
        val = cross_validated(data, predictor, folds)
        cells = _cells(val)
        cells += _cells(on_test(data, predictor)) if name in finalists else [""] * 4
        print(f"| {name} | {' | '.join(cells)} | {time.perf_counter() - started:.0f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
