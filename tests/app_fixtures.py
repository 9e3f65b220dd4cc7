"""A tiny LoRA prior of the miniature world, built in seconds: a bank of the world's LoRAs and a small prior."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from autolora.synthesis import PriorConfig, build_bank, train_prior
from autolora.testing import tiny_image_encoder

#: World LoRAs in the bank (style LoRAs of one rank), each with two reference images of its own colours.
BANK_LORAS = ("chalk", "neon", "stripes", "checker", "italic", "shadow")
TINY_PRIOR = PriorConfig(
    token_dim=8,
    latent_dim=8,
    vae_layers=1,
    heads=2,
    hidden=16,
    blocks=2,
    hyper_rank=2,
    timesteps=10,
    batch_size=4,
    vae_steps=3,
    prior_steps=3,
)


def reference_images(folder: Path, seed: int, count: int = 2) -> list[Path]:
    """``count`` seeded 32x32 images written to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        paths.append(folder / f"{index}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def world_prior(root: Path) -> Path:
    """A diffusion prior over the world's style LoRAs with a tiny CLIP condition encoder; returns its folder."""
    from autolora.world.assets import lora_path

    loras = root / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(BANK_LORAS):
        shutil.copyfile(lora_path(name), loras / f"{name}.safetensors")
        reference_images(loras / name, seed)
    encoder = f"clip:{tiny_image_encoder('clip', root / 'clip')}"
    bank = build_bank(loras, "world", 4, root / "bank", encoder=encoder, log=lambda line: None)
    train_prior(bank, TINY_PRIOR, root / "prior", log=lambda line: None)
    return root / "prior"
