"""A tiny SD1.5 pipeline folder and a folder of its LoRAs in every format a bank reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.torch import save_file

from autolora.lora import to_kohya_state_dict
from autolora.testing import random_lora_state_dict, tiny_image_encoder, tiny_pipeline

RANKS = (2, 4, 4, 8, 4, 4)


def save_tiny_base(folder: Path) -> Path:
    """Write the tiny SD1.5 pipeline as a diffusers folder."""
    tiny_pipeline("sd15", folder / "tokenizers").save_pretrained(str(folder / "base"))
    return folder / "base"


def write_lora_folder(pipe, folder: Path, *, images: bool = False) -> Path:
    """LoRAs of ``pipe`` (ranks ``RANKS``) as diffusers, kohya and PEFT-folder files, optionally with images."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, rank in enumerate(RANKS):
        state = random_lora_state_dict(pipe, seed=index, rank=rank, std=0.2)
        name = f"lora{index}"
        if index == 1:
            save_file(to_kohya_state_dict(state), str(folder / f"{name}.safetensors"))
        elif index == 2:  # a PEFT save_pretrained folder, the layout of weights2weights' LoRAs
            (folder / name).mkdir()
            save_file(
                {k.replace("unet.", "base_model.model.", 1): v for k, v in state.items()},
                str(folder / name / "adapter_model.safetensors"),
            )
            (folder / name / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": rank}))
        else:
            save_file(state, str(folder / f"{name}.safetensors"))
        if images:
            target = folder / (f"{name}.images" if index == 2 else name)
            target.mkdir(exist_ok=True)
            rng = np.random.default_rng(index)
            for k in range(2):
                pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) // (index + 1)
                Image.fromarray(pixels.astype(np.uint8)).save(target / f"{k}.png")
    return folder


def bank_inputs(root: Path) -> tuple[Path, Path, str]:
    """Under ``root``: the tiny base (``base``), its LoRA folder with images (``loras``) and a tiny CLIP
    image encoder (``clip``); returns the base, the LoRA folder and the encoder's spec."""
    base = save_tiny_base(root)
    loras = write_lora_folder(tiny_pipeline("sd15", root / "tokenizers"), root / "loras", images=True)
    return base, loras, f"clip:{tiny_image_encoder('clip', root / 'clip')}"
