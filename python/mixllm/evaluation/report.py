"""Writing an evaluation's results: a printed table, ``results.json``, PNG frontier plots
(matplotlib, Agg backend; optional ``eval`` extra) and a self-contained HTML report that embeds
the plots as base64 PNG."""

from __future__ import annotations

import base64
import html
import json
import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mixllm.config import DEFAULT_CONCURRENCY, DEFAULT_TOKENS_PER_S, DEFAULT_TTFT_S
from mixllm.evaluation.ablations import SAME_SUBSPACE_COSINE

__all__ = ["format_table", "machine", "write_report"]

_FRONTIER_TITLES = {
    "no_time_constraint": "Without the time constraint",
    "time_constraint": "With the time constraint",
}


def machine() -> str:
    """The CPU model and core count, for the report."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _frontier_rows(section: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, summary in section["routers"].items():
        rows.append(
            [
                name,
                _fmt(summary["aiq"]),
                _fmt(summary["cost_for_97.25"]),
                _fmt(summary["quality_at_30"]),
                _fmt(summary["max_quality"]),
                str(summary["violations_min"]),
            ]
        )
    return rows


_FRONTIER_HEADER = [
    "router",
    "AIQ",
    "cost % for 97.25% Q",
    "Q % at ≤30% cost",
    "max Q %",
    "fewest τ violations",
]


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


_Table = tuple[str, list[str], list[list[str]]]


def _experiment_tables(results: dict[str, Any]) -> list[_Table]:
    tables: list[_Table] = []
    if "continual" in results:
        tables += _continual_tables(results["continual"])
    if "new-models" in results:
        tables.append(_new_models_table(results["new-models"]))
    if "out-of-domain" in results:
        tables.append(_out_of_domain_table(results["out-of-domain"]))
    return tables


def _continual_tables(continual: dict[str, Any]) -> list[_Table]:
    tables: list[_Table] = []
    rows = []
    for split, section in continual.items():
        row = [split]
        for mode in ("none", "refined", "binary"):
            row += [_fmt(section[mode]["mean_quality"]), _fmt(section[mode]["aiq"])]
        rows.append(row)
    header = ["offline:online"]
    for mode in ("no online", "refined", "binary"):
        header += [f"{mode}: mean Q %", f"{mode}: AIQ"]
    tables.append(("Continual training (test split, mean over λ)", header, rows))
    pairs = ("refined - none", "binary - none", "refined - binary")
    resampled = [
        [
            split,
            *(
                _with_interval(d["mean_quality"], d["mean_quality_interval"])
                for d in (section["differences"][pair] for pair in pairs)
            ),
        ]
        for split, section in continual.items()
        if "differences" in section
    ]
    if resampled:
        tables.append(
            (
                "Continual training, differences in mean Q % (this run; central 95% over "
                "resamples of the test queries)",
                ["offline:online", *pairs],
                resampled,
            )
        )
    return tables


def _new_models_table(nm: dict[str, Any]) -> _Table:
    rows = []
    for variant, per_lambda in nm["variants"].items():
        for item in per_lambda:
            rows.append(
                [
                    variant,
                    _fmt(item["willingness_to_pay"], 3),
                    _fmt(100 * item["share_first_half"], 1),
                    _fmt(100 * item["share_second_half"], 1),
                    _fmt(100 * item["share_last_quarter"], 1),
                    _fmt(item["second_half_quality_pct"]),
                    _fmt(item["second_half_cost_pct"]),
                ]
            )
    header = [
        "variant",
        "λ",
        "share 1st half %",
        "share 2nd half %",
        "share last quarter %",
        "2nd half Q %",
        "2nd half cost %",
    ]
    return (f"Adding {', '.join(nm['added'])} halfway", header, rows)


def _out_of_domain_table(sections: dict[str, Any]) -> _Table:
    rows = []
    for bench, section in sections.items():
        rows.append(
            [
                bench,
                _fmt(section["in-domain"]["mean_quality"]),
                _fmt(section["out-of-domain"]["mean_quality"]),
                _fmt(section["out-of-domain + online"]["mean_quality"]),
                _fmt(section["drop_pct"]),
                _fmt(section["drop_with_online_pct"]),
            ]
        )
    header = [
        "held-out benchmark",
        "in-domain mean Q %",
        "OOD mean Q %",
        "OOD + online mean Q %",
        "drop %",
        "drop with online %",
    ]
    return ("Out of domain (mean over λ)", header, rows)


VALIDATION_NOTE = (
    "Validation run: the train split alone, a quarter of it playing the test split "
    "(the test split was not read)."
)


def _run_notes(results: dict[str, Any]) -> list[str]:
    """What about the run the tables do not say: a validation run, the arrival order."""
    settings = results.get("settings", {})
    notes = []
    if settings.get("validation"):
        notes.append(VALIDATION_NOTE)
    if settings.get("arrivals") == "shuffled":
        notes.append(f"Queries arrive in a shuffled order (seed {settings.get('seed')}).")
    elif settings.get("arrivals") == "data":
        notes.append("Queries arrive in the data's order.")
    assumed = results.get("data", {}).get("assumed_speeds")
    if assumed:
        notes.append(
            f"Speeds assumed for {len(assumed)} of {len(results['data']['models'])} models "
            f"({', '.join(assumed)}): neither the configuration nor the catalog gives theirs, so "
            f"their servers run at the placeholder ones (time to first token {DEFAULT_TTFT_S:g} s, "
            f"{DEFAULT_TOKENS_PER_S:g} tokens/s, {DEFAULT_CONCURRENCY} at once) and what the "
            "time constraint does to them is synthetic. Give their ttft_s, tokens_per_s and "
            "concurrency in --config to simulate them."
        )
    return notes


def format_table(results: dict[str, Any]) -> str:
    """Every table of the results as plain text."""
    parts = []
    notes = _run_notes(results)
    if notes:
        parts.append("\n".join(notes) + "\n")
    for key, title in _FRONTIER_TITLES.items():
        section = results.get("frontier", {}).get(key)
        if section is None:
            continue
        tau = f" (τ = {section['tau_s']:g} s)" if section["tau_s"] is not None else ""
        parts.append(f"{title}{tau}: quality and cost in % of {results['reference_model']}")
        parts.append(_text_table(_FRONTIER_HEADER, _frontier_rows(section)))
        parts.extend(_frontier_notes(section, results["data"]["models"]))
        parts.append("")
    for title, header, rows in _experiment_tables(results):
        parts.append(title)
        parts.append(_text_table(header, rows))
        parts.append("")
    if "runtime_s" in results:
        parts.append(f"run time {results['runtime_s']:.0f} s on {results.get('machine', '?')}")
    return "\n".join(parts)


def _frontier_notes(section: dict[str, Any], models: Sequence[str]) -> list[str]:
    """What the frontier table does not show: where other routers' frontiers are above
    mixllm's (with the resampled gap there, when the run resampled), how sure its AIQ lead over
    the routers that are not single ``models`` is, and its point nearest the paper's
    headline."""
    notes = []
    shortfalls = section.get("mixllm_shortfall")
    if shortfalls:
        start = next(iter(shortfalls.values()))["from_pct"]
        behind = [
            f"{name} over " + ", ".join(_stretch(b) for b in s["behind"])
            for name, s in shortfalls.items()
            if s["behind"]
        ]
        cheaper = [
            f"{name} ({s['cheapest_pct']:.2f}%)"
            for name, s in shortfalls.items()
            if s["cheapest_pct"] < start
        ]
        notes.append(
            f"mixllm's frontier from its cheapest point ({start:.2f}% of the cost) up: "
            + (f"below {'; '.join(behind)}" if behind else "at or above every baseline's")
            + "."
        )
        if cheaper:
            notes.append(f"Baselines with points cheaper than mixllm's: {', '.join(cheaper)}.")
        leads = [
            f"{name}: AIQ lead {_with_interval(s['aiq_lead'], s['aiq_lead_interval'])}, at or "
            f"above its frontier throughout in {100 * s['mixllm_at_or_above_share']:.1f}%"
            for name, s in shortfalls.items()
            # The learned baselines: a lead over a single model or random needs no interval.
            if "aiq_lead" in s and name not in models and name != "random"
        ]
        if leads:
            resamples = next(s["resamples"] for s in shortfalls.values() if "resamples" in s)
            notes.append(
                f"mixllm against the learned baselines, in this run and over {resamples} "
                f"resamples of the test queries (central 95%): " + "; ".join(leads) + "."
            )
    nearest = section.get("nearest_to_paper_headline")
    if nearest:
        notes.append(
            f"mixllm point nearest the paper's 97.25% at 24.18%: "
            f"{nearest['quality_pct']:.2f}% at {nearest['cost_pct']:.2f}% "
            f"(λ = {nearest['willingness_to_pay']})"
        )
    return notes + [_variant_note(n, v) for n, v in section.get("variants", {}).items()]


def _variant_note(name: str, found: dict[str, Any]) -> str:
    """How much of an ablation's routing differs from mixllm's, and, when none does, why (see
    `mixllm.evaluation.ablations`)."""
    compared = found["points_compared"]
    share = found["decisions_differing_pct"]
    cosine = found.get("subspace_cosine")
    if share is None:
        return f"{name}: no λ swept in common with mixllm to compare decisions at."
    angles = (
        ""
        if cosine is None
        else f" (PCA's and the tag-enhanced projection's subspaces: smallest principal-angle "
        f"cosine {cosine:.7f})"
    )
    if share > 0:
        return (
            f"{name} sends {share:.2f}% of the decisions elsewhere than mixllm, at the "
            f"{compared} λ both swept{angles}."
        )
    text = f"{name} routes every query as mixllm at each of the {compared} λ both swept"
    if found.get("latency_penalty_off"):
        return text + ": without the time constraint the latency penalty β weighs is nil."
    if cosine is not None and cosine >= SAME_SUBSPACE_COSINE:
        return (
            f"{text}: its PCA subspace is the tag-enhanced projection's (smallest "
            f"principal-angle cosine {cosine:.7f}), and a rotation of the context within it "
            "changes neither the heads nor the exploration bonus, so on this data the tags "
            "change nothing."
        )
    return text + angles + "."


def _with_interval(value: float, interval: Sequence[float]) -> str:
    """A run's value and its resampled central 95%."""
    low, high = interval
    return f"{value:+.2f} ({low:+.2f} to {high:+.2f})"


def _stretch(stretch: dict[str, Any]) -> str:
    """One stretch where a baseline is ahead, with its resampled gap when there is one."""
    text = (
        f"{stretch['from_pct']:.2f}-{stretch['to_pct']:.2f}% "
        f"(by up to {stretch['max_gap']:.2f} points"
    )
    if "gap_interval" in stretch:
        low, high = stretch["gap_interval"]
        text += (
            f"; resampled, the gap at {stretch['max_gap_at_pct']:.2f}% is {low:+.2f} to "
            f"{high:+.2f}, above 0 in {100 * stretch['gap_positive_share']:.0f}%"
        )
    return text + ")"


def _plot(section: dict[str, Any], title: str, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(8, 5.5))
    singles_x, singles_y, names = [], [], []
    for name, summary in section["routers"].items():
        points = summary["points"]
        xs = [p["cost_pct"] for p in points]
        ys = [p["quality_pct"] for p in points]
        if len(points) == 1 and name not in ("random",):
            singles_x.append(xs[0])
            singles_y.append(ys[0])
            names.append(name.split("/")[-1])
            continue
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        style = "-" if name.startswith("mixllm") else "--"
        width = 2.2 if name == "mixllm" else 1.2
        axes.plot(
            [xs[i] for i in order], [ys[i] for i in order], style, marker=".", lw=width,
            label=f"{name} (AIQ {summary['aiq']:.1f})",
        )  # fmt: skip
    axes.scatter(singles_x, singles_y, marker="x", color="grey", label="single models")
    for x, y, name in zip(singles_x, singles_y, names, strict=True):
        axes.annotate(name, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    axes.axhline(97.25, color="grey", lw=0.6, ls=":")
    axes.set_xscale("log")
    reference = section["reference"]["model"]
    axes.set_xlabel(f"cost, % of {reference}")
    axes.set_ylabel(f"quality, % of {reference}")
    axes.set_title(title)
    axes.legend(fontsize=7, loc="lower right")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _html(results: dict[str, Any], images: dict[str, Path]) -> str:
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>mixllm eval</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;font-size:13px;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}</style></head><body>",
        "<h1>mixllm evaluation</h1>",
        f"<p>Data: {results['data']['queries']} queries ({results['data']['train']} train, "
        f"{results['data']['test']} test), {len(results['data']['models'])} models. "
        f"Quality and cost in % of {html.escape(results['reference_model'])} offline. "
        f"Machine: {html.escape(str(results.get('machine', '?')))}; "
        f"run time {results.get('runtime_s', 0):.0f} s.</p>",
    ]
    for note in _run_notes(results):
        out.append(f"<p><strong>{html.escape(note)}</strong></p>")

    def table(header: list[str], rows: list[list[str]]) -> None:
        out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        for row in rows:
            out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        out.append("</table>")

    for key, title in _FRONTIER_TITLES.items():
        section = results.get("frontier", {}).get(key)
        if section is None:
            continue
        out.append(f"<h2>{html.escape(title)}</h2>")
        ref = section["reference"]
        out.append(
            f"<p>{html.escape(ref['model'])} under the same queue: "
            f"{ref['queued_quality_pct_of_offline']:.2f}% of its "
            f"offline quality, {ref['queued_violations']} τ violations.</p>"
        )
        table(_FRONTIER_HEADER, _frontier_rows(section))
        for note in _frontier_notes(section, results["data"]["models"]):
            out.append(f"<p>{html.escape(note)}</p>")
        if key in images:
            data = base64.b64encode(images[key].read_bytes()).decode("ascii")
            out.append(f"<img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>")
    for title, header, rows in _experiment_tables(results):
        out.append(f"<h2>{html.escape(title)}</h2>")
        table(header, rows)
    out.append("</body></html>")
    return "\n".join(out)


def write_report(results: dict[str, Any], directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Writes results.json, the PNG plots and report.html under ``directory``."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    results.setdefault("machine", machine())
    written: dict[str, Path] = {}
    images: dict[str, Path] = {}
    for key, title in _FRONTIER_TITLES.items():
        section = results.get("frontier", {}).get(key)
        if section is None:
            continue
        path = folder / f"frontier_{key}.png"
        if _plot(section, title, path):
            images[key] = path
            written[path.name] = path
    json_path = folder / "results.json"
    json_path.write_text(
        json.dumps(_clean(results), indent=1, default=_json_default, allow_nan=False),
        encoding="utf-8",
    )
    written["results.json"] = json_path
    html_path = folder / "report.html"
    html_path.write_text(_html(results, images), encoding="utf-8")
    written["report.html"] = html_path
    return written


def _clean(value: Any) -> Any:
    """JSON-ready: NaN becomes null, infinities "inf"/"-inf" (strict JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) or hasattr(value, "dtype"):
        number = float(value) if not isinstance(value, bool) else value
        if isinstance(number, float) and math.isnan(number):
            return None
        if isinstance(number, float) and math.isinf(number):
            return "inf" if number > 0 else "-inf"
        return value.item() if hasattr(value, "item") else value
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)
