"""A resumable, seeded training loop shared by every stage of the miniature world.

Each stage is a loss function of a batch drawn with a ``torch.Generator``; the loop saves the
modules, the optimiser, the generator state and the step to one checkpoint file every few
steps, so an interrupted stage continues exactly where it stopped and a rerun with the same
seed gives the same weights.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import CLIPTokenizer

from autolora.images import atomic_write_bytes

if TYPE_CHECKING:  # diffusers' training utilities take seconds to import; only training needs them
    from diffusers.training_utils import EMAModel

logger = logging.getLogger(__name__)


@dataclass
class StageResult:
    """What a finished stage cost and reached."""

    steps: int
    final_loss: float
    cpu_seconds: float
    wall_seconds: float


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
) -> StageResult:
    """Train ``modules`` for ``steps`` AdamW steps on ``loss_fn``, resuming from ``checkpoint`` if present."""
    parameters = list(parameters)
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    start, spent_cpu, spent_wall, loss_value = 0, 0.0, 0.0, float("nan")
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        for key, module in modules.items():
            module.load_state_dict(state["modules"][key])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
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
