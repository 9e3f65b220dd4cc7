"""The one confidence interval of autolora's reports, tables and studies.

``mean_ci95`` is a 95% percentile bootstrap of the mean (2,000 resamples, seed 0, so a report is
reproducible). Bootstrap means are means of the values, so the interval never leaves ``[min, max]`` of
the values and a bounded score (a probability, a 0-5 judge score) keeps its interval inside its bounds,
where a Student-t interval of three probabilities can reach -1 and 1.5.
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


def format_mean_ci95(values: Sequence[float] | np.ndarray, digits: int = 3) -> str:
    """``"mean [low, high]"`` of ``mean_ci95(values)``, each with ``digits`` decimals."""
    mean, low, high = mean_ci95(values)
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
