"""How a LoRA prior is built and trained: a dependency-free dataclass, so the CLI shows its defaults cheaply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from autolora.checks import at_least, check_bounds
from autolora.errors import ConfigError

PriorKind = Literal["pca", "regressor", "diffusion"]
PRIOR_KINDS: tuple[str, ...] = ("pca", "regressor", "diffusion")
Conditioning = Literal["hyperada", "adanorm"]


@dataclass
class PriorConfig:
    """How a prior is built and trained (defaults fit a bank of a few hundred small LoRAs on a CPU)."""

    kind: PriorKind = "diffusion"
    #: Diffusion prior: how the condition enters each block.
    conditioning: Conditioning = "hyperada"
    #: PCA: number of principal components kept.
    components: int = at_least(64)
    #: LoRA VAE: token width per segment, latent size, transformer layers and heads, L1 weight on z.
    token_dim: int = at_least(64)
    latent_dim: int = at_least(64)
    vae_layers: int = at_least(2)
    heads: int = at_least(4)
    l1: float = 1e-4
    #: Regressor / diffusion prior: MLP width, diffusion blocks, HyperAda rank, timesteps, CFG dropout.
    hidden: int = at_least(256)
    blocks: int = at_least(4)
    hyper_rank: int = at_least(16)
    timesteps: int = at_least(100)
    cond_dropout: float = 0.1
    #: Training.
    vae_steps: int = 2000
    prior_steps: int = 2000
    batch_size: int = at_least(64)
    learning_rate: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in PRIOR_KINDS:
            raise ConfigError(f"unknown prior kind {self.kind!r}; known: {', '.join(PRIOR_KINDS)}")
        if self.conditioning not in ("hyperada", "adanorm"):
            raise ConfigError(f"conditioning must be 'hyperada' or 'adanorm', got {self.conditioning!r}")
        check_bounds(self, "prior config")
        if not 0 <= self.cond_dropout < 1:
            raise ConfigError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
