"""The frontier summaries `reference_routers.py` prints (max quality, cost % for 97% and 100%
of the reference's quality, AUC over cost % in [0, 100]), for every router of a
``mixllm eval --experiment frontier`` run, read from its ``results.json``.

    python studies/eval_auc.py OUT/results.json [--tau]

Without ``--tau`` the frontier without the time constraint, with it the one under τ.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from any_data import summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--tau", action="store_true", help="the frontier under τ")
    args = parser.parse_args()
    results = json.loads(args.results.read_text(encoding="utf-8"))
    frontier = results["frontier"]["time_constraint" if args.tau else "no_time_constraint"]
    print(f"reference: {results['reference_model']}")
    print(f"{'router':30} {'AUC':>7} {'max Q %':>8} {'cost % 97':>10} {'cost % 100':>11}")
    for name, router in frontier["routers"].items():
        points = [
            (p["cost_pct"], p["quality_pct"])
            for p in router["points"]
            if math.isfinite(p["cost_pct"]) and math.isfinite(p["quality_pct"])
        ]
        if not points:
            continue
        s = summary(points)
        print(
            f"{name:30} {s['auc_0_100']:7.2f} {s['maxq']:8.2f} {s['cost_for_97']:10.2f} "
            f"{s['cost_for_100']:11.2f}"
        )


if __name__ == "__main__":
    main()
