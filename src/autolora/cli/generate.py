"""``autolora generate``: images from a base model and its LoRAs with AutoLoRA, LoRA or base guidance.

Every option is checked before the model is loaded, so a typo costs no load time. Each image is a
PNG whose text chunks hold every parameter that made it; ``--compare`` also writes a grid whose
rows are base CFG, LoRA CFG and AutoLoRA from the same initial noise and whose columns are seeds.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from autolora import __version__
from autolora.errors import ConfigError

METHODS = ("autolora", "lora", "base")
DTYPES = ("float32", "float16", "bfloat16")
BRANCH_MODES = ("batched", "sequential")
# Rows of the --compare grid, top to bottom: the two baselines, then AutoLoRA.
COMPARE_METHODS = ("base", "lora", "autolora")
# Output names start with a running number so that repeated runs into one folder never overwrite.
_INDEX_DIGITS = 5
_INDEXED_NAME = re.compile(rf"^(\d{{{_INDEX_DIGITS}}})-.+\.png$")


@dataclass(frozen=True)
class LoRASpec:
    """One ``--lora`` argument: a file (or Hub repository) and the scale its weights are applied with."""

    source: str
    scale: float


@dataclass(frozen=True)
class GenerateOptions:
    """The checked command-line values, in the form the Python API takes them."""

    model: str
    loras: tuple[LoRASpec, ...]
    prompt: str
    negative_prompt: str | None
    methods: tuple[str, ...]
    gamma: float
    gamma_end: float | None
    cfg_base: float | None
    cfg_lora: float | None
    steps: int | None
    seed: int
    num_images: int
    height: int | None
    width: int | None
    interval: tuple[float, float]
    branch_mode: str
    reference: str | float
    device: str | None
    dtype: str | None
    allow_pickle: bool
    out: Path
    compare: bool


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``generate`` sub-command to ``subparsers``."""
    parser = subparsers.add_parser(
        "generate",
        help="generate images with AutoLoRA, LoRA or base guidance",
        description="Generate images from a base model and its LoRAs with AutoLoRA, LoRA or base guidance.",
    )
    model = parser.add_argument_group("model and LoRAs")
    model.add_argument(
        "--model",
        required=True,
        help="diffusers pipeline folder, Hub id, or 'world' for the miniature world",
    )
    model.add_argument(
        "--lora",
        action="append",
        required=True,
        metavar="FILE[:SCALE]",
        help="LoRA weights: .safetensors file, folder, Hub id, or world:NAME; repeat to stack LoRAs, "
        "each with its own optional scale, e.g. --lora style.safetensors:0.8",
    )
    model.add_argument(
        "--lora-scale",
        type=float,
        default=1.0,
        metavar="S",
        help="scale of every --lora given without its own :SCALE (default: 1.0)",
    )
    model.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow pickle LoRA files (.bin/.pt/.pth/.ckpt), which can run code: only for files you trust",
    )
    model.add_argument(
        "--device",
        default=None,
        help="torch device, e.g. cpu or cuda:1 (default: cuda if available, else cpu)",
    )
    model.add_argument("--dtype", choices=DTYPES, default=None, help="weights dtype (default: float32)")

    prompt = parser.add_argument_group("prompt and sampling")
    prompt.add_argument("--prompt", required=True, help="text prompt")
    prompt.add_argument("--negative-prompt", default=None, help="negative prompt (default: none)")
    prompt.add_argument("--steps", type=int, default=None, help="denoising steps (default: the pipeline's)")
    prompt.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed+i")
    prompt.add_argument(
        "--num-images", type=int, default=1, metavar="N", help="images per method (default: 1)"
    )
    prompt.add_argument("--height", type=int, default=None, help="image height in pixels, a multiple of 8")
    prompt.add_argument("--width", type=int, default=None, help="image width in pixels, a multiple of 8")

    guidance = parser.add_argument_group("guidance")
    guidance.add_argument(
        "--method",
        choices=METHODS,
        default=None,
        help="autolora: base CFG guided towards LoRA CFG (Eq. 7); lora: LoRA with CFG; base: base model "
        "with CFG (default: autolora)",
    )
    guidance.add_argument(
        "--gamma", type=float, default=1.5, help="AutoLoRA guidance scale gamma >= 0 (default: 1.5)"
    )
    guidance.add_argument(
        "--gamma-end",
        type=float,
        default=None,
        metavar="G2",
        help="gamma at the last step, for a linear schedule from --gamma (default: constant gamma)",
    )
    guidance.add_argument(
        "--cfg-base",
        type=float,
        default=None,
        metavar="W1",
        help="CFG scale >= 1 of the base branch (default: the model family's, e.g. 7.5 for SD1.5)",
    )
    guidance.add_argument(
        "--cfg-lora",
        type=float,
        default=None,
        metavar="W2",
        help="CFG scale >= 1 of the LoRA branch (default: the model family's, e.g. 7.5 for SD1.5)",
    )
    guidance.add_argument(
        "--interval",
        default="0,1",
        metavar="A,B",
        help="part of the denoising trajectory, 0 <= A <= B <= 1 (0 = first step), where AutoLoRA guidance "
        "applies; other steps are plain LoRA CFG (default: 0,1, every step)",
    )
    guidance.add_argument(
        "--branch-mode",
        choices=BRANCH_MODES,
        default="batched",
        help="evaluate the base and LoRA branches in one batch or one after the other (default: batched)",
    )
    guidance.add_argument(
        "--reference",
        default="base",
        metavar="base|SCALE",
        help="the reference branch AutoLoRA extrapolates from: base, the base model with CFG W1 (default), "
        "or a scale: the same LoRAs at that scale, e.g. 0.5",
    )

    output = parser.add_argument_group("output")
    output.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the PNG files")
    output.add_argument(
        "--compare",
        action="store_true",
        help="generate with base CFG, LoRA CFG and AutoLoRA from the same noise and write a grid as well",
    )
    return parser


# ---------------------------------------------------------------------------------------------
# 1. Checking the command line (cheap; runs before anything is loaded)
# ---------------------------------------------------------------------------------------------


def _parse_number(text: str, what: str) -> float:
    """A finite float from ``text``, or a ConfigError naming ``what``."""
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"{what}: {text!r} is not a finite number")
    return value


def parse_lora_spec(text: str, default_scale: float) -> LoRASpec:
    """Parse ``FILE`` or ``FILE:SCALE``; a path that exists as written is never split at its colon."""
    source, scale = text, default_scale
    if not Path(text).exists() and ":" in text:
        head, tail = text.rsplit(":", 1)
        # Only a numeric tail is a scale, so Windows drive letters and URLs pass through untouched.
        if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", tail.strip()):
            source, scale = head, _parse_number(tail, f"--lora {text}")
    if not source:
        raise ConfigError(f"--lora {text!r}: the LoRA file is missing")
    if scale < 0:
        raise ConfigError(f"--lora {source}: scale {scale:g} is negative; LoRA scales must be >= 0")
    return LoRASpec(source=source, scale=scale)


def parse_interval(text: str) -> tuple[float, float]:
    """Parse ``A,B``, the part of the trajectory where AutoLoRA applies (its range is checked by the engine)."""
    parts = text.split(",")
    if len(parts) != 2:
        raise ConfigError(f"--interval {text!r} is malformed: expected two numbers A,B such as 0,0.5")
    start, end = (_parse_number(p, f"--interval {text}") for p in parts)
    return start, end


def parse_reference(text: str) -> str | float:
    """``base`` or a scale >= 0 of the loaded LoRAs, as ``generate``'s ``reference`` takes it."""
    if text == "base":
        return text
    scale = _parse_number(text, "--reference (base or a LoRA scale)")
    if scale < 0:
        raise ConfigError(f"--reference {text}: the reference LoRA scale must be >= 0")
    return scale


def _check_positive(values: dict[str, int | None]) -> None:
    for flag, value in values.items():
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value} must be at least 1")


def check_args(args: argparse.Namespace) -> GenerateOptions:
    """Validate ``args`` and turn them into ``GenerateOptions``; raises ConfigError or InputFileError."""
    from autolora.guidance import GuidanceSchedule
    from autolora.lora import check_lora_source

    if not (math.isfinite(args.lora_scale) and args.lora_scale >= 0):
        raise ConfigError(f"--lora-scale {args.lora_scale:g} must be >= 0")
    for flag, value in (("--cfg-base", args.cfg_base), ("--cfg-lora", args.cfg_lora)):
        # The pipelines read w <= 1 as "no CFG", so w < 1 would silently mean 1.
        if value is not None and not (math.isfinite(value) and value >= 1):
            raise ConfigError(f"{flag} {value:g} must be >= 1 (1 = no classifier-free guidance)")
    _check_positive({"--steps": args.steps, "--num-images": args.num_images})
    if args.seed < 0:
        raise ConfigError(f"--seed {args.seed} must be >= 0")
    if (args.height is None) != (args.width is None):
        raise ConfigError("--height and --width must be given together")
    for flag, value in (("--height", args.height), ("--width", args.width)):
        if value is not None and (value < 8 or value % 8):
            raise ConfigError(f"{flag} {value} must be a positive multiple of 8")
    if args.compare and args.method is not None:
        raise ConfigError("--compare generates with every method; drop --method")
    if not args.prompt.strip():
        raise ConfigError("--prompt is empty")
    if args.device is not None:
        _check_device(args.device)
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out} exists and is not a folder")

    # The engine's own schedule checks gamma, gamma_end and the interval, so the CLI and API agree.
    schedule = GuidanceSchedule(
        gamma=args.gamma, gamma_end=args.gamma_end, interval=parse_interval(args.interval)
    )
    reference = parse_reference(args.reference)
    loras = tuple(parse_lora_spec(text, args.lora_scale) for text in args.lora)
    for spec in loras:
        # Refuse a missing, pickle or corrupt LoRA before the model is loaded for nothing.
        if not spec.source.startswith("world:"):
            check_lora_source(spec.source, allow_pickle=args.allow_pickle)
    return GenerateOptions(
        model=args.model,
        loras=loras,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        methods=COMPARE_METHODS if args.compare else (args.method or "autolora",),
        gamma=schedule.gamma,
        gamma_end=schedule.gamma_end,
        cfg_base=args.cfg_base,
        cfg_lora=args.cfg_lora,
        steps=args.steps,
        seed=args.seed,
        num_images=args.num_images,
        height=args.height,
        width=args.width,
        interval=schedule.interval,
        branch_mode=args.branch_mode,
        reference=reference,
        device=args.device,
        dtype=args.dtype,
        allow_pickle=args.allow_pickle,
        out=args.out,
        compare=args.compare,
    )


def _check_device(device: str) -> None:
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)"
        ) from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: MPS is not available on this machine")


# ---------------------------------------------------------------------------------------------
# 2. Generation and output
# ---------------------------------------------------------------------------------------------


def generate_kwargs(options: GenerateOptions, method: str) -> dict[str, Any]:
    """Keyword arguments of ``autolora.pipelines.generate`` for ``method`` (everything but pipe and prompt)."""
    return {
        "method": method,
        "gamma": options.gamma,
        "gamma_end": options.gamma_end,
        "cfg_base": options.cfg_base,
        "cfg_lora": options.cfg_lora,
        "negative_prompt": options.negative_prompt,
        "num_inference_steps": options.steps,
        "seed": options.seed,
        "num_images": options.num_images,
        "height": options.height,
        "width": options.width,
        "interval": options.interval,
        "branch_mode": options.branch_mode,
        "reference": options.reference,
    }


def _default_steps(pipe: Any) -> int | None:
    """The pipeline's own default number of steps, so the PNG records what was actually run."""
    import inspect

    parameter = inspect.signature(pipe.__call__).parameters.get("num_inference_steps")
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def image_params(
    options: GenerateOptions, method: str, seed: int, size: tuple[int, int], resolved: dict[str, Any]
) -> dict[str, Any]:
    """Everything that made one image; values a method does not use are None (left out of A1111 text)."""
    uses_lora = method != "base"
    is_autolora = method == "autolora"
    return {
        "prompt": options.prompt,
        "negative_prompt": options.negative_prompt,
        "method": method,
        "seed": seed,
        "num_inference_steps": resolved["num_inference_steps"],
        "cfg_lora": resolved["cfg_lora"] if uses_lora else None,
        "cfg_base": resolved["cfg_base"] if method != "lora" else None,
        "gamma": options.gamma if is_autolora else None,
        "gamma_end": options.gamma_end if is_autolora else None,
        "interval": list(options.interval) if is_autolora else None,
        "branch_mode": options.branch_mode if is_autolora else None,
        "reference": options.reference if is_autolora else None,
        "loras": [asdict(spec) for spec in options.loras] if uses_lora else None,
        "model": options.model,
        "width": size[0],
        "height": size[1],
        "sampler": resolved["sampler"],
        "dtype": resolved["dtype"],
        "device": resolved["device"],
        "autolora_version": __version__,
    }


def next_index(out: Path) -> int:
    """The first running number not yet used by an output file in ``out``."""
    used = [int(m.group(1)) for p in out.glob("*.png") if (m := _INDEXED_NAME.match(p.name))]
    return max(used, default=-1) + 1


def image_name(index: int, method: str, seed: int) -> str:
    """``00012-autolora-seed7.png``: sorts in the order written and says method and seed."""
    return f"{index:0{_INDEX_DIGITS}d}-{method}-seed{seed}.png"


def _row_label(method: str, params: dict[str, Any]) -> str:
    if method == "base":
        return f"base CFG {params['cfg_base']:g}"
    if method == "lora":
        return f"LoRA CFG {params['cfg_lora']:g}"
    return f"AutoLoRA gamma {params['gamma']:g}"


def run(args: argparse.Namespace) -> int:
    """Check the options, load the model and LoRAs, generate, and write the PNGs (and the grid)."""
    options = check_args(args)

    # 1. Load the base model and every LoRA (the engine validates files and their fit to the model).
    from autolora import default_cfg_scale, generate, load_lora, load_pipeline

    pipe = load_pipeline(
        options.model, torch_dtype=_torch_dtype(options.dtype), device=_device(options.device)
    )
    for spec in options.loras:
        load_lora(pipe, spec.source, scale=spec.scale, allow_pickle=options.allow_pickle)
    resolved = {
        "cfg_base": options.cfg_base if options.cfg_base is not None else default_cfg_scale(pipe),
        "cfg_lora": options.cfg_lora if options.cfg_lora is not None else default_cfg_scale(pipe),
        "num_inference_steps": options.steps if options.steps is not None else _default_steps(pipe),
        "sampler": type(pipe.scheduler).__name__,
        "dtype": str(pipe.dtype).removeprefix("torch."),
        "device": str(pipe.device),
    }

    # 2. Generate with every method from the same seeds, hence from the same initial noise.
    rows = {}
    for method in options.methods:
        # generate keeps the pipeline's progress-bar settings, so the bar says which method is running.
        pipe.set_progress_bar_config(desc=method)
        rows[method] = generate(pipe, options.prompt, progress=True, **generate_kwargs(options, method))

    # 3. Write one PNG per image, then the comparison grid.
    write_outputs(options, rows, resolved)
    return 0


def write_outputs(options: GenerateOptions, rows: dict[str, list], resolved: dict[str, Any]) -> list[Path]:
    """Save every image of ``rows`` (method -> images by seed) and, with ``--compare``, their grid."""
    from autolora.images import make_grid, save_png

    options.out.mkdir(parents=True, exist_ok=True)
    index = next_index(options.out)
    seeds = [options.seed + i for i in range(options.num_images)]
    size = next(iter(rows.values()))[0].size
    paths = []
    for method, images in rows.items():
        for seed, image in zip(seeds, images, strict=True):
            params = image_params(options, method, seed, image.size, resolved)
            paths.append(save_png(image, options.out / image_name(index, method, seed), params))
            print(paths[-1])
            index += 1
    if options.compare:
        # The grid records the parameters shared by its rows; each row's own values are in its PNGs.
        grid_params = image_params(options, "autolora", options.seed, size, resolved)
        grid_params.update(
            method="compare", grid=True, rows=list(rows), seeds=seeds, cfg_lora=resolved["cfg_lora"]
        )
        labels = [_row_label(method, grid_params) for method in rows]
        grid = make_grid(list(rows.values()), row_labels=labels, col_labels=[f"seed {s}" for s in seeds])
        paths.append(save_png(grid, options.out / f"{index:0{_INDEX_DIGITS}d}-grid.png", grid_params))
        print(paths[-1])
    return paths


def _torch_dtype(name: str | None) -> Any:
    import torch

    return None if name is None else getattr(torch, name)


def _device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")
