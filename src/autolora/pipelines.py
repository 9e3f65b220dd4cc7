"""AutoLoRA guidance inside diffusers pipelines: ``load_pipeline``, ``default_cfg_scale`` and ``generate``.

The pipeline keeps its own denoising loop, scheduler, callbacks, latents and decoding. ``generate`` runs the
pipeline as the LoRA model with CFG(w2) and hooks its denoiser (diffusers' ``HookRegistry``): on each guided
step the hook evaluates both branches itself and returns the AutoLoRA prediction in every slot the pipeline
will combine, so the pipeline's own ``u + w (c - u)`` hands it back unchanged (u = c).

The reference branch's conditioning (prompt embeddings, pooled embeddings, time ids, ...) is captured beforehand
by running the pipeline up to its first denoiser call(s) with that branch's adapters and CFG scale; the LoRA
branch's is the pipeline's own call (captured the same way where the pipeline makes two calls per step). So a
text-encoder LoRA is seen by the LoRA branch only, whatever the pipeline's encoding details.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from autolora.branches import BASE_ADAPTER, Branch, BranchSwitcher, pipeline_modules
from autolora.delta_cache import DeltaCache, DeltaCachePolicy
from autolora.devices import TorchDType
from autolora.devices import torch_dtype as dtype_by_name
from autolora.errors import ConfigError, InputFileError
from autolora.guidance import GuidanceSchedule, autolora, cfg
from autolora.params import BranchMode, GenerationParams
from autolora.sources import is_local, model_default_cfg, resolve_model

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
    """The CFG scale a model registered with its alias (``autolora.sources``), else the paper's for its family:
    SD1.5 7.5, SDXL 5.0, SD3 7.0; Flux 1.0 (no true CFG)."""
    family = pipeline_family(pipe)
    name = getattr(pipe, "name_or_path", None)
    registered = model_default_cfg(name) if name and is_local(name) else None
    return family.default_cfg if registered is None else registered


def load_pipeline(
    model: str, *, torch_dtype: torch.dtype | TorchDType | None = None, device: str | None = None
) -> DiffusionPipeline:
    """Load a text-to-image pipeline from a Hub id, a local folder or a model alias (e.g. ``"world"``)."""
    if isinstance(torch_dtype, str):
        torch_dtype = dtype_by_name(torch_dtype)
    source = resolve_model(model)
    local = is_local(source)
    if local and not Path(source).expanduser().is_dir():
        raise InputFileError(f"model folder not found: {model}")
    try:
        pipe = DiffusionPipeline.from_pretrained(
            str(Path(source).expanduser()) if local else source, torch_dtype=torch_dtype
        )
    except (OSError, ValueError) as error:
        raise InputFileError(f"cannot load pipeline {model!r}: {error}") from error
    pipeline_family(pipe)
    return pipe.to(device) if device is not None else pipe


def generate(
    pipe: Any,
    prompt: str,
    params: GenerationParams | None = None,
    *,
    progress: bool = True,
    **options: Any,
) -> list[PIL.Image.Image]:
    """Generate ``params.num_images`` images of ``prompt`` with AutoLoRA guidance, the LoRA or the base model.

    ``options`` are ``GenerationParams`` fields (``method``, ``gamma``, ``cfg_base``, ``seed``, ...; they
    override ``params``) and arguments of the pipeline call. Image ``i`` starts from the noise of
    ``torch.Generator("cpu").manual_seed(seed + i)`` whatever the method, so methods compare on paired noise.
    See docs/guidance.md for every parameter.
    """
    # 1. Check every parameter before the first denoiser call.
    family = pipeline_family(pipe)
    params, pipeline_kwargs = GenerationParams.from_options(options, base=params)
    _check_pipeline_kwargs(family, params, pipeline_kwargs)
    call = _PipelineCall(pipe, family, prompt, params, pipeline_kwargs, progress=progress)
    w_base, w_lora = _cfg_scale(params.cfg_base, pipe), _cfg_scale(params.cfg_lora, pipe)
    switcher = BranchSwitcher(pipeline_modules(pipe))
    lora_branch = _lora_branch(pipe, params.lora_scale) if params.method != "base" else {}
    reference_branch = (
        _reference_branch(pipe, params.reference, lora_branch) if params.method == "autolora" else {}
    )

    # 2. Run one model alone (the base or the LoRA model, or AutoLoRA whose other branch has weight zero on every
    # step, which is then never evaluated), or AutoLoRA; always give the user's adapter state back.
    method = params.method
    if method == "autolora":
        method = {"lora": "lora", "reference": "base", None: "autolora"}[params.schedule.single_branch()]
    try:
        if method == "base":
            switcher.apply(reference_branch)
            return call.run(w_base)
        if method == "lora":
            switcher.apply(lora_branch)
            return call.run(w_lora)
        branches = (_BranchInputs(reference_branch, w_base), _BranchInputs(lora_branch, w_lora))
        return _run_autolora(call, switcher, params.schedule, branches, params.branch_mode, params.cache)
    finally:
        switcher.restore()


def _check_pipeline_kwargs(family: PipelineFamily, params: GenerationParams, kwargs: dict[str, Any]) -> None:
    """Refuse pipeline arguments that ``generate`` sets itself or that would silently undo the guidance."""
    reserved = {family.cfg_argument, "true_cfg_scale", "generator", "num_images_per_prompt", "latents"}
    clashes = sorted(reserved & set(kwargs))
    if clashes:
        raise ConfigError(
            f"{', '.join(clashes)} are set by generate (use cfg_base / cfg_lora, seed, num_images)"
        )
    if params.method == "autolora" and kwargs.get("guidance_rescale"):
        # The pipeline would rescale the already guided prediction against itself, a silent no-op.
        raise ConfigError("guidance_rescale is not supported with method='autolora'")


def _run_autolora(
    call: _PipelineCall,
    switcher: BranchSwitcher,
    schedule: GuidanceSchedule,
    branches: tuple[_BranchInputs, _BranchInputs],
    branch_mode: BranchMode,
    cache: DeltaCachePolicy,
) -> list[PIL.Image.Image]:
    """Capture the branches' denoiser inputs, then run the pipeline as the LoRA model with the guidance hook."""
    reference, lora = branches
    # The pipeline's own run is the LoRA branch: where it makes one denoiser call per step, the hook takes that
    # branch's inputs from the call itself, saving a capture run (the costlier part of our own overhead).
    own_calls = call.family.batched_cfg or lora.w == 1
    for branch in (reference,) if own_calls else branches:
        switcher.apply(branch.branch)
        branch.inputs = call.capture_denoiser_inputs(branch.w)
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
        cache=cache,
    )
    switcher.apply(lora.branch)
    with hooked(_denoiser(call.pipe), hook):
        return call.run(lora.w)


def _cfg_scale(value: float | None, pipe: Any) -> float:
    return default_cfg_scale(pipe) if value is None else value


def _lora_branch(pipe: Any, lora_scale: float | None) -> Branch:
    active = pipe.get_active_adapters()
    if not active:
        raise ConfigError("no LoRA is loaded: load one with load_lora(pipe, ...) or use method='base'")
    return dict.fromkeys(active, lora_scale)


def _reference_branch(pipe: Any, reference: str | float | dict[str, float], lora_branch: Branch) -> Branch:
    """The reference branch's adapters (scales checked by ``GenerationParams``): none, or loaded ones."""
    if reference == "base":
        return {}
    if not isinstance(reference, dict):
        return dict.fromkeys(lora_branch, reference)
    loaded = {name for names in pipe.get_list_adapters().values() for name in names}
    unknown = sorted(set(reference) - loaded)
    if unknown:
        raise ConfigError(f"reference adapters not loaded: {unknown}; loaded: {sorted(loaded)}")
    return dict(reference)


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
        prompt: str,
        params: GenerationParams,
        pipeline_kwargs: dict[str, Any],
        *,
        progress: bool,
    ) -> None:
        self.pipe, self.family = pipe, family
        sizes = {
            "num_inference_steps": params.num_inference_steps,
            "height": params.height,
            "width": params.width,
        }
        self.kwargs = {
            "prompt": prompt,
            **{name: value for name, value in sizes.items() if value is not None},
            **pipeline_kwargs,
            "num_images_per_prompt": params.num_images,
        }
        self.negative_prompt = params.negative_prompt
        self.num_images = params.num_images
        self.seed = params.seed
        self.progress = progress

    def _arguments(self, w: float) -> dict[str, Any]:
        arguments = {
            **self.kwargs,
            self.family.cfg_argument: w,
            # Paired noise: image i always starts from seed + i, whatever the method or number of images.
            "generator": [torch.Generator("cpu").manual_seed(self.seed + i) for i in range(self.num_images)],
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
        branch_mode: BranchMode,
        scheduler: Any,
        cache: DeltaCachePolicy,
    ) -> None:
        super().__init__()
        self.switcher, self.schedule, self.family, self.num_images = switcher, schedule, family, num_images
        self.reference, self.lora = branches
        self.branch_mode = branch_mode
        self.scheduler = scheduler
        self.cache = DeltaCache(cache)
        self.calls_per_step = len(self.lora.inputs) or 1
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
        gamma = self.schedule.gamma_at(step, num_steps)
        if not self.schedule.is_active(step, num_steps) or gamma == 1:
            # The step is the LoRA model's own CFG (outside the interval, or the reference's weight is zero):
            # the pipeline's call, unchanged.
            return self.fn_ref.original_forward(*args, **kwargs)
        inputs = _keyword_inputs(module, args, kwargs)
        if not self.lora.inputs:
            # Not captured: the pipeline's own call, made as the LoRA model, is the LoRA branch's (one per step).
            self.lora.inputs = [inputs]
        latents = inputs[self.latent_name]
        if slot == 0:
            self.guided = self._guided_prediction(latents[: self.num_images], inputs["timestep"], gamma)
        # Every slot the pipeline combines gets the guided prediction, so its CFG formula returns it unchanged.
        repeats = latents.shape[0] // self.num_images
        sample = self.guided.repeat(repeats, *([1] * (self.guided.ndim - 1)))
        return _as_output(sample, inputs)

    def _guided_prediction(self, latents: torch.Tensor, timestep: Any, gamma: float) -> torch.Tensor:
        """Algorithm 2, one step: Eq. 7 from the branches whose weight is not zero, the delta cache permitting."""
        if gamma == 0:
            return self._predict([self.reference], latents, timestep)[0]
        if not self.cache.due():
            # Cached step: the LoRA branch alone, unless the adaptive rule sees its prediction drift.
            (eps_lora,) = self._predict([self.lora], latents, timestep)
            if not self.cache.drifted(eps_lora):
                return self.cache.reuse(eps_lora, gamma)
            (eps_base,) = self._predict([self.reference], latents, timestep)
        else:
            eps_base, eps_lora = self._predict([self.reference, self.lora], latents, timestep)
        self.cache.store(eps_base, eps_lora)
        return autolora(eps_base, eps_lora, gamma)

    def _predict(
        self, branches: list[_BranchInputs], latents: torch.Tensor, timestep: Any
    ) -> list[torch.Tensor]:
        """Each branch's CFG prediction at this step, both in one forward when batched; leaves the LoRA active."""
        calls = [
            [_step_inputs(inputs, self.latent_name, latents, timestep) for inputs in b.inputs]
            for b in branches
        ]
        if self.branch_mode == "batched" and len(branches) == 2:
            outputs = self._batched_forward(*calls)
        else:
            outputs = self._sequential_forward(branches, calls)
        self.switcher.apply(self.lora.branch)
        return [
            _branch_cfg(output, branch.w, self.family)
            for output, branch in zip(outputs, branches, strict=True)
        ]

    def _sequential_forward(
        self, branches: list[_BranchInputs], calls: list[list[dict[str, Any]]]
    ) -> list[list[torch.Tensor]]:
        outputs = []
        for branch, branch_calls in zip(branches, calls, strict=True):
            self.switcher.apply(branch.branch)
            outputs.append([self.fn_ref.original_forward(**inputs)[0] for inputs in branch_calls])
        return outputs

    def _batched_forward(
        self, reference_calls: list[dict[str, Any]], lora_calls: list[dict[str, Any]]
    ) -> list[list[torch.Tensor]]:
        """One forward over [reference rows, LoRA rows]; peft's mixed batch keeps each row to its adapter."""
        all_calls = reference_calls + lora_calls
        rows = [inputs[self.latent_name].shape[0] for inputs in all_calls]
        reference_name = next(iter(self.reference.branch), BASE_ADAPTER)
        lora_name = next(iter(self.lora.branch))
        num_reference = sum(rows[: len(reference_calls)])
        adapter_names = [reference_name] * num_reference + [lora_name] * (sum(rows) - num_reference)
        self.switcher.apply({**self.reference.branch, **self.lora.branch})
        with self.switcher.mixed_batch(adapter_names):
            output = self.fn_ref.original_forward(**_concat_inputs(all_calls, self.family.unbatched_inputs))[
                0
            ]
        outputs = list(output.split(rows))
        return [outputs[: len(reference_calls)], outputs[len(reference_calls) :]]


def _branch_cfg(predictions: list[torch.Tensor], w: float, family: PipelineFamily) -> torch.Tensor:
    """One branch's CFG prediction (Eq. 4) from its denoiser outputs, laid out as its pipeline lays them out."""
    if w == 1:
        return cfg(None, predictions[0], w)
    if family.batched_cfg:
        eps_uncond, eps_cond = predictions[0].chunk(2)
    else:
        eps_cond, eps_uncond = predictions
    return cfg(eps_uncond, eps_cond, w)


def _step_inputs(
    captured: dict[str, Any], latent_name: str, latents: torch.Tensor, timestep: Any
) -> dict[str, Any]:
    """A captured denoiser call with this step's latents (repeated to its rows) and timestep."""
    rows = captured[latent_name].shape[0]
    inputs = {**captured, "return_dict": False}
    inputs[latent_name] = latents.repeat(rows // latents.shape[0], *([1] * (latents.ndim - 1)))
    if isinstance(timestep, torch.Tensor) and timestep.ndim > 0:
        # Per-row timesteps (SD3, Flux) are all equal within a step.
        timestep = timestep.reshape(-1)[:1].expand(rows)
    inputs["timestep"] = timestep
    return inputs


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
