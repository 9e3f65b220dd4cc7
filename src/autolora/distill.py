"""Distilled AutoLoRA: a LoRA whose plain LoRA+CFG sampling reproduces AutoLoRA-guided sampling.

The paper's stated limitation is cost (two guided branches per step) and it names distillation as the fix. The
teacher is the base model with the LoRA under AutoLoRA guidance (``generate(method="autolora")``); the student is
the same LoRA, initialised from its weights, trained so that its own classifier-free-guided prediction on the
teacher's sampling trajectories equals the teacher's guided prediction:

    L = E || cfg_student(x_t, t; w2) - eps_autolora(x_t, t) ||^2             x_t on the teacher's trajectories

Targets are recorded once from the teacher's own sampling of the LoRA's prompts (every step of every seed) into
the work folder; training is seeded and checkpointed there, so a killed run resumes where it stopped. The student
is written as a standard diffusers LoRA file that every LoRA loader reads, to be applied at the scale the
teacher's LoRA had: its images then cost exactly LoRA+CFG's one guided branch per step.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft.utils import get_peft_model_state_dict
from torch import nn

from autolora.checks import at_least, check_bounds, positive
from autolora.errors import ConfigError
from autolora.images import atomic_write_bytes
from autolora.params import GenerationParams
from autolora.pipelines import (
    _branch_cfg,
    _cfg_scale,
    _concat_inputs,
    _denoiser,
    _latent_name,
    _PipelineCall,
    _step_inputs,
    generate,
    pipeline_family,
)
from autolora.training import Schedule, StageResult, run_stage

logger = logging.getLogger(__name__)

# Which ``save_lora_weights`` argument takes the LoRA layers of which pipeline component.
_SAVE_ARGUMENTS = {
    "unet": "unet",
    "transformer": "transformer",
    "text_encoder": "text_encoder",
    "text_encoder_2": "text_encoder_2",
}


@dataclass(frozen=True)
class DistillConfig:
    """What the teacher samples and how the student is trained; the work folder is tied to these values."""

    prompts: tuple[str, ...]
    gamma: float = 1.5
    cfg_base: float | None = None
    cfg_lora: float | None = None
    num_inference_steps: int = 20
    #: Teacher trajectories per prompt (image i of a prompt starts from seed + i).
    seeds_per_prompt: int = at_least(4)
    seed: int = 1000
    steps: int = at_least(300)
    batch_size: int = at_least(16)
    learning_rate: float = positive(1e-3)
    checkpoint_every: int = at_least(50)

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ConfigError("distill needs at least one prompt")
        self.teacher  # noqa: B018 -- checks the sampling options as generate would
        check_bounds(self, "distill")

    @property
    def teacher(self) -> GenerationParams:
        """The teacher's sampling: AutoLoRA, ``seeds_per_prompt`` images per prompt from ``seed`` on."""
        return GenerationParams(
            gamma=self.gamma,
            cfg_base=self.cfg_base,
            cfg_lora=self.cfg_lora,
            num_inference_steps=self.num_inference_steps,
            seed=self.seed,
            num_images=self.seeds_per_prompt,
        )


@dataclass
class Trajectories:
    """The teacher's samples: denoiser input, timestep and AutoLoRA prediction of every step, with its prompt."""

    latents: torch.Tensor
    timesteps: torch.Tensor
    targets: torch.Tensor
    prompt_index: torch.Tensor


def teacher_trajectories(pipe: Any, config: DistillConfig) -> Trajectories:
    """Sample every prompt with AutoLoRA (the active adapters as the LoRA) and record each step's prediction.

    A forward hook on the denoiser sees the pipeline's own calls only (the guidance hook evaluates its branches
    through the original forward, below the hook), each returning the guided prediction for the call's latents.
    The step-end callback runs only in the pipeline's own run, not while ``generate`` captures conditioning, so
    it keeps the last call of each step.
    """
    denoiser = _denoiser(pipe)
    latent_name = _latent_name(denoiser)
    last: dict[str, torch.Tensor] = {}
    steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = []

    def record(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        latents = kwargs[latent_name] if latent_name in kwargs else args[0]
        timestep = kwargs["timestep"] if "timestep" in kwargs else args[1]
        sample = output[0] if isinstance(output, tuple) else output.sample
        rows = config.seeds_per_prompt
        last.update(
            latents=latents[:rows].clone(),
            timestep=torch.as_tensor(timestep).reshape(-1)[:1],
            target=sample[:rows].clone(),
        )

    handle = denoiser.register_forward_hook(record, with_kwargs=True)
    try:
        for index, prompt in enumerate(config.prompts):

            def keep_step(_pipe: Any, _step: int, _t: Any, _kwargs: dict, index: int = index) -> dict:
                steps.append((last["latents"], last["timestep"], last["target"], index))
                return {}

            generate(
                pipe,
                prompt,
                config.teacher,
                progress=False,
                output_type="latent",
                callback_on_step_end=keep_step,
            )
            logger.info("teacher: %d/%d prompts sampled", index + 1, len(config.prompts))
    finally:
        handle.remove()
    rows = config.seeds_per_prompt
    return Trajectories(
        latents=torch.cat([latents for latents, _, _, _ in steps]),
        timesteps=torch.cat([t.expand(rows) for _, t, _, _ in steps]),
        targets=torch.cat([target for _, _, target, _ in steps]),
        prompt_index=torch.tensor([index for _, _, _, index in steps for _ in range(rows)]),
    )


def distill(
    pipe: Any, out_file: str | Path, config: DistillConfig, work: str | Path | None = None
) -> StageResult:
    """Train the pipeline's active LoRA into a student whose LoRA+CFG reproduces AutoLoRA; write ``out_file``.

    The pipeline must have exactly one active adapter (the LoRA, as loaded with ``load_lora``); its weights are
    the student's starting point and are trained in place (load the LoRA again to get the original back).
    ``work`` (default ``<out_file>.work``) keeps the teacher's trajectories and the training checkpoint.
    """
    # 1. Check everything before any sampling: one adapter, a supported pipeline, a work folder of this config.
    family = pipeline_family(pipe)
    adapters = pipe.get_active_adapters()
    if len(adapters) != 1:
        raise ConfigError(f"distill needs exactly one active LoRA, got {adapters or 'none'}")
    (adapter,) = adapters
    w_lora = _cfg_scale(config.cfg_lora, pipe)
    out_file = Path(out_file)
    work = Path(work) if work is not None else out_file.with_name(out_file.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    _claim_work_folder(work, config, adapter, _adapter_digest(pipe, adapter))

    # 2. The teacher's trajectories, sampled once.
    trajectories_file = work / "teacher.pt"
    if trajectories_file.exists():
        trajectories = Trajectories(**torch.load(trajectories_file))
    else:
        trajectories = teacher_trajectories(pipe, config)
        _save(trajectories_file, asdict(trajectories))

    # 3. The student: the LoRA's own denoiser weights, trained on the teacher's predictions.
    denoiser = _denoiser(pipe)
    latent_name = _latent_name(denoiser)
    # The student's conditioning: each prompt's LoRA-branch denoiser inputs, as the pipeline makes them.
    student_params = GenerationParams(method="lora", cfg_lora=config.cfg_lora)
    conditions = [
        _PipelineCall(pipe, family, prompt, student_params, {}, progress=False).capture_denoiser_inputs(
            w_lora
        )
        for prompt in config.prompts
    ]
    student = {
        name: p for name, p in denoiser.named_parameters() if "lora_" in name and f".{adapter}." in name
    }
    requires_grad = {name: p.requires_grad for name, p in denoiser.named_parameters()}
    for name, parameter in denoiser.named_parameters():
        parameter.requires_grad_(name in student)

    def loss_fn(generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(len(trajectories.targets), (config.batch_size,), generator=generator)
        calls, rows = [], []
        for i in index.tolist():
            sample_calls = [
                _step_inputs(
                    captured, latent_name, trajectories.latents[i : i + 1], trajectories.timesteps[i : i + 1]
                )
                for captured in conditions[int(trajectories.prompt_index[i])]
            ]
            calls += sample_calls
            rows.append([call[latent_name].shape[0] for call in sample_calls])
        output = denoiser(**_concat_inputs(calls, family.unbatched_inputs))[0]
        outputs = iter(output.split([r for sample_rows in rows for r in sample_rows]))
        prediction = torch.cat(
            [_branch_cfg([next(outputs) for _ in sample_rows], w_lora, family) for sample_rows in rows]
        )
        return nn.functional.mse_loss(prediction, trajectories.targets[index])

    try:
        schedule = Schedule(
            config.steps, config.learning_rate, checkpoint_every=config.checkpoint_every, weight_decay=0.0
        )
        modules = {"student": nn.ParameterList(student.values())}
        result = run_stage(
            "distill",
            modules,
            student.values(),
            loss_fn,
            schedule,
            seed=config.seed,
            checkpoint=work / "checkpoint.pt",
        )
    finally:
        for name, parameter in denoiser.named_parameters():
            parameter.requires_grad_(requires_grad[name])

    # 4. A standard LoRA file: the trained denoiser layers, the text encoders' LoRA layers unchanged.
    save_lora(pipe, adapter, out_file)
    return result


def save_lora(pipe: Any, adapter: str, out_file: Path) -> None:
    """Write ``adapter``'s layers of every pipeline component that has them with ``save_lora_weights``."""
    layers: dict[str, Any] = {}
    for component, argument in _SAVE_ARGUMENTS.items():
        module = getattr(pipe, component, None)
        if module is None or adapter not in getattr(module, "peft_config", {}):
            continue
        layers[f"{argument}_lora_layers"] = get_peft_model_state_dict(module, adapter_name=adapter)
        # The adapter's rank and alpha, so the file loads back with the same scale.
        layers[f"{argument}_lora_adapter_metadata"] = module.peft_config[adapter].to_dict()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    type(pipe).save_lora_weights(out_file.parent, weight_name=out_file.name, **layers)


def _adapter_digest(pipe: Any, adapter: str) -> str:
    """A digest of ``adapter``'s weights as loaded, so a work folder is never resumed with another LoRA."""
    digest = hashlib.sha256()
    for module in (getattr(pipe, component, None) for component in _SAVE_ARGUMENTS):
        if module is None:
            continue
        for name, parameter in module.named_parameters():
            if "lora_" in name and f".{adapter}." in name:
                digest.update(name.encode())
                digest.update(parameter.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()[:16]


def _claim_work_folder(work: Path, config: DistillConfig, adapter: str, weights: str) -> None:
    """Tie ``work`` to this configuration and LoRA; refuse to resume a run made with other settings."""
    # The number of steps is left out: a run resumed with more steps trains further.
    settings = {**asdict(config), "prompts": list(config.prompts), "adapter": adapter, "weights": weights}
    del settings["steps"], settings["checkpoint_every"]
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    marker = work / "config.json"
    if marker.exists():
        previous = json.loads(marker.read_text())
        if previous.get("fingerprint") != fingerprint:
            raise ConfigError(
                f"{work} holds a distillation with other settings; remove it or choose another work folder"
            )
        return
    atomic_write_bytes(marker, json.dumps({"fingerprint": fingerprint, **settings}, indent=2).encode())


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    atomic_write_bytes(path, buffer.getvalue())
