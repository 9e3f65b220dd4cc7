"""What every stage of the miniature world trains with, besides the loop (``autolora.training``).

``denoising_loss`` is DDPM's denoising objective, with the target the model's scheduler names
(epsilon or velocity), that trains both the base model's UNet and every LoRA.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from transformers import CLIPTokenizer

from autolora.errors import ConfigError
from autolora.images import atomic_write_bytes

if TYPE_CHECKING:
    from diffusers import DDPMScheduler


def training_device() -> torch.device:
    """CUDA when present (training only; the shipped world runs on CPU), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


def noised(
    noise_schedule: DDPMScheduler, latents: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DDPM's forward process on ``latents``: ``(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t, target)``.

    Timesteps are uniform over the training schedule; the target is what the denoiser predicts
    (``prediction_target``). The noise, then the timesteps, are drawn from ``generator``.
    """
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    timesteps = torch.randint(
        noise_schedule.config.num_train_timesteps, (len(latents),), generator=generator
    ).to(latents.device)
    target = prediction_target(noise_schedule, latents, noise, timesteps)
    return noise_schedule.add_noise(latents, noise, timesteps), timesteps, target


def denoising_loss(
    unet: Callable[..., Any],
    noise_schedule: DDPMScheduler,
    latents: torch.Tensor,
    hidden_states: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """DDPM's loss ``|| target - f_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t, c) ||^2``.

    The noised latents, timesteps and target come from ``noised``; ``hidden_states`` are the text
    encoder's outputs ``c``, as Stable Diffusion conditions its UNet. ``unet`` is the UNet or any
    callable with its signature and output.
    """
    noisy, timesteps, target = noised(noise_schedule, latents, generator)
    prediction = unet(noisy, timesteps, hidden_states).sample
    return torch.nn.functional.mse_loss(prediction, target)


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
