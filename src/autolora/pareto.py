"""Pareto fronts of settings measured on several objectives, all maximised (diversity, style adherence, ...)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether ``a`` is at least as good as ``b`` on every objective and better on one (maximising)."""
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))


def pareto_mask(points: Sequence[Sequence[float]]) -> list[bool]:
    """For each point, whether no other point dominates it; a point with a NaN objective is never on the front."""
    valid = [not any(math.isnan(float(v)) for v in point) for point in points]
    return [
        valid[i] and not any(valid[j] and dominates(points[j], point) for j in range(len(points)) if j != i)
        for i, point in enumerate(points)
    ]
