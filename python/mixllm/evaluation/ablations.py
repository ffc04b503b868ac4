"""How mixllm's ablations in a frontier differ from mixllm: the share of decisions each routes
otherwise, and what says why an ablation that routes every query alike does.

Two things make an ablation route exactly as mixllm does, whatever the data:

* ``β = 0`` without the time constraint. The policy's τ is then so long that the latency
  penalty β weighs is nil for any real latency, so β weighs nothing.
* PCA in place of the tag-enhanced projection when both span one subspace. The two contexts
  then differ by a rotation within it (each context is normalised, and the norm does not change
  under a rotation), and neither the ridge heads nor the exploration bonus change under a
  rotation of the context: with x ↦ Qx (Q orthogonal), the ridge solution becomes Qθ and
  A⁻¹ becomes QA⁻¹Qᵀ, so xᵀθ and xᵀA⁻¹x, the heads' predictions and the bonus, stay as they
  were. `subspace_cosine` measures how far apart the two subspaces are. Where the domains
  already lead the embeddings' variance (RouterBench's three benchmarks do), weighting them up
  cannot move the subspace, and "no tags" is mixllm itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mixllm._core import InvalidInputError
from mixllm.evaluation.bootstrap import Outcomes
from mixllm.evaluation.metrics import Point
from mixllm.understanding.projection import LinearProjection

__all__ = ["SAME_SUBSPACE_COSINE", "decisions_differing", "subspace_cosine"]

# The smallest principal-angle cosine at which two projections are said to span one subspace.
SAME_SUBSPACE_COSINE = 0.9999


def subspace_cosine(first: LinearProjection, second: LinearProjection) -> float:
    """The smallest cosine of the principal angles between the subspaces the two projections'
    rows span (both have orthonormal rows): 1 when the smaller lies in the larger, 0 when some
    direction of the smaller is orthogonal to all of the larger."""
    if first.input_dim != second.input_dim:
        raise InvalidInputError(
            f"the projections read vectors of {first.input_dim} and {second.input_dim} "
            "entries: they do not share a space to compare"
        )
    cosines = np.linalg.svd(first.matrix @ second.matrix.T, compute_uv=False)
    return float(min(1.0, cosines.min()))


def decisions_differing(
    mine: tuple[Sequence[Point], Outcomes], theirs: tuple[Sequence[Point], Outcomes]
) -> dict[str, Any]:
    """How many of two sweeps' decisions differ, at the λ both swept (each sweep's points and
    its outcomes with their choices, in the same order): ``points_compared`` and
    ``decisions_differing_pct``, the % of (λ, query) decisions sent to another model."""
    sweeps = []
    for sweep_points, outcomes in (mine, theirs):
        choice = outcomes.choice
        if choice is None:
            raise InvalidInputError("the outcomes hold no choices to compare")
        if len(sweep_points) != choice.shape[0]:
            raise InvalidInputError(
                f"{len(sweep_points)} points but {choice.shape[0]} rows of choices"
            )
        at = {_key(p.willingness_to_pay): i for i, p in enumerate(sweep_points)}
        sweeps.append((choice, at))
    (mine_all, mine_at), (theirs_all, theirs_at) = sweeps
    shared = [lam for lam in mine_at if lam in theirs_at]
    if not shared:
        return {"points_compared": 0, "decisions_differing_pct": None}
    mine_choice = mine_all[[mine_at[lam] for lam in shared]]
    theirs_choice = theirs_all[[theirs_at[lam] for lam in shared]]
    if mine_choice.shape != theirs_choice.shape:
        raise InvalidInputError(
            f"the sweeps routed {mine_choice.shape[1]} and {theirs_choice.shape[1]} queries"
        )
    return {
        "points_compared": len(shared),
        "decisions_differing_pct": 100.0 * float(np.mean(mine_choice != theirs_choice)),
    }


def _key(willingness_to_pay: float) -> str:
    """A point's λ as a key both sweeps share (a fixed router's point has NaN)."""
    return repr(float(willingness_to_pay))
