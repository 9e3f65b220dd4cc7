"""Cost of AutoLoRA guidance: wall time and denoiser evaluations per image, as ratios to LoRA+CFG.

Only the denoiser differs between methods, so the pipeline pairs a UNet with the full SD1.5 (or
SDXL) architecture and random weights with a tiny text encoder and VAE (the same small cost for
every method). A random rank-``--rank`` LoRA sits on the UNet attention projections. Also measured:
one adapter switch (LoRA off or on, as the sequential branch mode does between branches) as a
percentage of one LoRA+CFG denoising step.

    PYTHONPATH=src python benchmarks/guidance_speed.py                      # CPU, SD1.5 UNet, 32x32 latents
    PYTHONPATH=src python benchmarks/guidance_speed.py --device cuda --arch sdxl --dtype float16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from autolora import default_cfg_scale, generate, load_lora
from autolora.branches import BranchSwitcher, pipeline_modules
from autolora.provenance import BenchmarkRun, publish
from autolora.world.tokenizer import build_clip_tokenizer

# The released UNet configurations (stable-diffusion-v1-5 and stable-diffusion-xl-base-1.0).
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SDXL_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# ``None``: the pipeline's own ``__call__`` with the LoRA active, against which our overhead is measured.
OWN_CALL = "pipeline's own call (LoRA+CFG)"
VARIANTS: dict[str, dict[str, Any] | None] = {
    "base CFG": {"method": "base"},
    OWN_CALL: None,
    "LoRA+CFG": {"method": "lora"},
    "generate(gamma=1)": {"method": "autolora", "gamma": 1.0},
    "AutoLoRA sequential": {"method": "autolora", "branch_mode": "sequential"},
    "AutoLoRA batched": {"method": "autolora", "branch_mode": "batched"},
    "AutoLoRA batched, interval 0,0.5": {
        "method": "autolora",
        "branch_mode": "batched",
        "interval": (0.0, 0.5),
    },
    "AutoLoRA cached k=2": {"method": "autolora", "cache_interval": 2},
    "AutoLoRA cached k=3": {"method": "autolora", "cache_interval": 3},
    "AutoLoRA cached k=5": {"method": "autolora", "cache_interval": 5},
    "AutoLoRA cached adaptive (0.3, k<=5)": {
        "method": "autolora",
        "cache_interval": 5,
        "cache_threshold": 0.3,
    },
}
REFERENCE_VARIANT = "LoRA+CFG"
PROMPT = "a photo of a cat"


# ---------------------------------------------------------------------------------------------
# Pipeline and LoRA with random weights
# ---------------------------------------------------------------------------------------------


def _text_encoder(tokenizer: Any, hidden_size: int, with_projection: bool = False) -> CLIPTextModel:
    """A one-layer CLIP text encoder whose width matches what the UNet's cross-attention expects."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=256,
        num_hidden_layers=1,
        num_attention_heads=8,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=hidden_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _tiny_vae() -> AutoencoderKL:
    """A narrow VAE with the standard 8x downsampling and 4 latent channels."""
    return AutoencoderKL(
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
    )


def build_pipeline(arch: str, workdir: Path) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """A text-to-image pipeline with a full-size ``arch`` UNet (random weights) and tiny other parts."""
    torch.manual_seed(0)
    tokenizer = build_clip_tokenizer(PROMPT.split(), workdir / "tokenizer")
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1
    )
    if arch == "sd15":
        return StableDiffusionPipeline(
            vae=_tiny_vae(),
            text_encoder=_text_encoder(tokenizer, 768),
            tokenizer=tokenizer,
            unet=UNet2DConditionModel(**SD15_UNET),
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    # SDXL concatenates the two encoders' hidden states (768 + 1280 = 2048) and adds the pooled
    # 1280-d projection of the second one to its six 256-d time embeddings (1280 + 1536 = 2816).
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(),
        text_encoder=_text_encoder(tokenizer, 768),
        text_encoder_2=_text_encoder(tokenizer, 1280, with_projection=True),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=UNet2DConditionModel(**SDXL_UNET),
        scheduler=scheduler,
    )


def write_random_lora(pipe: Any, rank: int, folder: Path) -> Path:
    """Save a random rank-``rank`` LoRA on the UNet attention projections; the UNet is left unchanged.

    The adapter is added to the UNet and deleted again, rather than to a copy as the tests' tiny
    pipelines do, so a full-size UNet is never held twice in memory.
    """
    adapter = "random"
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS), adapter)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            # peft starts lora_B at zero (a no-op); small random values make the LoRA change the output.
            if "lora_B" in name:
                param.copy_(0.01 * torch.randn(param.shape, generator=generator))
    state = get_peft_model_state_dict(pipe.unet, adapter_name=adapter)
    pipe.unet.delete_adapters(adapter)
    type(pipe).save_lora_weights(folder, unet_lora_layers=state)
    return folder / "pytorch_lora_weights.safetensors"


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------


@dataclass
class DenoiserMeter:
    """Counts UNet evaluations, the batch rows they evaluate, and the time spent inside them."""

    synchronize: Callable[[], None]
    calls: int = 0
    rows: int = 0
    seconds: float = 0.0
    _start: float = field(default=0.0, repr=False)

    def before(self, module: torch.nn.Module, args: tuple) -> None:
        self.calls += 1
        self.rows += args[0].shape[0]
        self.synchronize()
        self._start = time.perf_counter()

    def after(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        self.synchronize()
        self.seconds += time.perf_counter() - self._start


@contextmanager
def metered(unet: torch.nn.Module, synchronize: Callable[[], None]) -> Iterator[DenoiserMeter]:
    """Attach a ``DenoiserMeter`` to ``unet`` for the duration of the block.

    The hooks sit on the UNet's first and last layers, not on the UNet itself: the guidance hook
    replaces the UNet's forward and evaluates the branches through the original forward, which
    module hooks on the UNet would not see, while every real evaluation passes through both layers.
    """
    meter = DenoiserMeter(synchronize)
    handles = [
        unet.conv_in.register_forward_pre_hook(meter.before),
        unet.conv_out.register_forward_hook(meter.after),
    ]
    try:
        yield meter
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class Measurement:
    """Medians over repeats for one variant; calls and rows are per image."""

    seconds: float
    denoiser_seconds: float
    calls: int
    rows: int


def own_call(pipe: Any, kwargs: dict[str, Any]) -> None:
    """The pipeline's own LoRA+CFG call, as ``generate(method="lora")`` makes it, without ``generate``."""
    pipe.set_progress_bar_config(disable=True)
    pipe(
        PROMPT,
        guidance_scale=default_cfg_scale(pipe),
        generator=[torch.Generator("cpu").manual_seed(kwargs["seed"])],
        **{k: v for k, v in kwargs.items() if k not in ("seed", "progress")},
    )


def time_image(
    pipe: Any, options: dict[str, Any] | None, kwargs: dict[str, Any], synchronize: Callable[[], None]
) -> tuple[float, DenoiserMeter]:
    """Wall seconds and the denoiser meter of generating one image with ``options`` (``None``: own call)."""
    with metered(pipe.unet, synchronize) as meter:
        synchronize()
        start = time.perf_counter()
        if options is None:
            own_call(pipe, kwargs)
        else:
            generate(pipe, PROMPT, **kwargs, **options)
        synchronize()
        return time.perf_counter() - start, meter


def measure_variants(
    pipe: Any, args: argparse.Namespace, synchronize: Callable[[], None]
) -> dict[str, Measurement]:
    """Time every variant ``args.repeats`` times after a one-step warm-up each, and take medians.

    Repeats go round the variants in turn, so that a change in the load of a shared machine
    falls on every variant alike instead of on whichever happened to run then.
    """
    size = args.latent_size * pipe.vae_scale_factor
    kwargs = {"height": size, "width": size, "seed": 0, "progress": False}
    variants = {name: VARIANTS[name] for name in args.variants}
    for options in variants.values():
        time_image(pipe, options, {**kwargs, "num_inference_steps": 1}, synchronize)
    kwargs["num_inference_steps"] = args.steps
    runs: dict[str, list] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        for name, options in variants.items():
            runs[name].append(time_image(pipe, options, kwargs, synchronize))
            print(f"repeat {repeat + 1}, {name}: {runs[name][-1][0]:.2f} s", file=sys.stderr, flush=True)
    return {
        name: Measurement(
            seconds=statistics.median(t for t, _ in timed),
            denoiser_seconds=statistics.median(m.seconds for _, m in timed),
            calls=timed[0][1].calls,
            rows=timed[0][1].rows,
        )
        for name, timed in runs.items()
    }


def measure_adapter_switch(pipe: Any, repeats: int, synchronize: Callable[[], None]) -> float:
    """Median seconds of one branch switch (LoRA off, or on) made the way ``generate`` makes it."""
    switcher = BranchSwitcher(pipeline_modules(pipe))
    lora_branch = dict.fromkeys(pipe.get_active_adapters())
    times = []
    for i in range(2 * repeats):
        synchronize()
        start = time.perf_counter()
        switcher.apply({} if i % 2 == 0 else lora_branch)
        synchronize()
        times.append(time.perf_counter() - start)
    switcher.restore()
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def results_table(results: dict[str, Measurement], steps: int) -> str:
    """A Markdown table of per-image time and denoiser evaluations, with ratios to LoRA+CFG."""
    ref = results[REFERENCE_VARIANT]
    lines = [
        "| method | s / image | x LoRA+CFG | UNet calls / image | UNet rows / image | x LoRA+CFG (rows) |"
        " UNet s / step | s / image outside the UNet |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in results.items():
        lines.append(
            f"| {name} | {m.seconds:.2f} | {m.seconds / ref.seconds:.3f} | {m.calls} | {m.rows} "
            f"| {m.rows / ref.rows:.2f} | {m.denoiser_seconds / steps:.2f} | {m.seconds - m.denoiser_seconds:.3f} |"
        )
    return "\n".join(lines)


def overhead_line(results: dict[str, Measurement]) -> str:
    """Our own overhead: ``generate`` at the LoRA+CFG's denoiser evaluations against the pipeline's own call."""
    own = results[OWN_CALL].seconds
    parts = [
        f"{name} {100 * (results[name].seconds / own - 1):+.1f} %"
        for name in (REFERENCE_VARIANT, "generate(gamma=1)")
        if name in results
    ]
    return f"Overhead against the pipeline's own call (target <= 3 %): {', '.join(parts)}."


def setup_line(args: argparse.Namespace) -> str:
    """What was measured, under the machine and versions of the report's header."""
    return (
        f"- setup: {args.arch} UNet (full architecture, random weights), tiny text encoder and VAE, "
        f"{args.latent_size}x{args.latent_size} latents, {args.steps} DDIM steps, batch of 1 image, "
        f"random rank-{args.rank} LoRA on {', '.join(LORA_TARGETS)}, {args.dtype}, "
        f"median of {args.repeats} repeats, taken round the methods in turn, after a one-step warm-up"
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("sd15", "sdxl"), default="sd15", help="UNet architecture")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument(
        "--latent-size",
        type=int,
        default=None,
        help="latent side (default: 32 on CPU, the model's own on GPU)",
    )
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per image (default: 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per method (default: 3)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (default: 8)")
    parser.add_argument("--out", type=Path, help="write the report here too")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        metavar="NAME",
        help="methods to measure (default: all)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.variants) - set(VARIANTS)
    if unknown or not {REFERENCE_VARIANT, OWN_CALL} <= set(args.variants):
        parser.error(
            f"--variants must be names from {list(VARIANTS)}, including {REFERENCE_VARIANT!r}, {OWN_CALL!r}"
        )
    if args.latent_size is None:
        native = (SD15_UNET if args.arch == "sd15" else SDXL_UNET)["sample_size"]
        args.latent_size = 32 if args.device == "cpu" else native
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    run = BenchmarkRun(["benchmarks/guidance_speed.py", *argv])
    device = torch.device(args.device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        pipe = build_pipeline(args.arch, Path(tmp))
        lora_file = write_random_lora(pipe, args.rank, Path(tmp) / "lora")
        pipe.to(device=device, dtype=getattr(torch, args.dtype))
        load_lora(pipe, str(lora_file))
        results = measure_variants(pipe, args, synchronize)
        switch = measure_adapter_switch(pipe, 20 * args.repeats, synchronize)
    step = results[REFERENCE_VARIANT].denoiser_seconds / args.steps
    report = "\n\n".join(
        [
            "\n".join([*run.header(args.device), setup_line(args)]),
            results_table(results, args.steps),
            overhead_line(results),
            f"One adapter switch: {switch * 1e3:.2f} ms = {100 * switch / step:.2g} % of one LoRA+CFG "
            f"denoising step ({step:.2f} s).",
        ]
    )
    publish(report, args.out)


if __name__ == "__main__":
    main()
