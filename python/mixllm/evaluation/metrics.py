"""Metrics of a routed test set: quality and cost as % of a reference model, the frontier over
a sweep of willingness to pay, and AIQ.

**% of the reference.** Total quality (sum of per-query scores) and total cost (USD) of the
routed queries, divided by the totals of sending every one of the same queries to the reference
model (the best single model on the train split unless the run names one; RouterBench's is
``gpt-4-1106-preview``), times 100. The headline reference is that model *offline*: its scores and
costs as recorded in the data, without a queue. The same model served under the simulated queue
is reported beside it (``reference_queued``): with the default stream it cannot keep up, so most
of its answers exceed τ and that reference is degenerate as a denominator.

**AIQ** (average improvement in quality, RouterBench: Hu et al. 2024, section 3.2): the area
under a router's *non-decreasing convex hull* in the cost-quality plane, divided by the width of
the cost range. The hull R̃ is built from the router's points (one per λ) as RouterBench does:
drop every point that a cheaper point matches or beats in quality (what is left rises with
cost), then take the upper convex hull of the rest (any point between two routed points is
reachable by mixing their two λ at random). Then

    AIQ = 1 / (c_max - c_min) · ∫_{c_min}^{c_max} R̃(c) dc

with, [ours, where RouterBench leaves it implicit] R̃(c) = 0 below the router's cheapest point
(it cannot run that cheaply) and R̃(c) = its best quality beyond its dearest point (spending more
buys nothing). The range [c_min, c_max] is the same for every router of a run: from the
cheapest to the dearest single model, in % of GPT-4's cost. Quality is in % of GPT-4's, so an
AIQ is a quality % averaged over budgets.

**Dominance.** One frontier dominates another where its hull R̃ is at or above the other's.
`shortfall` finds, exactly, the stretches of cost where it is not, from the first router's
cheapest point to the top of the range: below its cheapest point a router has no routing at
all, which is a different fact (reported as that cost) from routing worse.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mixllm._core import InvalidInputError
from mixllm.evaluation.frontier import cost_to_reach, quality_at_cost

__all__ = [
    "GAP_TOLERANCE",
    "Point",
    "aiq",
    "cost_to_reach",
    "hull",
    "hull_quality",
    "quality_at_cost",
    "shortfall",
]


@dataclass(frozen=True)
class Point:
    """One λ of a sweep (or the single point of a fixed router)."""

    willingness_to_pay: float
    quality_pct: float
    cost_pct: float
    violations: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not np.isfinite(self.willingness_to_pay):
            data["willingness_to_pay"] = "inf"
        return data


def hull(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-decreasing upper convex hull of (cost, quality) points, sorted by cost."""
    ordered = sorted(points, key=lambda p: (p[0], -p[1]))
    rising: list[tuple[float, float]] = []
    for cost, quality in ordered:
        if not rising or quality > rising[-1][1]:
            if rising and cost == rising[-1][0]:
                rising[-1] = (cost, quality)
            else:
                rising.append((cost, quality))
    upper: list[tuple[float, float]] = []
    for p in rising:
        while len(upper) >= 2:
            (x1, y1), (x2, y2) = upper[-2], upper[-1]
            # Drop the middle point when it lies on or below the chord from x1 to p.
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                upper.pop()
            else:
                break
        upper.append(p)
    return upper


def aiq(points: Sequence[tuple[float, float]], c_min: float, c_max: float) -> float:
    """Area under the non-decreasing convex hull over [c_min, c_max], divided by its width."""
    if not c_max > c_min:
        raise InvalidInputError(f"c_max ({c_max}) must exceed c_min ({c_min})")
    vertices = hull(points)
    if not vertices:
        return 0.0
    xs = [v[0] for v in vertices]
    ys = [v[1] for v in vertices]
    # R̃ is 0 before the first vertex, linear between vertices, flat after the last one.
    start = max(c_min, xs[0])
    if start >= c_max:
        return 0.0
    knots = [start, *[x for x in xs if start < x < c_max], c_max]
    values = [float(np.interp(c, xs, ys)) for c in knots]  # np.interp is flat past the ends
    area = sum(
        0.5 * (b - a) * (fa + fb)
        for a, b, fa, fb in zip(knots[:-1], knots[1:], values[:-1], values[1:], strict=True)
    )
    return area / (c_max - c_min)


def hull_quality(
    points: Sequence[tuple[float, float]], costs: Sequence[float] | NDArray[np.float64]
) -> NDArray[np.float64]:
    """R̃ at each cost, as `aiq` integrates it: 0 below the cheapest point, linear between hull
    vertices, flat past the dearest."""
    at = np.asarray(costs, dtype=np.float64)
    vertices = hull(points)
    if not vertices:
        return np.zeros_like(at)
    xs = [v[0] for v in vertices]
    ys = [v[1] for v in vertices]
    return np.where(at < xs[0], 0.0, np.interp(at, xs, ys))


# Gaps this small are rounding: equal hulls computed from the same points differ by no more.
GAP_TOLERANCE = 1e-9


def shortfall(
    mine: Sequence[tuple[float, float]],
    other: Sequence[tuple[float, float]],
    c_max: float,
) -> dict[str, Any]:
    """Where ``other``'s frontier is above ``mine``, exactly, from my cheapest point to
    ``c_max``: each stretch of cost with its largest gap (quality points) and the cost where it
    is (``max_gap_at_pct``). An empty
    ``behind`` means mine dominates over that range.

    Both hulls are piecewise linear, so their difference is linear between consecutive hull
    vertices (of either): it is evaluated at every vertex, and each stretch ends where it
    crosses zero. ``other``'s hull jumps from 0 at its cheapest point, which is handled as the
    left end of a piece."""
    for name, points in (("mine", mine), ("other", other)):
        if not all(math.isfinite(c) and math.isfinite(q) for c, q in points):
            raise InvalidInputError(f"{name} has a non-finite point")
    if not mine:
        raise InvalidInputError("mine has no points")
    if not math.isfinite(c_max):
        raise InvalidInputError(f"c_max must be finite, got {c_max}")
    start = min(c for c, _ in mine)
    end = max(start, c_max)
    mine_hull, other_hull = hull(mine), hull(other)
    knots = sorted({start, end} | {c for c, _ in (*mine_hull, *other_hull) if start < c < end})
    gap_at = hull_quality(other, knots) - hull_quality(mine, knots)
    # The gap just left of each knot: other's hull is 0 left of its cheapest point.
    gap_before = gap_at.copy()
    if other_hull and start < other_hull[0][0] < end:
        jump = knots.index(other_hull[0][0])
        gap_before[jump] = -float(hull_quality(mine, [knots[jump]])[0])

    stretches: list[dict[str, float]] = []

    def extend(lo: float, hi: float, gap: float, at: float) -> None:
        if stretches and stretches[-1]["to_pct"] >= lo:
            stretches[-1]["to_pct"] = hi
            if gap > stretches[-1]["max_gap"]:
                stretches[-1]["max_gap"], stretches[-1]["max_gap_at_pct"] = gap, at
        else:
            stretches.append({"from_pct": lo, "to_pct": hi, "max_gap": gap, "max_gap_at_pct": at})

    if len(knots) == 1 and gap_at[0] > GAP_TOLERANCE:
        extend(start, start, float(gap_at[0]), start)
    for i in range(len(knots) - 1):
        lo, hi = knots[i], knots[i + 1]
        a, b = float(gap_at[i]), float(gap_before[i + 1])
        if a <= GAP_TOLERANCE and b <= GAP_TOLERANCE:
            continue
        # The linear gap's zero, when it changes sign inside the piece.
        cross = lo + (hi - lo) * a / (a - b) if (a > 0) != (b > 0) else None
        # A linear gap is largest at an end of its piece.
        if a > GAP_TOLERANCE and b > GAP_TOLERANCE:
            extend(lo, hi, max(a, b), lo if a >= b else hi)
        elif a > GAP_TOLERANCE:
            extend(lo, cross if cross is not None else lo, a, lo)
        else:
            extend(cross if cross is not None else hi, hi, b, hi)
    return {"from_pct": float(start), "to_pct": float(end), "behind": stretches}
