"""The one confidence interval of autolora's reports, tables and studies.

``mean_ci95`` is a 95% percentile bootstrap of the mean (2,000 resamples, seed 0, so a report is
reproducible). Bootstrap means are means of the values, so the interval never leaves ``[min, max]`` of
the values and a bounded score (a probability, a 0-5 judge score) keeps its interval inside its bounds,
where a Student-t interval of three probabilities can reach -1 and 1.5. ``ratio_of_means_ci95`` is
the same bootstrap for ``mean(a) / mean(b)`` of paired values (one resample of the pairs for both).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def mean_ci95(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% percentile-bootstrap interval of the mean of ``values`` (``None`` and NaN left out);
    the bounds are NaN for fewer than two values."""
    clean = np.array([float(v) for v in values if v is not None and not math.isnan(float(v))])
    if not len(clean):
        return math.nan, math.nan, math.nan
    mean = float(clean.mean())
    if len(clean) < 2:
        return mean, math.nan, math.nan
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = rng.choice(clean, size=(BOOTSTRAP_RESAMPLES, len(clean))).mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    # Summation order can put a mean of equal values one ulp past them: keep the bounds on the values.
    return mean, float(max(low, clean.min())), float(min(high, clean.max()))


def ratio_of_means_ci95(
    numerators: Sequence[float] | np.ndarray, denominators: Sequence[float] | np.ndarray
) -> tuple[float, float, float]:
    """``mean(numerators) / mean(denominators)`` over pairs with both values, with a 95 % percentile
    bootstrap interval (pairs resampled together); the bounds are NaN for fewer than two pairs.

    Unlike the mean of per-pair ratios, it stays stable when some denominators are near zero.
    """
    pairs = np.array(list(zip(numerators, denominators, strict=True)), dtype=float).reshape(-1, 2)
    pairs = pairs[~np.isnan(pairs).any(axis=1)]
    if not len(pairs):
        return math.nan, math.nan, math.nan
    ratio = float(pairs[:, 0].mean() / pairs[:, 1].mean())
    if len(pairs) < 2:
        return ratio, math.nan, math.nan
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    resampled = pairs[rng.integers(len(pairs), size=(BOOTSTRAP_RESAMPLES, len(pairs)))].mean(axis=1)
    low, high = np.quantile(resampled[:, 0] / resampled[:, 1], [0.025, 0.975])
    return ratio, float(low), float(high)


def format_ci95(estimate: tuple[float, float, float], digits: int = 3) -> str:
    """``"value [low, high]"`` with ``digits`` decimals."""
    value, low, high = estimate
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def format_mean_ci95(values: Sequence[float] | np.ndarray, digits: int = 3) -> str:
    """``"mean [low, high]"`` of ``mean_ci95(values)``, each with ``digits`` decimals."""
    return format_ci95(mean_ci95(values), digits)
