"""Condition -> LoRA-VAE latent: a deterministic regressor and a conditioned diffusion prior.

The diffusion prior predicts the clean latent ``x0`` from ``x_t`` over 100 timesteps (as
SonicCodes/AutoLoRADiscovery) with MLP blocks conditioned on ``e = [time embedding; condition
embedding]`` by one of two rules, so the reference's comparison can be re-run:

- **HyperAda** (the reference's): a small MLP maps ``e`` to a per-sample rank-``r`` pair ``D, U``
  (``hidden x r`` each) applied to the features as ``x + (x D) Uᵀ``;
- **AdaNorm**: ``LayerNorm(x) (1 + scale(e)) + shift(e)``.

The condition is dropped (replaced by a learned null embedding) with probability ``cond_dropout``
during training, which gives classifier-free guidance on the condition at sampling time.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.models.embeddings import Timesteps
from torch import nn
from torch.nn import functional as F

from autolora.guidance import cfg
from autolora.synthesis.config import Conditioning


def hyperada(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """HyperAda: ``x + (x D) Uᵀ`` with a per-sample low-rank pair (``x``: B x H, ``D``, ``U``: B x H x r)."""
    return x + torch.einsum("bh,bhr,bkr->bk", x, down, up)


def adanorm(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """AdaNorm: ``LayerNorm(x) (1 + scale) + shift`` with a per-sample scale and shift."""
    return F.layer_norm(x, x.shape[-1:]) * (1 + scale) + shift


class Block(nn.Module):
    """A residual MLP block conditioned on ``e`` by HyperAda or AdaNorm."""

    def __init__(self, hidden: int, embed: int, conditioning: Conditioning, rank: int) -> None:
        super().__init__()
        self.conditioning, self.hidden, self.rank = conditioning, hidden, rank
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.SiLU(), nn.Linear(2 * hidden, hidden))
        outputs = 2 * hidden * rank if conditioning == "hyperada" else 2 * hidden
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(embed, outputs))
        # Start as the identity modulation: zero scale and shift, or a zero U with a random D (as LoRA
        # zeroes B only: were both factors zero, neither would ever receive a gradient).
        second_half = slice(outputs // 2, None) if conditioning == "hyperada" else slice(None)
        nn.init.zeros_(self.modulation[1].weight[second_half])
        nn.init.zeros_(self.modulation[1].bias[second_half])

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        a, b = self.modulation(e).chunk(2, dim=-1)
        if self.conditioning == "hyperada":
            down, up = a.view(-1, self.hidden, self.rank), b.view(-1, self.hidden, self.rank)
            return x + self.mlp(F.layer_norm(hyperada(x, down, up), x.shape[-1:]))
        return x + self.mlp(adanorm(x, a, b))


class LatentDiffusion(nn.Module):
    """``x0``-prediction network over LoRA-VAE latents, conditioned on a condition vector."""

    def __init__(
        self,
        latent_dim: int,
        cond_dim: int,
        *,
        hidden: int = 256,
        blocks: int = 4,
        conditioning: Conditioning = "hyperada",
        rank: int = 16,
        timesteps: int = 100,
    ) -> None:
        super().__init__()
        self.timesteps = timesteps
        self.time = nn.Sequential(Timesteps(hidden, True, 0), nn.Linear(hidden, hidden), nn.SiLU())
        self.condition = nn.Linear(cond_dim, hidden)
        self.null = nn.Parameter(torch.zeros(hidden))
        self.input = nn.Linear(latent_dim, hidden)
        self.blocks = nn.ModuleList(Block(hidden, 2 * hidden, conditioning, rank) for _ in range(blocks))
        self.output = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, latent_dim))

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor, keep: torch.Tensor
    ) -> torch.Tensor:
        """Predicted ``x0``; rows with ``keep`` False see the null condition instead of theirs."""
        c = torch.where(keep[:, None], self.condition(condition), self.null)
        e = torch.cat([self.time(t), c], -1)
        h = self.input(x_t)
        for block in self.blocks:
            h = block(h, e)
        return self.output(h)

    def noise_schedule(self) -> DDPMScheduler:
        """The forward process used in training (cosine betas, ``x0`` prediction)."""
        return DDPMScheduler(
            num_train_timesteps=self.timesteps,
            beta_schedule="squaredcos_cap_v2",
            prediction_type="sample",
            clip_sample=False,
        )

    def loss(
        self, x0: torch.Tensor, condition: torch.Tensor, cond_dropout: float, generator: torch.Generator
    ) -> torch.Tensor:
        """MSE of the ``x0`` prediction at a uniform random timestep, condition dropped at ``cond_dropout``."""
        device = x0.device
        t = torch.randint(self.timesteps, (len(x0),), generator=generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        keep = (torch.rand(len(x0), generator=generator) >= cond_dropout).to(device)
        x_t = self.noise_schedule().add_noise(x0, noise, t)
        return F.mse_loss(self(x_t, t, condition, keep), x0)

    @torch.no_grad()
    def sample(
        self,
        condition: torch.Tensor,
        num_samples: int,
        generator: torch.Generator,
        *,
        steps: int = 50,
        guidance: float = 1.0,
    ) -> torch.Tensor:
        """``num_samples`` latents for one condition (``C``), DDIM with CFG ``guidance`` on the condition."""
        device = condition.device
        scheduler = DDIMScheduler.from_config(self.noise_schedule().config)
        scheduler.set_timesteps(min(steps, self.timesteps))
        x = torch.randn((num_samples, self.input.in_features), generator=generator).to(device)
        c = condition.expand(num_samples, -1)
        ones = torch.ones(num_samples, dtype=torch.bool, device=device)
        for t in scheduler.timesteps:
            times = torch.full((num_samples,), int(t), device=device)
            conditional = self(x, times, c, ones)
            unconditional = None if guidance == 1 else self(x, times, c, ~ones)
            x = scheduler.step(cfg(unconditional, conditional, guidance), t, x).prev_sample
        return x


class Regressor(nn.Module):
    """A deterministic hypernetwork: condition -> latent, an MLP trained by MSE to the bank's latents."""

    def __init__(self, cond_dim: int, latent_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(cond_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, latent_dim),
        )

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        return self.net(condition)
