"""Training priors on a bank: resumable, on CUDA when present and on several GPUs through accelerate.

Each stage (the LoRA VAE, then the regressor or diffusion prior on its frozen latents) runs AdamW on
random bank rows drawn with a seeded generator per process, and writes a checkpoint (module,
optimiser, generator, step) every ``checkpoint_every`` steps into ``work``, so an interrupted run
continues where it stopped. Launch with ``accelerate launch -m autolora prior train ...`` for
several GPUs.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from autolora.errors import ConfigError
from autolora.images import atomic_write_bytes
from autolora.synthesis.bank import Bank
from autolora.synthesis.config import PriorConfig
from autolora.synthesis.pca import PCAPrior
from autolora.synthesis.prior import DiffusionPrior, LatentPrior, PCASynthesisPrior, Prior, RegressorPrior


class _Objective(nn.Module):
    """A module whose forward is a training loss, so accelerate's DDP wrapper syncs its gradients."""

    def __init__(self, model: nn.Module, loss: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.loss(self.model, *args)


def _train_stage(
    name: str,
    model: nn.Module,
    loss: Callable[..., torch.Tensor],
    batch: Callable[[torch.Tensor, torch.device], tuple[torch.Tensor, ...]],
    size: int,
    config: PriorConfig,
    steps: int,
    work: Path,
    log: Callable[[str], None],
    checkpoint_every: int,
) -> float:
    """``steps`` AdamW steps of ``loss(model, *batch(indices))`` on random row indices; returns the last loss."""
    from accelerate import Accelerator

    accelerator = Accelerator()
    generator = torch.Generator().manual_seed(config.seed + 1000 * accelerator.process_index)
    objective = _Objective(model, loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    checkpoint, start = work / f"{name}.pt", 0
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError:
            raise ConfigError(
                f"checkpoint {checkpoint} was written for another {name} configuration; delete it or use another "
                "work folder"
            ) from None
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start = state["step"]
        log(f"{name}: resumed at step {start}")
    objective, optimizer = accelerator.prepare(objective, optimizer)
    objective.train()
    value, started = float("nan"), time.perf_counter()
    for step in range(start, steps):
        indices = torch.randint(size, (min(config.batch_size, size),), generator=generator)
        value_t = objective(*batch(indices, accelerator.device), generator)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(value_t)
        accelerator.clip_grad_norm_(objective.parameters(), 1.0)
        optimizer.step()
        value = value_t.item()
        done = step + 1
        if (done % checkpoint_every == 0 or done == steps) and accelerator.is_main_process:
            buffer = io.BytesIO()
            torch.save(
                {
                    "model": accelerator.unwrap_model(objective).model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "step": done,
                },
                buffer,
            )
            atomic_write_bytes(checkpoint, buffer.getvalue())
            log(f"{name}: step {done}/{steps} loss {value:.4f} ({time.perf_counter() - started:.0f}s)")
    accelerator.wait_for_everyone()
    model.to("cpu").eval()
    return value


def train_prior(
    bank: Bank,
    config: PriorConfig,
    out: str | Path,
    *,
    work: str | Path | None = None,
    log: Callable[[str], None] = lambda _: None,
    checkpoint_every: int = 200,
    vae_from: Prior | None = None,
) -> Prior:
    """Fit a prior of ``config.kind`` on ``bank``, save it to ``out`` and return it.

    ``vae_from`` (a trained regressor or diffusion prior of the same bank) lends its LoRA VAE, which is
    then not trained again: priors compared on one VAE differ only in their latent model.
    """
    out = Path(out)
    work = Path(work) if work is not None else out / "checkpoints"
    work.mkdir(parents=True, exist_ok=True)
    prior = Prior.from_bank(config, bank)
    stage = {"config": config, "work": work, "log": log, "checkpoint_every": checkpoint_every}
    if isinstance(prior, PCASynthesisPrior):
        prior.pca = PCAPrior.fit(bank, config.components, seed=config.seed)
        # A bank of N LoRAs has at most N - 1 components: the saved prior says how many it holds.
        prior.config = replace(config, components=len(prior.pca.sigmas))
    elif isinstance(prior, LatentPrior):
        if vae_from is None:
            _train_vae(prior, bank, stage)
        elif not isinstance(vae_from, LatentPrior) or vae_from.layout != prior.layout:
            raise ConfigError("vae_from must be a regressor or diffusion prior of the same bank layout")
        else:
            prior.vae.load_state_dict(vae_from.vae.state_dict())
        latents = _standardize_latents(prior, bank)
        conditions = bank.conditions.float()
        if isinstance(prior, RegressorPrior):
            _train_stage(
                "regressor",
                prior.regressor,
                lambda m, c, z, g: nn.functional.mse_loss(m(c), z),
                lambda i, d: (conditions[i].to(d), latents[i].to(d)),
                len(bank),
                steps=config.prior_steps,
                **stage,
            )
        elif isinstance(prior, DiffusionPrior):
            _train_stage(
                "diffusion",
                prior.diffusion,
                lambda m, c, z, g: m.loss(z, c, config.cond_dropout, g),
                lambda i, d: (conditions[i].to(d), latents[i].to(d)),
                len(bank),
                steps=config.prior_steps,
                **stage,
            )
    from accelerate import PartialState

    if PartialState().is_main_process:  # under accelerate launch every process holds the same weights
        prior.save(out)
    return prior.eval()


def _train_vae(prior: LatentPrior, bank: Bank, stage: dict) -> None:
    """Train the LoRA VAE on normalised bank rows, read from disk batch by batch."""

    def rows(indices: torch.Tensor, device: torch.device) -> tuple[torch.Tensor]:
        return (bank.rows(sorted(set(indices.tolist()))).to(device),)

    l1 = stage["config"].l1
    _train_stage(
        "vae",
        prior.vae,
        lambda m, x, g: m.loss(x, l1),
        rows,
        len(bank),
        steps=stage["config"].vae_steps,
        **stage,
    )


@torch.no_grad()
def _standardize_latents(prior: LatentPrior, bank: Bank) -> torch.Tensor:
    """The bank's VAE latents, standardised per dimension (statistics stored in the prior)."""
    latents = torch.cat([prior.vae.encode(block) for block in bank.batches(256)])
    prior.latent_mean.copy_(latents.mean(0))
    prior.latent_std.copy_(
        latents.std(0).clamp_min(1e-6) if len(latents) > 1 else torch.ones_like(latents[0])
    )
    return (latents - prior.latent_mean) / prior.latent_std
