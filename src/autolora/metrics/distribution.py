"""Distances between the features of a group and those of a reference set (e.g. a LoRA's training images)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from autolora.errors import ConfigError
from autolora.metrics.features import FeatureMetric
from autolora.metrics.registry import ImageRecord, register_metric


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues clipped)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``x`` and ``y`` (Heusel et al., 2017):
    ||mu_x - mu_y||^2 + Tr(S_x + S_y - 2 (S_x S_y)^(1/2)).

    Tr((S_x S_y)^(1/2)) is computed as Tr((S_x^(1/2) S_y S_x^(1/2))^(1/2)), a symmetric PSD
    matrix with the same eigenvalues, so eigh is exact where a general sqrtm is unstable.
    """
    if min(x.shape[0], y.shape[0]) < 2:
        raise ConfigError(f"FD needs at least 2 images in each set; got {x.shape[0]} and {y.shape[0]}")
    x, y = x.double(), y.double()
    mu_x, mu_y = x.mean(dim=0), y.mean(dim=0)
    s_x, s_y = torch.cov(x.T).reshape(x.shape[1], -1), torch.cov(y.T).reshape(y.shape[1], -1)
    root_x = _sqrt_psd(s_x)
    cross = torch.linalg.eigvalsh(root_x @ s_y @ root_x).clamp(min=0).sqrt().sum()
    return float((mu_x - mu_y).square().sum() + s_x.trace() + s_y.trace() - 2 * cross)


def kernel_inception_distance(
    x: torch.Tensor,
    y: torch.Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (Bińkowski et al., 2018): the unbiased MMD^2 estimate with the polynomial kernel
    k(a, b) = (<a, b> / d + 1)^degree, averaged over ``subsets`` random subsets of
    ``min(subset_size, len(x), len(y))`` rows of each set. Returns (mean, std over subsets).

    Unbiased means it can be slightly negative when both sets come from one distribution.
    """
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ConfigError(f"KID needs at least 2 images in each set; got {x.shape[0]} and {y.shape[0]}")
    x, y = x.double(), y.double()
    generator = torch.Generator().manual_seed(seed)
    estimates = []
    for _ in range(subsets):
        a = x[torch.randperm(x.shape[0], generator=generator)[:m]]
        b = y[torch.randperm(y.shape[0], generator=generator)[:m]]
        k_aa, k_bb, k_ab = ((p @ q.T / x.shape[1] + 1) ** degree for p, q in ((a, a), (b, b), (a, b)))
        within = (k_aa.sum() - k_aa.trace() + k_bb.sum() - k_bb.trace()) / (m * (m - 1))
        estimates.append(within - 2 * k_ab.mean())
    values = torch.stack(estimates)
    return float(values.mean()), (float(values.std()) if subsets > 1 else math.nan)


class _ReferenceMetric(FeatureMetric):
    """A group-level metric that compares the group's features with the reference set's."""

    level = "group"
    uses_reference = True

    def reference_features(self, reference: Sequence[ImageRecord] | None) -> torch.Tensor:
        if not reference:
            raise ConfigError(
                f"metric {self.name!r} needs reference images (e.g. the LoRA's training images)"
            )
        return self.features(reference)


@register_metric("fd_dinov2")
class FrechetDistance(_ReferenceMetric):
    """Fréchet distance between the group's and the reference's features (DINOv2 by default,
    as FD_DINOv2 of Stein et al., 2023). Needs many more images than feature dimensions to be
    a stable estimate; with few images compare runs only at equal group sizes."""

    def compute(
        self,
        records: Sequence[ImageRecord],
        *,
        reference: Sequence[ImageRecord] | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        reference_features = self.reference_features(reference)
        return [{"fd_dinov2": frechet_distance(self.features(records), reference_features)}]


@register_metric("kid")
class KernelInceptionDistance(_ReferenceMetric):
    """KID between the group's and the reference's features: ``kid`` (mean over subsets) and ``kid_std``."""

    own_options = ("subsets", "subset_size", "degree", "seed")

    def __init__(
        self, subsets: int = 100, subset_size: int = 1000, degree: int = 3, seed: int = 0, **options: Any
    ) -> None:
        for name, value in (("subsets", subsets), ("subset_size", subset_size), ("degree", degree)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"kid {name} must be a positive integer; got {value!r}")
        super().__init__(subsets=subsets, subset_size=subset_size, degree=degree, seed=seed, **options)

    def compute(
        self,
        records: Sequence[ImageRecord],
        *,
        reference: Sequence[ImageRecord] | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        settings = {k: self.options[k] for k in self.own_options}
        reference_features = self.reference_features(reference)
        mean, std = kernel_inception_distance(self.features(records), reference_features, **settings)
        return [{"kid": mean, "kid_std": std}]
