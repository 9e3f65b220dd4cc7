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
from collections.abc import Callable, Iterable, Sequence
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


def clip_total_norm(parameters: list[nn.Parameter], max_norm: float = 1.0) -> None:
    """Scale all gradients together so that their joint norm is at most ``max_norm``."""
    torch.nn.utils.clip_grad_norm_(parameters, max_norm)


def run_stage(
    name: str,
    modules: dict[str, nn.Module],
    parameters: Iterable[nn.Parameter],
    loss_fn: Callable[[torch.Generator], torch.Tensor] | Callable[[list[torch.Generator]], torch.Tensor],
    schedule: Schedule,
    *,
    seed: int | Sequence[int],
    checkpoint: Path | None = None,
    ema: EMAModel | None = None,
    clip: Callable[[list[nn.Parameter]], None] = clip_total_norm,
) -> StageResult:
    """Train ``modules`` on ``loss_fn`` as ``schedule`` says, resuming from ``checkpoint`` if present.

    With a warm-up the learning rate warms up and then decays (``learning_rate_factor``); without, it
    stays constant. With a sequence of seeds ``loss_fn`` gets one generator per seed (models trained
    side by side, each drawing what it would draw alone); ``clip`` bounds the gradients before each
    step.
    """
    steps, learning_rate, weight_decay = schedule.steps, schedule.learning_rate, schedule.weight_decay
    warmup, checkpoint_every = min(schedule.warmup, steps), schedule.checkpoint_every
    parameters = list(parameters)
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
    single = isinstance(seed, int)  # one generator, passed and checkpointed as itself
    generators = [torch.Generator().manual_seed(s) for s in ([seed] if single else seed)]
    draws = generators[0] if single else generators
    start, spent_cpu, spent_wall, loss_value = 0, 0.0, 0.0, float("nan")
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False, map_location=parameters[0].device)
        for key, module in modules.items():
            module.load_state_dict(state["modules"][key])
        optimizer.load_state_dict(state["optimizer"])
        saved = state["generator"]
        for generator, generator_state in zip(generators, [saved] if single else saved, strict=True):
            generator.set_state(generator_state.cpu())
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
        loss = loss_fn(draws)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip(parameters)
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
                    "generator": (
                        generators[0].get_state() if single else [g.get_state() for g in generators]
                    ),
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
