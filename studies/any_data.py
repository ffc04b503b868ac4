"""mixllm with its defaults on a routing JSON Lines file, by the offline protocol of the
reference routers (`../shared/tools/reference_routers.py`): fitted on the file's train split
as ``mixllm train --data FILE --out DIR`` fits it (no configuration), then the test split
routed with no feedback, λ swept; quality and cost in % of the best single model on train;
AUC = mean over cost % in [0, 100] of the best quality % reached at that cost or less.

    python studies/any_data.py FILE.jsonl [--state DIR] [--pin KNOB=VALUE ...] [--json OUT]
        [--encoder NAME | --quantized]
        [--online OFFLINE:ONLINE [--online-seeds 0,1,...] [--online-scored-on "held-out train"]
         [--refit-growth G]]

``--pin ridge=1`` fits with a knob set as a configuration file would set it (not
cross-validated). With ``--state DIR`` it routes with a router saved by ``mixllm train``
(``Router.load``) instead of fitting one. ``--encoder minilm-static`` or ``--quantized`` fits
with that encoder instead of the float32 MiniLM. Prompts are embedded with the router's encoder
through the evaluation's vector cache (``MIXLLM_CACHE``). It also checks the calibration
table: the λ each operating point in the user's words maps to, what the held-out folds
predicted, what the test split got.

``--online 50:300`` also learns online: a router fitted on 50 train rows routes 300 more and
learns the chosen model's quality only, against one fitted on all 350 (see `online`), for each
draw of ``--online-seeds``; ``--online-scored-on "held-out train"`` scores on the train rows
not drawn instead of the test split, to choose settings on train alone; ``--refit-growth``
sets the Router's automatic refits (0: none).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

import mixllm
from mixllm.cli import _train_config
from mixllm.evaluation.vectors import embed_cached
from mixllm.routing.router import Router
from mixllm.routing.tuning import routing_auc

LAMBDAS = (*(float(v) for v in np.logspace(-9, 6, 300)), float("inf"))


class CachedVectors:
    """Stands in for the Embedder while fitting: the data's vectors, computed once."""

    def __init__(self, texts: Sequence[str], vectors: np.ndarray, fallback: Any) -> None:
        self._rows = {text: i for i, text in enumerate(texts)}
        self._vectors = vectors.astype(np.float32)
        self._fallback = fallback
        self.dim = vectors.shape[1]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        items = list(texts)
        if all(t in self._rows for t in items):
            return self._vectors[[self._rows[t] for t in items]]
        return np.asarray(self._fallback.embed(items))


def summary(points: list[tuple[float, float]]) -> dict[str, float]:
    """As reference_routers.py summarises a frontier."""
    pts = np.array(sorted(set(points)))

    def cost_for(target: float) -> float:
        ok = pts[pts[:, 1] >= target]
        return float(ok[:, 0].min()) if len(ok) else float("nan")

    return {
        "maxq": float(pts[:, 1].max()),
        "cost_for_100": cost_for(100.0),
        "cost_for_97": cost_for(97.0),
        "auc_0_100": routing_auc(pts[:, 1], pts[:, 0]),
    }


def frontier_of(router: Router, ds: Any, te: np.ndarray, vectors: np.ndarray) -> dict[str, float]:
    """The test split's frontier summary for ``router`` (as `main` computes it)."""
    split = np.array(ds.split)
    tr = np.flatnonzero(split == "train")
    quality = np.nan_to_num(ds.quality, nan=0.0)
    cost = np.where(
        np.isnan(ds.cost_usd), np.nanmean(ds.cost_usd, axis=0, keepdims=True), ds.cost_usd
    )
    reference = int(np.argmax(quality[tr].mean(0)))
    ref_q, ref_c = quality[te, reference].sum(), cost[te, reference].sum()
    assert router.projection is not None
    contexts = router.projection.context(vectors[te])
    columns = np.array([ds.models.index(m) for m in router.models])
    rows = np.arange(len(te))
    points = []
    for lam in LAMBDAS:
        chosen = router.policy.decide_batch(
            contexts, prompt_tokens=ds.prompt_tokens[te], willingness_to_pay=lam, now_s=0.0
        )
        k = columns[chosen]
        points.append(
            (
                100 * float(cost[te][rows, k].sum() / ref_c),
                100 * float(quality[te][rows, k].sum() / ref_q),
            )
        )
    return summary(points)


def online(
    ds: Any,
    tr: np.ndarray,
    vectors: np.ndarray,
    embedder: Any,
    shares: str,
    routed_by: Any,
    *,
    seed: int = 0,
    scored_on: str = "test",
    refit_growth: float | None = None,
) -> dict[str, Any]:
    """A router fitted on OFFLINE train rows (drawn with ``seed``) that then routes ONLINE more
    and learns the chosen model's quality only (`Router.route`, `Router.feedback`, refitting
    itself as its configuration says), against one fitted on all OFFLINE + ONLINE rows
    offline; both scored on the test split, or with ``scored_on="held-out train"`` on the
    train rows not drawn (to choose a setting without looking at the test split).
    ``refit_growth`` overrides the configuration's. Each automatic refit is waited for before
    the next query, so that a run does not depend on the machine's speed."""
    offline_n, online_n = (int(part) for part in shares.split(":"))
    order = np.random.default_rng(seed).permutation(tr)[: offline_n + online_n]
    stand_in: Any = CachedVectors(ds.prompts, vectors, embedder)
    if scored_on == "test":
        scored = np.flatnonzero(np.array(ds.split) == "test")
    else:
        scored = np.setdiff1d(tr, order)
    results: dict[str, Any] = {"seed": seed, "scored_on": scored_on}
    aucs = []
    for name, rows in (("offline only", order[:offline_n]), ("all offline", order)):
        config, _ = _train_config(None, ds.select(rows))
        if refit_growth is not None:
            config = replace(config, refit_growth=refit_growth)
        results["refit_growth"] = config.refit_growth
        router = Router(config, embedder=stand_in)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mixllm.UnusedDataWarning)
            router.fit(ds.select(rows))
            if name == "offline only":
                results["automatic_refits"] = stream(router, ds, order[offline_n:])
        if name == "offline only":
            name = f"{offline_n} offline + {online_n} feedbacks"
            results[name] = routed_by(router, ds, scored, vectors)
            aucs.append(results[name]["auc_0_100"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", mixllm.UnusedDataWarning)
                router.refit()
            name = f"{name}, then Router.refit()"
        results[name] = routed_by(router, ds, scored, vectors)
        aucs.append(results[name]["auc_0_100"])
    results["ratio_pct"] = [100 * auc / aucs[-1] for auc in aucs[:-1]]
    return results


def stream(router: Router, ds: Any, rows: np.ndarray) -> int:
    """Routes ``rows`` one by one and gives the chosen model's quality as feedback; returns
    how many automatic refits ran."""
    for i in rows:
        decision = router.route(ds.prompts[i])
        k = ds.models.index(decision.model)
        tokens = None if ds.output_tokens is None else ds.output_tokens[i, k]
        if np.isnan(ds.quality[i, k]):
            continue
        router.feedback(
            decision.id,
            quality=float(ds.quality[i, k]),
            output_tokens=None if tokens is None or np.isnan(tokens) else float(tokens),
        )
        router.wait_for_refit()
    return router.automatic_refits


def calibration_checks(calibration, routed) -> dict[str, Any]:
    """For some targets: the held-out quality and cost % the calibration table promises at the
    λ it picks, and the test split's at that λ."""
    checks = {}
    targets = [("target_quality_pct", q) for q in (95.0, 97.0, 100.0)]
    targets += [("max_cost_pct", c) for c in (10.0, 30.0)]
    for kind, value in targets:
        pick = calibration.for_quality if kind == "target_quality_pct" else calibration.for_cost
        lam = pick(value)
        point = next(p for p in calibration.points if p.willingness_to_pay == lam)
        test_cost, test_quality = routed(lam)
        checks[f"{kind} = {value:g}"] = {
            "lambda": lam,
            "held_out_quality_cost_pct": [
                round(point.quality_pct, 2),
                round(point.cost_pct, 2),
            ],
            "test_quality_cost_pct": [round(test_quality, 2), round(test_cost, 2)],
        }
    return checks


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--state")
    parser.add_argument("--json")
    parser.add_argument("--pin", action="append", default=[], metavar="KNOB=VALUE")
    parser.add_argument("--online", metavar="OFFLINE:ONLINE")
    parser.add_argument(
        "--online-seeds", default="0", help="draws of the online rows, e.g. 0,1,2 (default 0)"
    )
    parser.add_argument("--online-scored-on", choices=("test", "held-out train"), default="test")
    parser.add_argument("--refit-growth", type=float, help="overrides the configuration's")
    parser.add_argument("--encoder", help="the [embedder] encoder (default: the shipped MiniLM)")
    parser.add_argument("--quantized", action="store_true", help="MiniLM's int8 copy")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    ds = mixllm.load_jsonl(args.data)
    if ds.split is None:
        ds = mixllm.split_train_test(ds, test_fraction=0.3, seed=0)
    split = np.array(ds.split)
    tr, te = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    train = ds.select(tr)
    out: dict[str, Any] = {"data": args.data}
    if args.state:
        router = Router.load(args.state)
        embedder = router.config.embedder.build(intra_op_threads=2, cache_size=0)
        vectors = embed_cached(ds.prompts, embedder)
        out["router"] = f"Router.load({args.state})"
    else:
        config, _ = _train_config(None, train)
        pinned = {k: float(v) for k, v in (item.split("=") for item in args.pin)}
        config = replace(config, **pinned)
        embedding = replace(config.embedder, encoder=args.encoder, quantized=args.quantized)
        config = replace(config, embedder=embedding)
        out["encoder"] = args.encoder or ("int8 MiniLM" if args.quantized else "MiniLM")
        out["pinned"] = pinned
        embedder = config.embedder.build(intra_op_threads=2, cache_size=0)
        vectors = embed_cached(ds.prompts, embedder)
        stand_in: Any = CachedVectors(ds.prompts, vectors, embedder)
        router = Router(config, embedder=stand_in)
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mixllm.UnusedDataWarning)
            report = router.fit(train)
        out["fit_s"] = round(time.perf_counter() - started, 1)
        out["tag_source"] = report.tag_source
        out["router"] = "fitted as mixllm train fits it"
    out["ridge"], out["length_ridge"] = router.config.ridge, router.config.length_ridge
    quality = np.nan_to_num(ds.quality, nan=0.0)
    cost = ds.cost_usd
    cost = np.where(np.isnan(cost), np.nanmean(cost, axis=0, keepdims=True), cost)
    reference = int(np.argmax(quality[tr].mean(0)))
    out["reference"] = ds.models[reference]
    ref_q, ref_c = quality[te, reference].sum(), cost[te, reference].sum()
    assert router.projection is not None
    contexts = router.projection.context(vectors[te])
    columns = np.array([ds.models.index(m) for m in router.models])
    rows = np.arange(len(te))

    def routed(lam: float) -> tuple[float, float]:
        chosen = router.policy.decide_batch(
            contexts, prompt_tokens=ds.prompt_tokens[te], willingness_to_pay=lam, now_s=0.0
        )
        k = columns[chosen]
        return (
            100 * float(cost[te][rows, k].sum() / ref_c),
            100 * float(quality[te][rows, k].sum() / ref_q),
        )

    out.update(summary([routed(lam) for lam in LAMBDAS]))
    if args.online:
        out["online"] = [
            online(
                ds,
                tr,
                vectors,
                embedder,
                args.online,
                routed_by=frontier_of,
                seed=int(seed),
                scored_on=args.online_scored_on,
                refit_growth=args.refit_growth,
            )
            for seed in args.online_seeds.split(",")
        ]
    if router.calibration is not None:
        out["calibration"] = calibration_checks(router.calibration, routed)
    text = json.dumps(out, indent=1, allow_nan=True)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
