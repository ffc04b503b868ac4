"""Choosing the static encoder's knobs (PCA width, frequency weighting) on training folds only.

For each candidate table distilled from the shipped MiniLM (`mixllm.encoders.static_table.distil`),
the train split of each shared dataset is embedded with it, cut into 5 folds, and every model's
quality is predicted on each held-out fold by a ridge (alpha 1) fitted on the other four. Two
scores, averaged over the datasets:

* ``r2``: 1 - held-out squared error / variance, over every (query, model) outcome;
* ``auc``: the held-out predictions routed over a sweep of willingness to pay (argmax of
  predicted quality - cost / λ, the real per-query costs), the mean over cost % in [0, 100] of
  the best quality % reached at that cost or less, both in % of the best single model on the
  fold (the any-data protocol, on train folds).

No test row is read. Usage:
    .venv/bin/python studies/static_encoder_knobs.py ../shared/data [--vectors FILE.npz]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from mixllm import load_jsonl, load_routerbench_csv
from mixllm._core import StaticEncoder
from mixllm.encoders import model_files
from mixllm.encoders.static_table import distil, token_vectors
from mixllm.evaluation.baselines import ridge_predict
from mixllm.routing.tuning import fold_ids

DIMS = (64, 128, 256, 384)
SIF = (None, 1e-2, 1e-3, 1e-4)
LAMBDAS = np.geomspace(1e-6, 1e3, 60)


def train_sets(root: Path) -> dict[str, Any]:
    sets = {"routerbench": load_routerbench_csv(root / "routerbench_subset_routerdc")}
    for name in ("alpacaeval_routing", "zeroeval_math_routing"):
        sets[name] = load_jsonl(root / name / "routing.jsonl")
    out = {}
    for name, ds in sets.items():
        assert ds.split is not None, name
        rows = np.flatnonzero(np.array(ds.split) == "train")
        out[name] = ds.select(rows)
    return out


def auc(points: list[tuple[float, float]]) -> float:
    """Mean over cost % in [0, 100] of the best quality % at that cost or less."""
    grid = np.linspace(0.0, 100.0, 201)
    best = np.zeros_like(grid)
    for cost, quality in points:
        best = np.where(grid >= cost, np.maximum(best, quality), best)
    return float(best.mean())


def scores(vectors: np.ndarray, ds: Any) -> tuple[float, float]:
    quality = np.nan_to_num(ds.quality, nan=0.0)
    cost = ds.cost_usd
    cost = np.where(np.isnan(cost), np.nanmean(cost, axis=0, keepdims=True), cost)
    folds = fold_ids(len(vectors))
    predicted = np.empty_like(quality)
    for fold in range(folds.max() + 1):
        held, fit = folds == fold, folds != fold
        for m in range(quality.shape[1]):
            predicted[held, m] = ridge_predict(vectors[fit], quality[fit, m], vectors[held])
    residual = ((predicted - quality) ** 2).sum()
    total = ((quality - quality.mean(axis=0)) ** 2).sum()
    reference = int(np.argmax(quality.mean(axis=0)))
    ref_q, ref_c = quality[:, reference].sum(), cost[:, reference].sum()
    rows = np.arange(len(quality))
    points = []
    for lam in LAMBDAS:
        chosen = np.argmax(predicted - cost / lam, axis=1)
        points.append(
            (
                100 * cost[rows, chosen].sum() / ref_c,
                100 * quality[rows, chosen].sum() / ref_q,
            )
        )
    return 1.0 - residual / total, auc(points)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("--vectors", type=Path, help="token vectors saved by an earlier run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.vectors is not None and args.vectors.is_file():
        saved = np.load(args.vectors)
        vectors, empty, special = saved["vectors"], saved["empty"], list(saved["special"])
    else:
        started = time.perf_counter()
        vectors, empty, special = token_vectors(threads=2)
        print(f"token vectors: {time.perf_counter() - started:.0f} s")
        if args.vectors is not None:
            np.savez(args.vectors, vectors=vectors, empty=empty, special=np.array(special))
    tokenizer = model_files.shipped_model().tokenizer
    sets = train_sets(args.data)
    results = []
    for dim in DIMS:
        for sif in SIF:
            table = distil(vectors, empty, special, dim=dim, sif_a=sif)
            encoder = StaticEncoder(tokenizer, table, max_tokens=256)
            per_set = {
                name: scores(encoder.encode(ds.prompts).astype(np.float64), ds)
                for name, ds in sets.items()
            }
            r2 = float(np.mean([s[0] for s in per_set.values()]))
            mean_auc = float(np.mean([s[1] for s in per_set.values()]))
            row = {"dim": dim, "sif_a": sif, "r2": r2, "auc": mean_auc, "per_set": per_set}
            results.append(row)
            detail = "  ".join(f"{k}: r2 {v[0]:.4f} auc {v[1]:.2f}" for k, v in per_set.items())
            print(f"dim {dim:3d} sif {sif!s:6}  r2 {r2:.4f}  auc {mean_auc:.2f}   {detail}")
    best = max(results, key=lambda r: r["auc"])
    print(f"best by auc: dim {best['dim']}, sif_a {best['sif_a']}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
