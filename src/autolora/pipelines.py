"""AutoLoRA guidance inside diffusers pipelines: ``load_pipeline``, ``default_cfg_scale`` and ``generate``.

The pipeline keeps its own denoising loop, scheduler, callbacks, latents and decoding. ``generate`` runs the
pipeline as the LoRA model with CFG(w2) and hooks its denoiser (diffusers' ``HookRegistry``): on each guided
step the hook evaluates both branches itself and returns the AutoLoRA prediction in every slot the pipeline
will combine, so the pipeline's own ``u + w (c - u)`` hands it back unchanged (u = c).

Each branch's conditioning (prompt embeddings, pooled embeddings, time ids, ...) is captured beforehand by
running the pipeline up to its first denoiser call(s) with that branch's adapters and CFG scale, so a text-
encoder LoRA is seen by the LoRA branch only, whatever the pipeline's encoding details.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from autolora.branches import BASE_ADAPTER, Branch, BranchSwitcher, pipeline_modules
from autolora.errors import ConfigError, InputFileError
from autolora.guidance import CADSSchedule, GuidanceSchedule, autolora_cfg, check_sigma_interval

_HOOK_NAME = "autolora_guidance"


@dataclass(frozen=True)
class PipelineFamily:
    """What ``generate`` needs to know about one kind of text-to-image pipeline."""

    default_cfg: float
    # The __call__ argument that is classifier-free guidance (Flux's ``guidance_scale`` is the distilled
    # guidance embedding; its real CFG is ``true_cfg_scale``).
    cfg_argument: str
    # True: the pipeline calls the denoiser once on [uncond, cond]; False: twice, cond first, then uncond.
    batched_cfg: bool
    # Denoiser inputs without a batch dimension (shared by every row).
    unbatched_inputs: frozenset[str] = frozenset()


# Paper defaults: SD1.5 7.5, SDXL 5.0, SD3 7.0. Flux (guidance-distilled) runs without true CFG, as it is
# used in practice; its distilled ``guidance_scale`` keeps the pipeline's default and passes through.
FAMILIES = {
    "StableDiffusionPipeline": PipelineFamily(7.5, "guidance_scale", batched_cfg=True),
    "StableDiffusionXLPipeline": PipelineFamily(5.0, "guidance_scale", batched_cfg=True),
    "StableDiffusion3Pipeline": PipelineFamily(7.0, "guidance_scale", batched_cfg=True),
    "FluxPipeline": PipelineFamily(
        1.0, "true_cfg_scale", batched_cfg=False, unbatched_inputs=frozenset({"txt_ids", "img_ids"})
    ),
}


def pipeline_family(pipe: Any) -> PipelineFamily:
    """The ``PipelineFamily`` of ``pipe`` (by class, subclasses included)."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    raise ConfigError(f"{type(pipe).__name__} is not supported; supported pipelines: {', '.join(FAMILIES)}")


def default_cfg_scale(pipe: Any) -> float:
    """The paper's CFG scale for ``pipe``: SD1.5 7.5, SDXL 5.0, SD3 7.0; Flux 1.0 (no true CFG).

    The miniature world's pipeline gets its own calibrated scale (``WORLD_CFG``): SD1.5's 7.5
    over-saturates a model that small.
    """
    family = pipeline_family(pipe)
    from autolora.world.assets import ASSETS_DIR, WORLD_CFG

    name = getattr(pipe, "name_or_path", None)
    if name and Path(name).resolve() == (ASSETS_DIR / "pipeline").resolve():
        return WORLD_CFG
    return family.default_cfg


def load_pipeline(
    model: str, *, torch_dtype: torch.dtype | None = None, device: str | None = None
) -> DiffusionPipeline:
    """Load a text-to-image pipeline from a Hub id or a local folder; ``"world"`` is the miniature world's."""
    if model == "world":
        from autolora.world.assets import base_pipeline_path

        model = str(base_pipeline_path())
    local = Path(model).expanduser()
    looks_local = local.is_absolute() or model.startswith(".") or local.exists() or model.count("/") > 1
    if looks_local and not local.is_dir():
        raise InputFileError(f"model folder not found: {model}")
    try:
        pipe = DiffusionPipeline.from_pretrained(
            str(local) if looks_local else model, torch_dtype=torch_dtype
        )
    except (OSError, ValueError) as error:
        raise InputFileError(f"cannot load pipeline {model!r}: {error}") from error
    pipeline_family(pipe)
    return pipe.to(device) if device is not None else pipe


def generate(
    pipe: Any,
    prompt: str,
    *,
    method: Literal["autolora", "lora", "base"] = "autolora",
    gamma: float = 1.5,
    cfg_base: float | None = None,
    cfg_lora: float | None = None,
    negative_prompt: str | None = None,
    num_inference_steps: int | None = None,
    seed: int = 0,
    num_images: int = 1,
    height: int | None = None,
    width: int | None = None,
    interval: tuple[float, float] = (0.0, 1.0),
    gamma_end: float | None = None,
    lora_scale: float | None = None,
    branch_mode: Literal["batched", "sequential"] = "batched",
    reference: str | float | dict[str, float] = "base",
    cfg_interval: tuple[float, float] | None = None,
    cads_noise: float | None = None,
    cads_tau: tuple[float, float] = (0.6, 0.9),
    cads_psi: float = 1.0,
    progress: bool = True,
    **pipeline_kwargs: Any,
) -> list[PIL.Image.Image]:
    """Generate ``num_images`` images of ``prompt`` with AutoLoRA guidance, the LoRA model or the base model.

    Image ``i`` starts from the noise of ``torch.Generator("cpu").manual_seed(seed + i)`` whatever the method,
    so methods compare on paired noise. See docs/guidance.md for every parameter.
    """
    # 1. Validate and resolve defaults.
    family = pipeline_family(pipe)
    if method not in ("autolora", "lora", "base"):
        raise ConfigError(f"method must be 'autolora', 'lora' or 'base', got {method!r}")
    if branch_mode not in ("batched", "sequential"):
        raise ConfigError(f"branch_mode must be 'batched' or 'sequential', got {branch_mode!r}")
    if num_images < 1:
        raise ConfigError(f"num_images must be >= 1, got {num_images}")
    reserved = {family.cfg_argument, "true_cfg_scale", "generator", "num_images_per_prompt", "latents"}
    clashes = sorted(reserved & set(pipeline_kwargs))
    if clashes:
        raise ConfigError(
            f"{', '.join(clashes)} are set by generate (use cfg_base / cfg_lora, seed, num_images)"
        )
    if method == "autolora" and pipeline_kwargs.get("guidance_rescale"):
        # The pipeline would rescale the already guided prediction against itself, a silent no-op.
        raise ConfigError("guidance_rescale is not supported with method='autolora'")
    schedule = GuidanceSchedule(gamma=gamma, gamma_end=gamma_end, interval=tuple(interval))
    baselines = _cfg_baselines(family, method, cfg_interval, cads_noise, cads_tau, cads_psi)
    w_base = _cfg_scale("cfg_base", cfg_base, pipe)
    w_lora = _cfg_scale("cfg_lora", cfg_lora, pipe)
    if lora_scale is not None and not lora_scale >= 0:
        raise ConfigError(f"lora_scale must be >= 0, got {lora_scale}")
    switcher = BranchSwitcher(pipeline_modules(pipe))
    lora_branch = _lora_branch(pipe, lora_scale) if method != "base" else {}
    reference_branch = _reference_branch(pipe, reference, lora_branch) if method != "base" else {}
    sizes = {"num_inference_steps": num_inference_steps, "height": height, "width": width}
    call = _PipelineCall(
        pipe,
        family,
        {"prompt": prompt, **{k: v for k, v in sizes.items() if v is not None}, **pipeline_kwargs},
        negative_prompt=negative_prompt,
        num_images=num_images,
        seed=seed,
        progress=progress,
    )

    # 2. Run the base or the LoRA model alone, or AutoLoRA; always give the user's adapter state back.
    try:
        if method != "autolora":
            switcher.apply({} if method == "base" else lora_branch)
            w = w_base if method == "base" else w_lora
            if baselines is None:
                return call.run(w)
            from autolora.cfg_hooks import CFGHook

            hook = CFGHook(
                num_images=num_images, w=w, seeds=call.seeds, scheduler=pipe.scheduler, **baselines
            )
            with hooked(_denoiser(pipe), hook):
                return call.run(w)
        branches = (_BranchInputs(reference_branch, w_base), _BranchInputs(lora_branch, w_lora))
        return _run_autolora(call, switcher, schedule, branches, branch_mode)
    finally:
        switcher.restore()


def _run_autolora(
    call: _PipelineCall,
    switcher: BranchSwitcher,
    schedule: GuidanceSchedule,
    branches: tuple[_BranchInputs, _BranchInputs],
    branch_mode: Literal["batched", "sequential"],
) -> list[PIL.Image.Image]:
    """Capture each branch's denoiser inputs, then run the pipeline as the LoRA model with the guidance hook."""
    for branch in branches:
        switcher.apply(branch.branch)
        branch.inputs = call.capture_denoiser_inputs(branch.w)
    reference, lora = branches
    if branch_mode == "batched" and not _mixable(reference.branch, lora.branch):
        warnings.warn(
            "batched mode runs one adapter per branch; this request stacks adapters or guides from the same "
            "adapter at another scale, so its branches run sequentially",
            stacklevel=3,
        )
        branch_mode = "sequential"
    hook = AutoLoRAHook(
        switcher=switcher,
        schedule=schedule,
        family=call.family,
        num_images=call.num_images,
        branches=branches,
        branch_mode=branch_mode,
        scheduler=call.pipe.scheduler,
    )
    with hooked(_denoiser(call.pipe), hook):
        return call.run(lora.w)


def _cfg_baselines(
    family: PipelineFamily,
    method: str,
    cfg_interval: tuple[float, float] | None,
    cads_noise: float | None,
    cads_tau: tuple[float, float],
    cads_psi: float,
) -> dict[str, Any] | None:
    """The CFG baselines' settings (limited-interval CFG, CADS) for ``CFGHook``, or None when neither is on."""
    cads = CADSSchedule(cads_noise, tuple(cads_tau), cads_psi) if cads_noise is not None else None
    interval = check_sigma_interval(tuple(cfg_interval)) if cfg_interval is not None else None
    if cads is None and interval is None:
        return None
    if method == "autolora":
        # They change one model's CFG; AutoLoRA has its own interval and gamma ramp.
        raise ConfigError("cfg_interval and cads_noise apply to method 'lora' or 'base', not 'autolora'")
    if not family.batched_cfg:
        raise ConfigError(
            "cfg_interval and cads_noise need a pipeline that batches [uncond, cond] (SD, SDXL, SD3)"
        )
    return {"interval": interval, "cads": cads}


def _cfg_scale(name: str, value: float | None, pipe: Any) -> float:
    if value is None:
        return default_cfg_scale(pipe)
    # Pipelines treat w <= 1 as "no CFG"; below 1 would silently mean 1, so it is refused.
    if not value >= 1:
        raise ConfigError(f"{name} must be >= 1 (1 = no classifier-free guidance), got {value}")
    return float(value)


def _lora_branch(pipe: Any, lora_scale: float | None) -> Branch:
    active = pipe.get_active_adapters()
    if not active:
        raise ConfigError("no LoRA is loaded: load one with load_lora(pipe, ...) or use method='base'")
    return dict.fromkeys(active, lora_scale)


def _reference_branch(pipe: Any, reference: str | float | dict[str, float], lora_branch: Branch) -> Branch:
    if isinstance(reference, str):
        if reference != "base":
            raise ConfigError(
                f"reference must be 'base', a scale or a dict adapter->scale, got {reference!r}"
            )
        return {}
    if isinstance(reference, dict):
        loaded = {name for names in pipe.get_list_adapters().values() for name in names}
        unknown = sorted(set(reference) - loaded)
        if unknown:
            raise ConfigError(f"reference adapters not loaded: {unknown}; loaded: {sorted(loaded)}")
        branch = dict(reference)
    else:
        branch = dict.fromkeys(lora_branch, reference)
    negative = {name: scale for name, scale in branch.items() if not float(scale) >= 0}
    if negative:
        raise ConfigError(f"reference scales must be >= 0, got {negative}")
    return {name: float(scale) for name, scale in branch.items()}


def _mixable(reference_branch: Branch, lora_branch: Branch) -> bool:
    """peft's mixed batch gives each row one adapter at its one current scale."""
    return (
        len(reference_branch) <= 1 and len(lora_branch) == 1 and not set(reference_branch) & set(lora_branch)
    )


def _denoiser(pipe: Any) -> torch.nn.Module:
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


class _CaptureComplete(Exception):
    """Raised from the step-end callback once the first step's denoiser inputs are recorded."""


class _PipelineCall:
    """One pipeline request (prompt, seeds, options), runnable at a CFG scale or up to its first step."""

    def __init__(
        self,
        pipe: Any,
        family: PipelineFamily,
        kwargs: dict[str, Any],
        *,
        negative_prompt: str | None,
        num_images: int,
        seed: int,
        progress: bool,
    ) -> None:
        self.pipe, self.family = pipe, family
        self.kwargs = {**kwargs, "num_images_per_prompt": num_images}
        self.negative_prompt = negative_prompt
        self.num_images = num_images
        self.seed = seed
        self.progress = progress

    @property
    def seeds(self) -> list[int]:
        """The seed of each image: ``seed + i``."""
        return [self.seed + i for i in range(self.num_images)]

    def _arguments(self, w: float) -> dict[str, Any]:
        arguments = {
            **self.kwargs,
            self.family.cfg_argument: w,
            # Paired noise: image i always starts from seed + i, whatever the method or number of images.
            "generator": [torch.Generator("cpu").manual_seed(seed) for seed in self.seeds],
        }
        if self.negative_prompt is not None:
            arguments["negative_prompt"] = self.negative_prompt
        elif w > 1 and not self.family.batched_cfg:
            # Flux runs true CFG only when a negative prompt is given; the empty prompt is the usual uncond.
            arguments["negative_prompt"] = ""
        return arguments

    def run(self, w: float) -> list[PIL.Image.Image]:
        with _progress_bar(self.pipe, self.progress):
            return self.pipe(**self._arguments(w)).images

    def capture_denoiser_inputs(self, w: float) -> list[dict[str, Any]]:
        """The denoiser's inputs of the first step at CFG scale ``w``, without evaluating the denoiser."""
        capture = _CaptureHook()

        def stop(*_: Any) -> dict[str, Any]:
            raise _CaptureComplete

        arguments = {**self._arguments(w), "callback_on_step_end": stop, "output_type": "latent"}
        arguments.pop("callback_on_step_end_tensor_inputs", None)
        with (
            _progress_bar(self.pipe, False),
            hooked(_denoiser(self.pipe), capture),
            suppress(_CaptureComplete),
        ):
            self.pipe(**arguments)
        return capture.calls


@contextmanager
def _progress_bar(pipe: Any, enabled: bool) -> Iterator[None]:
    saved = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(**{**saved, "disable": not enabled})
    try:
        yield
    finally:
        pipe._progress_bar_config = saved


@contextmanager
def hooked(module: torch.nn.Module, hook: ModelHook) -> Iterator[None]:
    """Register ``hook`` on ``module`` with diffusers' hook registry for the duration of the block."""
    registry = HookRegistry.check_if_exists_or_initialize(module)
    registry.register_hook(hook, _HOOK_NAME)
    try:
        yield
    finally:
        registry.remove_hook(_HOOK_NAME, recurse=False)


def _keyword_inputs(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The denoiser call as keyword arguments only, whatever mix of positional arguments the pipeline used."""
    signature = inspect.signature(type(module).forward)
    bound = signature.bind(module, *args, **kwargs)
    inputs: dict[str, Any] = {}
    for name, value in list(bound.arguments.items())[1:]:
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            inputs.update(value)
        else:
            inputs[name] = value
    return inputs


def _latent_name(module: torch.nn.Module) -> str:
    """The name of the denoiser's noisy-latent argument (``sample`` for UNets, ``hidden_states`` else)."""
    return list(inspect.signature(type(module).forward).parameters)[1]


def _as_output(sample: torch.Tensor, inputs: dict[str, Any]) -> Any:
    """``sample`` in the container the denoiser's caller asked for (a tuple, or an output with ``.sample``)."""
    return (sample,) if inputs.get("return_dict", True) is False else Transformer2DModelOutput(sample=sample)


class _CaptureHook(ModelHook):
    """Records the denoiser's inputs and returns zeros instead of evaluating it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        inputs = _keyword_inputs(module, args, kwargs)
        self.calls.append(inputs)
        return _as_output(torch.zeros_like(inputs[_latent_name(module)]), inputs)


@dataclass
class _BranchInputs:
    """One guidance branch: its adapters, its CFG scale, its denoiser inputs of one step (once captured)."""

    branch: Branch
    w: float
    inputs: list[dict[str, Any]] = field(default_factory=list)


class AutoLoRAHook(ModelHook):
    """Denoiser hook: on guided steps, evaluates the base and LoRA branches and returns Eq. 7's prediction."""

    def __init__(
        self,
        *,
        switcher: BranchSwitcher,
        schedule: GuidanceSchedule,
        family: PipelineFamily,
        num_images: int,
        branches: tuple[_BranchInputs, _BranchInputs],
        branch_mode: Literal["batched", "sequential"],
        scheduler: Any,
    ) -> None:
        super().__init__()
        self.switcher, self.schedule, self.family, self.num_images = switcher, schedule, family, num_images
        self.reference, self.lora = branches
        self.branch_mode = branch_mode
        self.scheduler = scheduler
        self.calls_per_step = len(self.lora.inputs)
        self.num_calls = 0
        self.guided: torch.Tensor | None = None
        self.latent_name = ""

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self.latent_name = _latent_name(module)
        return module

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        step, slot = divmod(self.num_calls, self.calls_per_step)
        self.num_calls += 1
        num_steps = len(self.scheduler.timesteps)
        if not self.schedule.is_active(step, num_steps):
            # Outside the interval the step is the LoRA model's own CFG: the pipeline's call, unchanged.
            return self.fn_ref.original_forward(*args, **kwargs)
        inputs = _keyword_inputs(module, args, kwargs)
        latents = inputs[self.latent_name]
        if slot == 0:
            self.guided = self._guided_prediction(
                latents[: self.num_images], inputs["timestep"], step, num_steps
            )
        # Every slot the pipeline combines gets the guided prediction, so its CFG formula returns it unchanged.
        repeats = latents.shape[0] // self.num_images
        sample = self.guided.repeat(repeats, *([1] * (self.guided.ndim - 1)))
        return _as_output(sample, inputs)

    def _guided_prediction(
        self, latents: torch.Tensor, timestep: Any, step: int, num_steps: int
    ) -> torch.Tensor:
        """Algorithm 2, one step: four predictions (two with w = 1), combined by Eq. 7."""
        calls = {
            branch_id: [self._branch_call(inputs, latents, timestep) for inputs in branch.inputs]
            for branch_id, branch in (("reference", self.reference), ("lora", self.lora))
        }
        if self.branch_mode == "batched":
            predictions = self._batched_forward(calls)
        else:
            predictions = self._sequential_forward(calls)
        self.switcher.apply(self.lora.branch)
        eps_base_uncond, eps_base_cond = self._uncond_cond(predictions["reference"], self.reference.w)
        eps_lora_uncond, eps_lora_cond = self._uncond_cond(predictions["lora"], self.lora.w)
        return autolora_cfg(
            eps_base_uncond,
            eps_base_cond,
            eps_lora_uncond,
            eps_lora_cond,
            w_base=self.reference.w,
            w_lora=self.lora.w,
            gamma=self.schedule.gamma_at(step, num_steps),
        )

    def _branch_call(self, captured: dict[str, Any], latents: torch.Tensor, timestep: Any) -> dict[str, Any]:
        """A captured branch input with this step's latents and timestep."""
        rows = captured[self.latent_name].shape[0]
        inputs = {**captured, "return_dict": False}
        inputs[self.latent_name] = latents.repeat(rows // self.num_images, *([1] * (latents.ndim - 1)))
        if isinstance(timestep, torch.Tensor) and timestep.ndim > 0:
            # Per-row timesteps (SD3, Flux) are all equal within a step.
            timestep = timestep.reshape(-1)[:1].expand(rows)
        inputs["timestep"] = timestep
        return inputs

    def _sequential_forward(self, calls: dict[str, list[dict[str, Any]]]) -> dict[str, list[torch.Tensor]]:
        predictions = {}
        for branch_id, branch in (("reference", self.reference), ("lora", self.lora)):
            self.switcher.apply(branch.branch)
            predictions[branch_id] = [
                self.fn_ref.original_forward(**inputs)[0] for inputs in calls[branch_id]
            ]
        return predictions

    def _batched_forward(self, calls: dict[str, list[dict[str, Any]]]) -> dict[str, list[torch.Tensor]]:
        """One forward over [reference rows, LoRA rows]; peft's mixed batch keeps each row to its adapter."""
        all_calls = calls["reference"] + calls["lora"]
        rows = [inputs[self.latent_name].shape[0] for inputs in all_calls]
        reference_name = next(iter(self.reference.branch), BASE_ADAPTER)
        lora_name = next(iter(self.lora.branch))
        num_reference = sum(rows[: len(calls["reference"])])
        adapter_names = [reference_name] * num_reference + [lora_name] * (sum(rows) - num_reference)
        self.switcher.apply({**self.reference.branch, **self.lora.branch})
        with self.switcher.mixed_batch(adapter_names):
            output = self.fn_ref.original_forward(**_concat_inputs(all_calls, self.family.unbatched_inputs))[
                0
            ]
        outputs = list(output.split(rows))
        return {"reference": outputs[: len(calls["reference"])], "lora": outputs[len(calls["reference"]) :]}

    def _uncond_cond(
        self, predictions: list[torch.Tensor], w: float
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """A branch's (unconditional, conditional) predictions, laid out as its pipeline lays them out."""
        if w == 1:
            return None, predictions[0]
        if self.family.batched_cfg:
            eps_uncond, eps_cond = predictions[0].chunk(2)
            return eps_uncond, eps_cond
        eps_cond, eps_uncond = predictions
        return eps_uncond, eps_cond


def _concat_inputs(calls: list[dict[str, Any]], unbatched: frozenset[str]) -> dict[str, Any]:
    """Several denoiser calls' inputs as one batch (batched tensors concatenated, shared inputs kept once)."""
    first = calls[0]
    merged: dict[str, Any] = {}
    for name, value in first.items():
        values = [inputs[name] for inputs in calls]
        if isinstance(value, dict):
            merged[name] = _concat_inputs(values, unbatched)
        elif isinstance(value, torch.Tensor) and value.ndim > 0 and name not in unbatched:
            merged[name] = torch.cat(values)
        else:
            merged[name] = value
    return merged
