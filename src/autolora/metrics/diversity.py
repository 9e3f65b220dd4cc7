"""Diversity of a group of images: the paper's Eq. 8 and the Vendi score."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from autolora.errors import ConfigError
from autolora.metrics.features import FeatureMetric
from autolora.metrics.registry import ImageRecord, register_metric


# Eq. 8: Diversity(X) = 1 - 2 / (N (N - 1)) * sum_{i<j} cos(f(x_i), f(x_j))
def diversity(features: torch.Tensor) -> float:
    """Eq. 8 of the AutoLoRA paper: one minus the mean pairwise cosine similarity of the rows.

    With unit rows u_i, sum_{i,j} <u_i, u_j> = ||sum_i u_i||^2, so the off-diagonal sum costs
    O(N d) instead of O(N^2 d). NaN for fewer than two rows, where no pair exists.
    """
    n = features.shape[0]
    if n < 2:
        return math.nan
    u = F.normalize(features.double(), dim=1)
    off_diagonal = u.sum(dim=0).square().sum() - u.square().sum()
    return float(1 - off_diagonal / (n * (n - 1)))


def vendi_score(features: torch.Tensor, q: float = 1.0) -> float:
    """Vendi score (Friedman & Dieng, 2023) with the cosine kernel: exp of the order-``q`` Rényi
    entropy of the eigenvalues of K/n, K_ij = cos(x_i, x_j).

    q = 1 is the Shannon entropy, q = inf gives 1 / max eigenvalue. Ranges from 1 (identical
    images) to n (orthogonal features).
    """
    n = features.shape[0]
    u = F.normalize(features.double(), dim=1)
    # K/n = U U^T / n and U^T U / n share their non-zero eigenvalues; decompose the smaller one.
    gram = u @ u.T if n <= u.shape[1] else u.T @ u
    eigenvalues = torch.linalg.eigvalsh(gram / n)
    # Round-off leaves ~1e-16 where the spectrum is 0; for q < 1 their powers would not vanish.
    eigenvalues = eigenvalues[eigenvalues > 1e-12 * eigenvalues.max()]
    if math.isinf(q):
        return float(1 / eigenvalues.max())
    if q == 1:
        return float(torch.exp(-(eigenvalues * eigenvalues.log()).sum()))
    return float(torch.exp(eigenvalues.pow(q).sum().log() / (1 - q)))


@register_metric("diversity")
class Diversity(FeatureMetric):
    """Eq. 8 over the images of a group, on features from ``extractor`` (DINOv2 by default)."""

    level = "group"

    def compute(
        self,
        records: Sequence[ImageRecord],
        *,
        reference: Sequence[ImageRecord] | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        return [{"diversity": diversity(self.features(records))}]


@register_metric("vendi")
class Vendi(FeatureMetric):
    """Vendi score of order ``q`` (> 0, or ``float("inf")``) over the images of a group."""

    level = "group"
    own_options = ("q",)

    def __init__(self, q: float = 1.0, **options: Any) -> None:
        if not isinstance(q, (int, float)) or not q > 0:
            raise ConfigError(f"vendi order q must be a positive number or inf; got {q!r}")
        super().__init__(q=float(q), **options)

    def compute(
        self,
        records: Sequence[ImageRecord],
        *,
        reference: Sequence[ImageRecord] | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        return [{"vendi": vendi_score(self.features(records), self.options["q"])}]
