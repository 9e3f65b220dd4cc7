"""weights2weights' PCA prior: principal components of the bank, sampling, edit directions.

Fitted by a streamed randomised SVD (Halko et al.), so the bank is read block by block and never
held in memory: the mean in one pass, a range sketch ``Y = (X - μ) Ω`` and ``B = Qᵀ (X - μ)`` in two
more. Inversion of images (optimising PC coefficients through the diffusion loss) is
``autolora.synthesis.pclora.fit_coefficients`` with ``PCAPrior.basis()``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from autolora.errors import ConfigError
from autolora.synthesis.bank import Bank


class PCAPrior(nn.Module):
    """Mean, first principal components and their standard deviations, in normalised LoRA space."""

    def __init__(self, dim: int, components: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("components", torch.zeros(components, dim))
        self.register_buffer("sigmas", torch.zeros(components))

    @classmethod
    def fit(
        cls, bank: Bank, components: int, *, oversample: int = 10, seed: int = 0, batch_size: int = 1024
    ) -> PCAPrior:
        """The first ``components`` PCs of the normalised bank, streamed."""
        k = min(components, len(bank) - 1)
        if k < 1:
            raise ConfigError(f"PCA needs at least 2 LoRAs in the bank, it has {len(bank)}")
        prior = cls(bank.layout.dim, k)
        mean = sum(block.double().sum(0) for block in bank.batches(batch_size)) / len(bank)
        sketch = min(k + oversample, len(bank))
        omega = torch.randn(
            bank.layout.dim, sketch, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
        y = torch.cat([(block.double() - mean) @ omega for block in bank.batches(batch_size)])
        q, _ = torch.linalg.qr(y)
        b = torch.zeros(sketch, bank.layout.dim, dtype=torch.float64)
        for start, block in zip(range(0, len(bank), batch_size), bank.batches(batch_size), strict=True):
            b += q[start : start + len(block)].T @ (block.double() - mean)
        _, s, vh = torch.linalg.svd(b, full_matrices=False)
        prior.mean.copy_(mean.float())
        prior.components.copy_(vh[:k].float())
        prior.sigmas.copy_((s[:k] / np.sqrt(len(bank) - 1)).float())
        return prior

    def coefficients(self, vectors: torch.Tensor) -> torch.Tensor:
        """PC coefficients of normalised LoRA vectors."""
        return (vectors - self.mean) @ self.components.T

    def reconstruct(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Normalised LoRA vectors from PC coefficients."""
        return self.mean + coefficients @ self.components

    def sample(self, num_samples: int, generator: torch.Generator) -> torch.Tensor:
        """New LoRAs from the Gaussian the bank's coefficients follow (weights2weights' sampling)."""
        z = torch.randn(num_samples, len(self.sigmas), generator=generator)
        return self.reconstruct(z * self.sigmas)

    def edit_direction(self, bank: Bank, labels: np.ndarray) -> torch.Tensor:
        """A unit direction in normalised LoRA space separating bank LoRAs with ``labels`` 1 from 0.

        As weights2weights: a linear classifier on the PC coefficients, its normal mapped back to weights.
        Move a LoRA along it with ``vector + strength * direction``.
        """
        from sklearn.linear_model import LogisticRegression

        labels = np.asarray(labels)
        if labels.shape != (len(bank),) or set(np.unique(labels)) != {0, 1}:
            raise ConfigError(
                f"edit labels must be 0/1 for each of the {len(bank)} bank LoRAs, with both present"
            )
        scale = self.sigmas.clamp_min(1e-12)
        features = torch.cat([self.coefficients(block) / scale for block in bank.batches()]).numpy()
        normal = (
            torch.from_numpy(LogisticRegression(max_iter=1000).fit(features, labels).coef_[0]).float() / scale
        )
        direction = normal @ self.components
        return direction / direction.norm()

    def basis(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(basis, offset)`` for coefficient fitting: LoRA = offset + coefficients · basis (normalised)."""
        return self.components * self.sigmas[:, None], self.mean
