"""A resumable, seeded training loop shared by every stage of the miniature world, and its one loss.

Each stage is a loss function of a batch drawn with a ``torch.Generator``; the loop saves the
modules, the optimiser, the generator state and the step to one checkpoint file every few
steps, so an interrupted stage continues exactly where it stopped and a rerun with the same
seed gives the same weights. Random draws stay on the CPU generator and move to the training
device afterwards, so a CUDA run draws the same batches and noise as a CPU run.

``denoising_loss`` is DDPM's denoising objective, with the target the model's scheduler names
(epsilon or velocity), that trains both the base model's UNet and every LoRA.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import CLIPTokenizer

from autolora.errors import ConfigError
from autolora.images import atomic_write_bytes

if TYPE_CHECKING:  # diffusers' training utilities take seconds to import; only training needs them
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

logger = logging.getLogger(__name__)


@dataclass
class StageResult:
    """What a finished stage cost and reached."""

    steps: int
    final_loss: float
    cpu_seconds: float
    wall_seconds: float


def training_device() -> torch.device:
    """CUDA when present (training only; the shipped world runs on CPU), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def learning_rate_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay to 10% at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


def run_stage(
    name: str,
    modules: dict[str, nn.Module],
    parameters: Iterable[nn.Parameter],
    loss_fn: Callable[[torch.Generator], torch.Tensor],
    *,
    steps: int,
    seed: int,
    learning_rate: float,
    checkpoint: Path | None = None,
    checkpoint_every: int = 200,
    ema: EMAModel | None = None,
    weight_decay: float = 1e-2,
    warmup: int = 0,
) -> StageResult:
    """Train ``modules`` for ``steps`` AdamW steps on ``loss_fn``, resuming from ``checkpoint`` if present.

    With ``warmup`` > 0 the learning rate warms up and then decays (``learning_rate_factor``);
    with 0 it stays constant.
    """
    parameters = list(parameters)
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    start, spent_cpu, spent_wall, loss_value = 0, 0.0, 0.0, float("nan")
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False, map_location=parameters[0].device)
        for key, module in modules.items():
            module.load_state_dict(state["modules"][key])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"].cpu())
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start, spent_cpu, spent_wall = state["step"], state["cpu_seconds"], state["wall_seconds"]
        loss_value = state["loss"]
        logger.info("%s: resumed at step %d", name, start)
    for module in modules.values():
        module.train()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    running, count = 0.0, 0
    for step in range(start, steps):
        if warmup:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate * learning_rate_factor(step, steps, warmup)
        loss = loss_fn(generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if ema is not None:
            ema.step(parameters)
        running, count = running + loss.item(), count + 1
        done = step + 1
        if done % checkpoint_every == 0 or done == steps:
            loss_value, running, count = running / count, 0.0, 0
            cpu = spent_cpu + time.process_time() - cpu0
            wall = spent_wall + time.perf_counter() - wall0
            logger.info(
                "%s: step %d/%d loss %.4f cpu %.0fs wall %.0fs", name, done, steps, loss_value, cpu, wall
            )
            if checkpoint is not None:
                state = {
                    "modules": {key: module.state_dict() for key, module in modules.items()},
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "step": done,
                    "cpu_seconds": cpu,
                    "wall_seconds": wall,
                    "loss": loss_value,
                }
                buffer = io.BytesIO()
                torch.save(state, buffer)
                atomic_write_bytes(checkpoint, buffer.getvalue())
    for module in modules.values():
        module.eval()
    return StageResult(
        steps=steps,
        final_loss=loss_value,
        cpu_seconds=spent_cpu + time.process_time() - cpu0,
        wall_seconds=spent_wall + time.perf_counter() - wall0,
    )


def draw_latents(
    mean: torch.Tensor, std: torch.Tensor, scaling: float, generator: torch.Generator
) -> torch.Tensor:
    """A sample of the VAE posterior ``N(mean, std^2)``, scaled to the UNet's unit-variance latents."""
    noise = torch.randn(mean.shape, generator=generator).to(mean.device)
    return (mean + std * noise) * scaling


def prediction_target(
    noise_schedule: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the denoiser predicts: the noise ``eps``, or the velocity ``sqrt(abar_t) eps - sqrt(1 - abar_t) x0``
    (Salimans & Ho 2022, SD 2.x's 768 models), as ``noise_schedule.config.prediction_type`` says."""
    kind = noise_schedule.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_schedule.get_velocity(latents, noise, timesteps)
    raise ConfigError(f"denoising loss: prediction type {kind!r} is not supported (epsilon, v_prediction)")


def denoising_loss(
    unet: Callable[..., Any],
    noise_schedule: DDPMScheduler,
    latents: torch.Tensor,
    hidden_states: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """DDPM's loss ``|| target - f_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t, c) ||^2``.

    The target is ``eps`` or the velocity (``prediction_target``); timesteps are uniform over the
    training schedule; ``hidden_states`` are the text encoder's outputs ``c``, as Stable Diffusion
    conditions its UNet. ``unet`` is the UNet or any callable with its signature and output.
    """
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    timesteps = torch.randint(
        noise_schedule.config.num_train_timesteps, (len(latents),), generator=generator
    ).to(latents.device)
    prediction = unet(noise_schedule.add_noise(latents, noise, timesteps), timesteps, hidden_states).sample
    return torch.nn.functional.mse_loss(
        prediction, prediction_target(noise_schedule, latents, noise, timesteps)
    )


def images_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images as one ``(N, 3, H, W)`` tensor in [-1, 1], the range the VAE works in."""
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def encode_captions(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids padded to the tokenizer's length, exactly as the pipeline pads prompts."""
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def read_json(path: Path) -> dict:
    """``path`` parsed as JSON, or an empty dict if it does not exist yet."""
    return json.loads(path.read_text()) if path.exists() else {}


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` atomically, indented and key-sorted for readable diffs."""
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
