"""Priors over a LoRA bank behind one interface: fit on a bank, then LoRA vectors from a condition.

``PriorConfig.kind`` chooses the prior (a registry validates the name):

- ``"pca"``: weights2weights' PCA (closed form); unconditional sampling, edit directions, and inversion
  of images through ``autolora.synthesis.pclora``;
- ``"regressor"``: the LoRA VAE plus a hypernetwork regressing its latent from the condition;
- ``"diffusion"``: the LoRA VAE plus a conditioned diffusion prior in its latent (HyperAda or AdaNorm
  conditioning, classifier-free guidance on the condition).

A prior is saved as a folder: ``prior.json`` (config, layout, condition encoder, distance threshold)
and ``prior.safetensors`` (weights, the bank's per-segment stds and its conditions).
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from autolora.errors import ConfigError, InputFileError
from autolora.synthesis.bank import Bank
from autolora.synthesis.canonical import Layout
from autolora.synthesis.config import PriorConfig
from autolora.synthesis.latent import LatentDiffusion, Regressor
from autolora.synthesis.pca import PCAPrior
from autolora.synthesis.vae import LoRAVAE


class Prior(nn.Module):
    """A fitted prior with what it needs to write a LoRA: the bank layout, stds and conditions."""

    kind: ClassVar[str]
    conditional: ClassVar[bool] = True

    def __init__(
        self,
        config: PriorConfig,
        layout: Layout,
        stds: torch.Tensor,
        encoder: str | None,
        conditions: torch.Tensor | None,
    ) -> None:
        super().__init__()
        self.config, self.layout, self.encoder = config, layout, encoder
        self.register_buffer("stds", stds.float())
        self.register_buffer(
            "conditions", conditions.float() if conditions is not None else torch.zeros(0, 0)
        )
        #: A condition further than this from every bank condition is out of the bank's range.
        self.far_threshold = float("inf")

    # Interface ----------------------------------------------------------------------------------------
    def build(self) -> None:
        """Create the trainable modules (called once before training or loading weights)."""
        raise NotImplementedError

    def sample_normalized(
        self, condition: torch.Tensor | None, num_samples: int, generator: torch.Generator, guidance: float
    ) -> torch.Tensor:
        """``(num_samples, D)`` normalised LoRA vectors for ``condition`` (``(C,)``, or None)."""
        raise NotImplementedError

    # Shared -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        condition: torch.Tensor | None = None,
        num_samples: int = 1,
        *,
        seed: int = 0,
        guidance: float = 1.0,
    ) -> torch.Tensor:
        """``(num_samples, D)`` unnormalised LoRA vectors (``layout.unflatten`` makes each a state dict)."""
        if self.conditional:
            if condition is None:
                raise ConfigError(f"the {self.kind} prior needs a condition (reference images)")
            if condition.shape != (self.conditions.shape[1],):
                raise ConfigError(
                    f"condition has shape {tuple(condition.shape)}, this prior's encoder gives ({self.conditions.shape[1]},)"
                )
        generator = torch.Generator().manual_seed(seed)
        normalized = self.sample_normalized(condition, num_samples, generator, guidance)
        return normalized * self.stds[self.layout.segment_ids()]

    def nearest_distance(self, condition: torch.Tensor) -> float:
        """Euclidean distance from ``condition`` to the nearest bank condition."""
        return float(torch.cdist(condition[None].float(), self.conditions).min())

    def save(self, path: str | Path) -> Path:
        """Write the prior folder ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "config": asdict(self.config),
            "layout": self.layout.to_json(),
            "encoder": self.encoder,
            "far_threshold": self.far_threshold,
        }
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path / "prior.safetensors"))
        (path / "prior.json").write_text(json.dumps(meta, indent=2) + "\n")
        return path

    @classmethod
    def from_bank(cls, config: PriorConfig, bank: Bank) -> Prior:
        """An untrained prior of ``config.kind`` for ``bank``."""
        prior_cls = PRIORS[config.kind]
        if prior_cls.conditional and bank.conditions is None:
            raise ConfigError(
                f"a {config.kind} prior needs the bank's conditions; build the bank with --encoder"
            )
        prior = prior_cls(config, bank.layout, bank.stds, bank.encoder, bank.conditions)
        with torch.random.fork_rng():  # seeded initial weights, without touching the global generator
            torch.manual_seed(config.seed)
            prior.build()
        if bank.conditions is not None and len(bank) > 1:
            prior.far_threshold = _far_threshold(bank.conditions)
        return prior


def _far_threshold(conditions: torch.Tensor, sample: int = 2048, block: int = 256) -> float:
    """Twice the largest nearest-neighbour distance among bank conditions.

    Over at most ``sample`` seeded rows, their distances to all rows taken ``block`` at a time, so a bank
    of 65k conditions never needs its N x N distance matrix.
    """
    conditions = conditions.float()
    rows = torch.randperm(len(conditions), generator=torch.Generator().manual_seed(0))[:sample]
    largest = 0.0
    for start in range(0, len(rows), block):
        chosen = rows[start : start + block]
        distances = torch.cdist(conditions[chosen], conditions)
        distances[torch.arange(len(chosen)), chosen] = float("inf")
        largest = max(largest, float(distances.min(1).values.max()))
    return 2.0 * largest


def load_prior(path: str | Path) -> Prior:
    """A prior folder written by ``Prior.save`` (``autolora prior train``)."""
    path = Path(path)
    if not (path / "prior.json").exists() or not (path / "prior.safetensors").exists():
        raise InputFileError(f"{path} is not a prior folder (needs prior.json and prior.safetensors)")
    meta = json.loads((path / "prior.json").read_text())
    known = {f.name for f in fields(PriorConfig)}
    config = PriorConfig(**{k: v for k, v in meta["config"].items() if k in known})
    state = load_file(str(path / "prior.safetensors"))
    conditions = state["conditions"] if state["conditions"].numel() else None
    prior = PRIORS[config.kind](
        config, Layout.from_json(meta["layout"]), state["stds"], meta["encoder"], conditions
    )
    prior.build()
    prior.load_state_dict(state)
    prior.far_threshold = float(meta["far_threshold"])
    return prior.eval()


class PCASynthesisPrior(Prior):
    """weights2weights' PCA: samples the Gaussian over PC coefficients; ignores conditions."""

    kind = "pca"
    conditional = False

    def build(self) -> None:
        self.pca = PCAPrior(self.layout.dim, self.config.components)

    def sample_normalized(self, condition, num_samples, generator, guidance):
        return self.pca.sample(num_samples, generator)


class LatentPrior(Prior):
    """A LoRA VAE and a map from condition to its latent (latents standardised by their bank statistics)."""

    def build(self) -> None:
        c = self.config
        sizes = [int(n) for n in torch.tensor(self.layout.offsets).diff()]
        self.vae = LoRAVAE(sizes, c.token_dim, c.latent_dim, c.vae_layers, c.heads)
        self.register_buffer("latent_mean", torch.zeros(c.latent_dim))
        self.register_buffer("latent_std", torch.ones(c.latent_dim))

    def decode(self, standardized: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(standardized * self.latent_std + self.latent_mean)


class RegressorPrior(LatentPrior):
    """Deterministic: condition -> latent -> frozen VAE decoder (every sample is the same LoRA)."""

    kind = "regressor"

    def build(self) -> None:
        super().build()
        self.regressor = Regressor(self.conditions.shape[1], self.config.latent_dim, self.config.hidden)

    def sample_normalized(self, condition, num_samples, generator, guidance):
        return self.decode(self.regressor(condition[None].to(self.stds.device))).expand(num_samples, -1)


class DiffusionPrior(LatentPrior):
    """A conditioned diffusion model over VAE latents; ``guidance`` is CFG on the condition."""

    kind = "diffusion"

    def build(self) -> None:
        super().build()
        c = self.config
        self.diffusion = LatentDiffusion(
            c.latent_dim,
            self.conditions.shape[1],
            hidden=c.hidden,
            blocks=c.blocks,
            conditioning=c.conditioning,
            rank=c.hyper_rank,
            timesteps=c.timesteps,
        )

    def sample_normalized(self, condition, num_samples, generator, guidance):
        latents = self.diffusion.sample(
            condition.to(self.stds.device), num_samples, generator, guidance=guidance
        )
        return self.decode(latents)


PRIORS: dict[str, type[Prior]] = {p.kind: p for p in (PCASynthesisPrior, RegressorPrior, DiffusionPrior)}
