"""A resumable, seeded training loop: the world's stages and ``autolora distill`` train with it.

A stage is a loss function of a batch drawn with a ``torch.Generator``; the loop saves the modules, the
optimiser, the generator state and the step to one checkpoint file every few steps, so an interrupted
stage continues exactly where it stopped and a rerun with the same seed gives the same weights. Random
draws stay on the CPU generator and move to the training device afterwards, so a CUDA run draws the
same batches and noise as a CPU run.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

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


def learning_rate_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay to 10% at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Schedule:
    """How long and how fast a stage trains: AdamW steps, learning rate and weight decay, warm-up steps
    (capped at ``steps``; 0: a constant learning rate) and steps between checkpoints."""

    steps: int
    learning_rate: float
    warmup: int = 0
    checkpoint_every: int = 200
    weight_decay: float = 1e-2


def run_stage(
    name: str,
    modules: dict[str, nn.Module],
    parameters: Iterable[nn.Parameter],
    loss_fn: Callable[[torch.Generator], torch.Tensor],
    schedule: Schedule,
    *,
    seed: int,
    checkpoint: Path | None = None,
    ema: EMAModel | None = None,
) -> StageResult:
    """Train ``modules`` on ``loss_fn`` as ``schedule`` says, resuming from ``checkpoint`` if present.

    With a warm-up the learning rate warms up and then decays (``learning_rate_factor``); without, it
    stays constant.
    """
    steps, learning_rate, weight_decay = schedule.steps, schedule.learning_rate, schedule.weight_decay
    warmup, checkpoint_every = min(schedule.warmup, steps), schedule.checkpoint_every
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
