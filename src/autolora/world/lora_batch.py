"""Several LoRAs trained at once: one UNet pass in which each LoRA sees only its own samples.

A tiny UNet's training step on a CPU costs far less than ``M`` times as much for ``M`` LoRAs' batches
stacked into one (``benchmarks/lora_batch_speed.py``), so the world's LoRA bank trains its LoRAs in
groups. peft runs one adapter per forward pass (its mixed-adapter batches serve inference and loop
over the adapters), hence a module of our own: ``StackedLoRA`` holds a group's factors as ``(M, ...)``
tensors and applies factor ``m`` to the ``m``-th block of the batch. Every LoRA keeps its own
initialisation, generator and gradient clipping, and AdamW is elementwise, so a LoRA trained in a
group is the LoRA ``train_lora`` trains alone, up to the order of floating-point sums.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from peft.utils import get_peft_model_state_dict
from PIL import Image
from torch import nn

from autolora.errors import ConfigError
from autolora.training import Schedule, StageResult, run_stage
from autolora.world.lora import add_lora, check_captions, encode_images, write_lora
from autolora.world.lora_config import LoRATrainingConfig

#: Steps between the group's checkpoints: a group trains for minutes, so an interruption costs little.
CHECKPOINT_EVERY = 100


class StackedLoRA(nn.Module):
    """A frozen linear layer plus ``M`` LoRAs: ``y = base(x) + scaling * x A_m^T B_m^T`` for the ``m``-th
    of ``M`` equal blocks of the batch. ``down`` stacks peft's ``lora_A`` weights ``(M, r, in)``, ``up``
    its ``lora_B`` weights ``(M, out, r)``."""

    def __init__(self, base: nn.Linear, down: torch.Tensor, up: torch.Tensor, scaling: float) -> None:
        super().__init__()
        self.base, self.scaling = base, scaling
        self.down, self.up = nn.Parameter(down), nn.Parameter(up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(len(self.down), -1, x.shape[-1])  # (M, samples of one LoRA x tokens, in)
        update = torch.bmm(torch.bmm(rows, self.down.transpose(1, 2)), self.up.transpose(1, 2))
        return self.base(x) + self.scaling * update.reshape(*x.shape[:-1], -1)


def clip_each_lora(parameters: list[nn.Parameter], max_norm: float = 1.0) -> None:
    """``torch.nn.utils.clip_grad_norm_`` for each LoRA of a group on its own: row ``m`` of every stacked
    parameter belongs to LoRA ``m``."""
    norms = torch.stack([p.grad.flatten(1).pow(2).sum(1) for p in parameters]).sum(0).sqrt()
    factors = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for parameter in parameters:
        parameter.grad.mul_(factors.view(-1, *[1] * (parameter.grad.dim() - 1)))


def initial_factors(
    unet: UNet2DConditionModel, config: LoRATrainingConfig
) -> tuple[dict[str, torch.Tensor], dict]:
    """The peft state dict and ``LoraConfig`` (as a dict) of the LoRA ``add_lora`` starts from with
    ``config``, made on a copy of ``unet`` so that ``unet`` itself stays as it is."""
    twin = copy.deepcopy(unet)
    add_lora(twin, config)
    return get_peft_model_state_dict(twin), twin.peft_config["default"].to_dict()


def frozen_layer(unet: UNet2DConditionModel, name: str) -> nn.Module:
    """The linear layer at ``name``; once an adapter was added, peft's wrapper holds it as ``base_layer``."""
    module = unet.get_submodule(name)
    return getattr(module, "base_layer", module)


@contextmanager
def stacked_into(unet: UNet2DConditionModel, stacks: dict[str, StackedLoRA]) -> Iterator[None]:
    """``unet`` with the module at each name of ``stacks`` replaced by its stack, put back on exit."""
    originals = {name: unet.get_submodule(name) for name in stacks}
    for name, stack in stacks.items():
        unet.set_submodule(name, stack)
    try:
        yield
    finally:
        for name, original in originals.items():
            unet.set_submodule(name, original)


def train_lora_batch(
    pipeline: StableDiffusionPipeline,
    datasets: Sequence[tuple[list[Image.Image], list[str]]],
    out_files: Sequence[str | Path],
    configs: Sequence[LoRATrainingConfig],
    state_file: str | Path | None = None,
    kohya_files: Sequence[Path | None] | None = None,
) -> StageResult:
    """Train one LoRA per ``(images, captions)`` of ``datasets`` side by side and save LoRA ``m`` to
    ``out_files[m]`` (diffusers format; also with kohya keys to ``kohya_files[m]`` where given), as
    ``train_lora`` would with ``configs[m]``.

    The configurations may differ only in their seeds. ``state_file`` keeps the group's training state
    every ``CHECKPOINT_EVERY`` steps, so an interrupted group resumes; it is removed at the end. The
    returned costs are the group's.
    """
    if not (len(datasets) == len(out_files) == len(configs)) or not datasets:
        raise ConfigError(
            f"a LoRA group needs one file and one configuration per data set, got {len(datasets)} data"
            f" sets, {len(out_files)} files, {len(configs)} configurations"
        )
    config = configs[0]
    if any(replace(other, seed=config.seed) != config for other in configs):
        raise ConfigError("LoRAs trained together must share every setting but their seed")
    for images, captions in datasets:
        check_captions(images, captions)
    pipeline.vae.requires_grad_(False)
    pipeline.text_encoder.requires_grad_(False)
    unet = pipeline.unet
    unet.requires_grad_(False)
    encoded = [encode_images(pipeline, images, captions) for images, captions in datasets]
    noise_schedule = DDPMScheduler.from_config(pipeline.scheduler.config)
    # LoRAs of one bank often share their initialisation (``--init-seed``): make each one once.
    by_seed = {each.seed: initial_factors(unet, each) for each in configs}
    initial = [by_seed[each.seed] for each in configs]
    names = sorted(
        key.removesuffix(".lora_A.weight") for key in initial[0][0] if key.endswith(".lora_A.weight")
    )
    scaling = (config.alpha or config.rank) / config.rank
    stacks = {
        name: StackedLoRA(
            frozen_layer(unet, name),
            torch.stack([state[f"{name}.lora_A.weight"] for state, _ in initial]),
            torch.stack([state[f"{name}.lora_B.weight"] for state, _ in initial]),
            scaling,
        )
        for name in names
    }
    parameters = [p for stack in stacks.values() for p in (stack.down, stack.up)]

    def loss_fn(generators: list[torch.Generator]) -> torch.Tensor:
        batches = [
            data.batch(config.batch_size, noise_schedule, g)
            for data, g in zip(encoded, generators, strict=True)
        ]
        noisy, timesteps, hidden_states, target = (torch.cat(parts) for parts in zip(*batches, strict=True))
        error = (unet(noisy, timesteps, hidden_states).sample - target).pow(2)
        return error.reshape(len(batches), -1).mean(1).sum()  # each LoRA's gradient is its own loss's

    schedule = Schedule(
        config.steps, config.learning_rate, checkpoint_every=CHECKPOINT_EVERY, weight_decay=0.0
    )
    state_path = Path(state_file) if state_file is not None else None
    with stacked_into(unet, stacks):
        result = run_stage(
            "lora group",
            {"loras": nn.ParameterList(parameters)},
            parameters,
            loss_fn,
            schedule,
            seed=[each.seed for each in configs],
            checkpoint=state_path,
            clip=clip_each_lora,
        )
    kohya_files = kohya_files or [None] * len(out_files)
    for m, (out_file, (_, metadata)) in enumerate(zip(out_files, initial, strict=True)):
        state = {}
        for name, stack in stacks.items():
            state[f"{name}.lora_A.weight"] = stack.down[m].detach().clone()
            state[f"{name}.lora_B.weight"] = stack.up[m].detach().clone()
        write_lora(state, metadata, Path(out_file), config, kohya_files[m])
    if state_path is not None:
        state_path.unlink(missing_ok=True)
    return result
