"""Which context features and head ridges route best, measured by 5-fold cross-validation on a
routing file's train split alone (the test split is never read).

    MIXLLM_CACHE=DIR python studies/quality_features.py DATA [--only NAME,...] [--scales 1,3]
        [--ridges 3,30,...] [--seeds N] [--json OUT]
    MIXLLM_CACHE=DIR python studies/quality_features.py DATA --selection [--seeds N]

``--ridges`` adds head ridges to the one `Router.fit` chose; ``--seeds`` averages over that many
fold assignments. ``--selection`` compares the rules that choose the quality ridge (held-out
squared error, held-out routing AUC) by nested cross-validation instead (`selection_rules`).

DATA is a routing JSON Lines file or a folder of RouterBench CSV files
(``<bench>_{train,test}.csv``). The router is set up as ``mixllm train --data DATA`` sets it
up (no configuration: the data's models at learned prices, ridges cross-validated), which gives
the projection and the contexts [P(e - μ) normalised, 1]. Each variant appends features to
that context; the decision core stays the same linear LinUCB. For every variant and head ridge,
on each of five folds of the train rows: the features are learned on the other four folds (the
rows the heads learn from see out-of-fold values of them, never their own label), the heads
are fitted on those rows with `mixllm.Policy.fit`, and the held-out fold is routed at every λ
of a grid with `Policy.decide_batch`. Summed over the folds, the frontier gives the routing AUC
(as ``../shared/tools/reference_routers.py`` computes it: mean over cost % in [0, 100] of the
best quality % reached at that cost or less, % of the best single model on those rows) and the
held-out quality MSE of the heads.

Variants:
- ``plain``: the context alone (what mixllm fits).
- ``knn-ctx K`` / ``knn-raw K``: per model, the mean quality of the K most similar training
  queries (cosine on the context or on the encoder's vectors), a training row's own label left
  out; ``pooled-knn-raw K``: their mean over the models (one feature).
- ``pooled-ridge-raw``: the mean quality over the models, predicted by a ridge regression on
  the encoder's vectors (one feature: the query's difficulty, learned from every model's
  labels at once); ``rrr-raw R``: the R leading components of a ridge regression of all the
  models' qualities on the encoder's vectors (reduced rank).
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

import mixllm
from any_data import summary as frontier_summary
from mixllm.cli import _train_config
from mixllm.evaluation.vectors import embed_cached
from mixllm.routing.router import Router
from mixllm.routing.tuning import choose_ridge, choose_ridge_by_routing, fold_ids

F64 = NDArray[np.float64]
FOLDS = 5
LAMBDAS = (*(float(v) for v in np.logspace(-9, 6, 200)), float("inf"))

# A feature maker: (train contexts, train vectors, train quality (NaN unobserved), new
# contexts, new vectors) -> (features of the train rows, out of fold; features of the new rows).
Maker = Callable[[F64, F64, F64, F64, F64], tuple[F64, F64]]


def summary(points: list[tuple[float, float]]) -> dict[str, float]:
    """The AUC, max quality and cost for 100% of a frontier, as `any_data.summary` gives them."""
    whole = frontier_summary(points)
    return {
        k: whole[v]
        for k, v in (("auc", "auc_0_100"), ("maxq", "maxq"), ("cost_for_100", "cost_for_100"))
    }


def knn(space: str, k: int, pooled: bool = False) -> Maker:
    """Mean quality of the k nearest training queries, per model (or over the models)."""

    def make(ctx_tr: F64, vec_tr: F64, q_tr: F64, ctx_new: F64, vec_new: F64) -> tuple[F64, F64]:
        def unit(a: F64) -> F64:
            a = a[:, :-1] if space == "ctx" else a
            return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

        a_tr = unit(ctx_tr if space == "ctx" else vec_tr)
        a_new = unit(ctx_new if space == "ctx" else vec_new)
        filled = np.where(np.isnan(q_tr), np.nanmean(q_tr, axis=0), q_tr)
        target = filled.mean(axis=1, keepdims=True) if pooled else filled

        def mean_of_nearest(sims: F64) -> F64:
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            out: F64 = target[top].mean(axis=1)
            return out

        own = a_tr @ a_tr.T
        np.fill_diagonal(own, -np.inf)
        return mean_of_nearest(own), mean_of_nearest(a_new @ a_tr.T)

    return make


def _ridge_map(z: F64, y: F64, alpha: float) -> tuple[F64, F64, F64]:
    """Ridge of y (n, m) on z (n, D), centred: (mean of z, weights (D, m), mean of y)."""
    zm, ym = z.mean(axis=0), y.mean(axis=0)
    zc = z - zm
    weights = np.linalg.solve(zc.T @ zc + alpha * np.eye(z.shape[1]), zc.T @ (y - ym))
    return zm, weights, ym


def pooled_ridge(alpha: float, rank: int | None = None) -> Maker:
    """Mean quality over the models (rank None) or the ``rank`` leading components of every
    model's quality, by ridge regression on the encoder's vectors; out of fold on train."""

    def fit_apply(vec_a: F64, q_a: F64, vec_b: F64) -> F64:
        filled = np.where(np.isnan(q_a), np.nanmean(q_a, axis=0), q_a)
        y = filled.mean(axis=1, keepdims=True) if rank is None else filled
        zm, weights, ym = _ridge_map(vec_a, y, alpha)
        if rank is not None:
            fitted = (vec_a - zm) @ weights
            _, _, vt = np.linalg.svd(fitted - fitted.mean(axis=0), full_matrices=False)
            weights = weights @ vt[:rank].T
            ym = np.zeros(rank)
        out: F64 = (vec_b - zm) @ weights + ym
        return out

    def make(ctx_tr: F64, vec_tr: F64, q_tr: F64, ctx_new: F64, vec_new: F64) -> tuple[F64, F64]:
        inner = fold_ids(len(vec_tr), FOLDS, seed=1)
        width = 1 if rank is None else rank
        own = np.empty((len(vec_tr), width))
        for fold in range(FOLDS):
            held = inner == fold
            own[held] = fit_apply(vec_tr[~held], q_tr[~held], vec_tr[held])
        return own, fit_apply(vec_tr, q_tr, vec_new)

    return make


def cross_validated(
    config: Any, ctx: F64, vec: F64, ds: Any, maker: Maker | None, scale: float, seed: int = 0
) -> dict[str, float]:
    """Routing AUC and quality MSE of out-of-fold heads on the rows of ``ds``."""
    pool = [m for m in config.models if m.name in ds.models]
    columns = np.array([ds.models.index(m.name) for m in pool])
    q_obs = ds.quality[:, columns]
    quality = np.where(np.isnan(q_obs), np.nanmean(q_obs, axis=0), q_obs)
    c_obs = ds.cost_usd[:, columns]
    cost = np.where(np.isnan(c_obs), np.nanmean(c_obs, axis=0), c_obs)
    tokens = None if ds.output_tokens is None else ds.output_tokens[:, columns]
    priors = np.array([m.prior_quality for m in pool])
    assignment = fold_ids(len(ctx), FOLDS, seed=seed)
    fitted = []
    squared, count = 0.0, 0
    for fold in range(FOLDS):
        held = assignment == fold
        x_tr, x_held = ctx[~held], ctx[held]
        if maker is not None:
            f_tr, f_held = maker(ctx[~held], vec[~held], q_obs[~held], ctx[held], vec[held])
            centre = f_tr.mean(axis=0)
            x_tr = np.hstack([x_tr, scale * (f_tr - centre)])
            x_held = np.hstack([x_held, scale * (f_held - centre)])
        policy = config.with_models(tuple(pool)).new_policy(x_tr.shape[1])
        gram = x_tr.T @ x_tr + config.ridge * np.eye(x_tr.shape[1])
        for j, model in enumerate(pool):
            seen = ~np.isnan(q_obs[~held, j])
            lengths = None if tokens is None else tokens[~held][seen, j]
            policy.fit(model.name, x_tr[seen], q_obs[~held][seen, j], lengths)
            theta = np.linalg.solve(
                x_tr[seen].T @ x_tr[seen] + config.ridge * np.eye(x_tr.shape[1])
                if not seen.all()
                else gram,
                x_tr[seen].T @ (q_obs[~held][seen, j] - priors[j]),
            )
            observed = ~np.isnan(q_obs[held, j])
            residual = x_held[observed] @ theta + priors[j] - q_obs[held][observed, j]
            squared += float(np.sum(residual**2))
            count += int(observed.sum())
        fitted.append((np.flatnonzero(held), x_held, policy))
    best = int(np.argmax(quality.mean(axis=0)))
    ref_q, ref_c = quality[:, best].sum(), cost[:, best].sum()
    points = []
    for lam in LAMBDAS:
        total_q = total_c = 0.0
        for rows, x_held, policy in fitted:
            chosen = policy.decide_batch(
                x_held, prompt_tokens=ds.prompt_tokens[rows], willingness_to_pay=lam, now_s=0.0
            )
            total_q += float(quality[rows, chosen].sum())
            total_c += float(cost[rows, chosen].sum())
        points.append((100 * total_c / ref_c, 100 * total_q / ref_q))
    return {**summary(points), "mse": squared / count}


def selection_rules(config: Any, ctx: F64, ds: Any, seeds: int) -> dict[str, Any]:
    """Nested cross-validation of the rules that choose the quality ridge: on each outer fold
    of the train rows, each rule chooses on the other four folds (its own five inner folds),
    then heads with that ridge route the outer fold; the outer folds' frontier gives the AUC."""
    pool = [m for m in config.models if m.name in ds.models]
    columns = [ds.models.index(m.name) for m in pool]
    quality, cost = ds.quality[:, columns], ds.cost_usd[:, columns]
    tokens = None if ds.output_tokens is None else ds.output_tokens[:, columns]
    with_pool = config.with_models(tuple(pool))

    def new_policy(ridge: float) -> Any:
        return replace(with_pool, ridge=ridge).new_policy(ctx.shape[1])

    def by_mse(rows: NDArray[np.int64]) -> float:
        targets = [quality[rows, j] - m.prior_quality for j, m in enumerate(pool)]
        return choose_ridge("ridge", ctx[rows], targets).chosen

    def by_auc(pooled: bool) -> Callable[[NDArray[np.int64]], float]:
        def rule(rows: NDArray[np.int64]) -> float:
            return choose_ridge_by_routing(
                new_policy,
                [m.name for m in pool],
                ctx[rows],
                quality[rows],
                cost[rows],
                None if tokens is None else tokens[rows],
                ds.prompt_tokens[rows],
                pooled=pooled,
            ).chosen

        return rule

    rules = {
        "held-out quality MSE": by_mse,
        "routing AUC, mean of folds": by_auc(False),
        "routing AUC, folds pooled": by_auc(True),
    }
    out: dict[str, Any] = {}
    for name, rule in rules.items():
        aucs, chosen = [], []
        for seed in range(seeds):
            outer = fold_ids(len(ctx), FOLDS, seed=100 + seed)
            ridges = [rule(np.flatnonzero(outer != fold)) for fold in range(FOLDS)]
            chosen.append(ridges)
            # The outer folds routed with their own choice, as one held-out set.
            parts = []
            for fold, ridge in enumerate(ridges):
                rows = np.flatnonzero(outer != fold)
                held = np.flatnonzero(outer == fold)
                parts.append((held, _fitted(new_policy(ridge), pool, ctx, quality, tokens, rows)))
            aucs.append(_routed_auc(parts, ctx, quality, cost, ds.prompt_tokens))
        out[name] = {"auc": float(np.mean(aucs)), "aucs": aucs, "ridges": chosen}
        print(f"{name:30s} nested AUC {np.mean(aucs):7.3f} {np.round(aucs, 3)} ridges {chosen}")
    return out


def _fitted(
    policy: Any, pool: Any, ctx: F64, quality: F64, tokens: F64 | None, rows: NDArray[np.int64]
) -> Any:
    for j, model in enumerate(pool):
        seen = rows[~np.isnan(quality[rows, j])]
        policy.fit(
            model.name, ctx[seen], quality[seen, j], None if tokens is None else tokens[seen, j]
        )
    return policy


def _routed_auc(parts: Any, ctx: F64, quality: F64, cost: F64, prompt_tokens: F64) -> float:
    q = np.where(np.isnan(quality), np.nanmean(quality, axis=0), quality)
    c = np.where(np.isnan(cost), np.nanmean(cost, axis=0), cost)
    best = int(np.argmax(q.mean(axis=0)))
    held_all = np.concatenate([held for held, _ in parts])
    ref_q, ref_c = q[held_all, best].sum(), c[held_all, best].sum()
    points = []
    for lam in LAMBDAS:
        total_q = total_c = 0.0
        for held, policy in parts:
            chosen = policy.decide_batch(
                ctx[held], prompt_tokens=prompt_tokens[held], willingness_to_pay=lam, now_s=0.0
            )
            total_q += float(q[held, chosen].sum())
            total_c += float(c[held, chosen].sum())
        points.append((100 * total_c / ref_c, 100 * total_q / ref_q))
    return summary(points)["auc"]


def variants() -> dict[str, Maker | None]:
    out: dict[str, Maker | None] = {"plain": None}
    for k in (10, 20, 40):
        out[f"knn-ctx {k}"] = knn("ctx", k)
        out[f"knn-raw {k}"] = knn("raw", k)
        out[f"pooled-knn-raw {k}"] = knn("raw", k, pooled=True)
    for alpha in (1.0, 10.0):
        out[f"pooled-ridge-raw a={alpha:g}"] = pooled_ridge(alpha)
        for rank in (2, 4):
            out[f"rrr-raw {rank} a={alpha:g}"] = pooled_ridge(alpha, rank)
    return out


class CachedVectors:
    """Stands in for the Embedder while fitting: the train prompts' vectors, computed once."""

    def __init__(self, texts: Any, vectors: F64) -> None:
        self._rows = {text: i for i, text in enumerate(texts)}
        self._vectors = vectors.astype(np.float32)
        self.dim = vectors.shape[1]

    def embed(self, texts: Any, **_: Any) -> Any:
        return self._vectors[[self._rows[t] for t in texts]]


def load(path: str) -> Any:
    if os.path.isdir(path):
        return mixllm.load_routerbench_csv(path)
    ds = mixllm.load_jsonl(path)
    return ds if ds.split is not None else mixllm.split_train_test(ds, test_fraction=0.3, seed=0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--json")
    parser.add_argument("--only", help="comma-separated variant names")
    parser.add_argument("--scales", default="1,3")
    parser.add_argument("--ridges", default="", help="head ridges besides the CV choice")
    parser.add_argument("--seeds", type=int, default=1, help="fold assignments averaged over")
    parser.add_argument(
        "--selection", action="store_true", help="compare the rules that choose the ridge"
    )
    args = parser.parse_args()
    ds = load(args.data)
    train = ds.select(np.flatnonzero(np.array(ds.split) == "train"))
    config, _ = _train_config(None, train)
    embedder = config.embedder.build(intra_op_threads=2, cache_size=0)
    vectors = np.asarray(embed_cached(train.prompts, embedder), dtype=np.float64)

    router = Router(config, embedder=CachedVectors(train.prompts, vectors))  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mixllm.UnusedDataWarning)
        router.fit(train)
    assert router.projection is not None
    ctx = router.projection.context(vectors)
    fitted_config = router.config
    if args.selection:
        results = {"data": args.data, "rows": len(train)}
        results["selection"] = selection_rules(fitted_config, ctx, train, args.seeds)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as handle:
                json.dump(results, handle, indent=1)
        return
    ridges = [fitted_config.ridge, *(float(r) for r in args.ridges.split(",") if r)]
    chosen = variants()
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
    results: dict[str, Any] = {"data": args.data, "rows": len(train), "cv_ridge": ridges[0]}
    for name, maker in chosen.items():
        for scale in [1.0] if maker is None else [float(s) for s in args.scales.split(",")]:
            for ridge in ridges:
                label = f"{name} s={scale:g} ridge={ridge:g}"
                runs = [
                    cross_validated(
                        replace(fitted_config, ridge=ridge), ctx, vectors, train, maker, scale, seed
                    )
                    for seed in range(args.seeds)
                ]
                score = {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}
                score["auc_sd"] = float(np.std([r["auc"] for r in runs]))
                results[label] = score
                print(
                    f"{label:40s} AUC {score['auc']:7.3f}  maxQ {score['maxq']:7.2f}  "
                    f"cost@100 {score['cost_for_100']:7.2f}  MSE {score['mse']:.5f}  "
                    f"AUC sd {score['auc_sd']:.3f}",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
