"""A LoRA autoencoder with one token per segment (SonicCodes/AutoLoRADiscovery's LoRA VAE).

Each segment (one LoRA factor) has its own linear map to a ``token_dim`` token; self-attention runs
over the segment tokens; the tokens are flattened to one latent. The decoder mirrors it. The loss is
the mean over segments of each segment's MSE (so small layers count as much as large ones) plus an
L1 penalty on the latent, as in the reference.
"""

from __future__ import annotations

import torch
from torch import nn


def _transformer(token_dim: int, heads: int, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        token_dim, heads, 2 * token_dim, dropout=0.0, batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class LoRAVAE(nn.Module):
    """Normalised flat LoRA vectors <-> latents of size ``latent_dim``, segments as tokens."""

    def __init__(
        self,
        segment_sizes: list[int],
        token_dim: int = 64,
        latent_dim: int = 64,
        layers: int = 2,
        heads: int = 4,
    ) -> None:
        super().__init__()
        self.segment_sizes = list(segment_sizes)
        count = len(segment_sizes)
        self.embed = nn.ModuleList(nn.Linear(size, token_dim) for size in segment_sizes)
        self.position = nn.Parameter(torch.randn(count, token_dim) * 0.02)
        self.encoder = _transformer(token_dim, heads, layers)
        self.to_latent = nn.Linear(count * token_dim, latent_dim)
        self.from_latent = nn.Linear(latent_dim, count * token_dim)
        self.decoder = _transformer(token_dim, heads, layers)
        self.unembed = nn.ModuleList(nn.Linear(token_dim, size) for size in segment_sizes)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` normalised LoRA vectors -> ``(B, latent_dim)``."""
        segments = x.split(self.segment_sizes, dim=-1)
        tokens = torch.stack([embed(s) for embed, s in zip(self.embed, segments, strict=True)], 1)
        return self.to_latent(self.encoder(tokens + self.position).flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, latent_dim)`` -> ``(B, D)`` normalised LoRA vectors."""
        tokens = self.from_latent(z).view(len(z), *self.position.shape) + self.position
        tokens = self.decoder(tokens)
        return torch.cat([unembed(tokens[:, i]) for i, unembed in enumerate(self.unembed)], -1)

    def loss(self, x: torch.Tensor, l1: float) -> torch.Tensor:
        """Mean per-segment MSE of the reconstruction plus ``l1`` times the mean absolute latent."""
        z = self.encode(x)
        pairs = zip(
            self.decode(z).split(self.segment_sizes, -1), x.split(self.segment_sizes, -1), strict=True
        )
        per_segment = torch.stack([(r - s).pow(2).mean() for r, s in pairs])
        return per_segment.mean() + l1 * z.abs().mean()
