"""``autolora generate``: images from a base model and its LoRAs with AutoLoRA, LoRA or base guidance.

Every option is checked before the model is loaded, so a typo costs no load time. Each image is a
PNG whose text chunks hold every parameter that made it; ``--compare`` also writes a grid whose
rows are base CFG, LoRA CFG and AutoLoRA from the same initial noise and whose columns are seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from autolora import __version__
from autolora.cli.arguments import LORA_SOURCES, add_allow_pickle, add_device, add_loras, add_model
from autolora.errors import ConfigError
from autolora.params import GenerationParams, LoRASpec, cli_fields, cli_flag, parse_number

# Rows of the --compare grid, top to bottom: the two baselines, then AutoLoRA.
COMPARE_METHODS = ("base", "lora", "autolora")
# Output names start with a running number so that repeated runs into one folder never overwrite.
_INDEX_DIGITS = 5
_INDEXED_NAME = re.compile(rf"^(\d{{{_INDEX_DIGITS}}})-.+\.png$")
# Help sections of the flags derived from GenerationParams' fields.
_GROUPS = {"prompt": "prompt and sampling", "guidance": "guidance"}


@dataclass(frozen=True)
class GenerateOptions:
    """The checked command-line values: what to load, the generation, and where to write it."""

    model: str
    loras: tuple[LoRASpec, ...]
    prompt: str
    params: GenerationParams
    methods: tuple[str, ...]
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
    add_model(model)
    add_loras(
        model,
        f"LoRA weights: {LORA_SOURCES}; repeat to stack LoRAs, each with its own optional scale, "
        "e.g. --lora style.safetensors:0.8",
    )
    model.add_argument(
        "--lora-scale",
        type=float,
        default=1.0,
        metavar="S",
        help="scale of every --lora given without its own :SCALE (default: 1.0)",
    )
    add_allow_pickle(model)
    add_device(model)

    groups = {key: parser.add_argument_group(title) for key, title in _GROUPS.items()}
    groups["prompt"].add_argument("--prompt", required=True, help="text prompt")
    groups["guidance"].add_argument(
        "--preset",
        type=Path,
        metavar="FILE.toml",
        help="generation settings from the [generate] table of a TOML file, e.g. the tuned.toml written by "
        "autolora tune or a sweep file; flags given as well override them",
    )
    for field in cli_fields():
        # Every generation flag comes from its GenerationParams field; values are checked by the field.
        groups[field.metadata["group"]].add_argument(
            cli_flag(field),
            dest=field.name,
            default=None,
            choices=getattr(field.metadata["check"], "choices", None),
            metavar=field.metadata["metavar"],
            help=_help(field),
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


def _help(field: dataclasses.Field) -> str:
    default = field.default
    if default is None:
        return field.metadata["help"]
    shown = ",".join(f"{v:g}" for v in default) if isinstance(default, tuple) else default
    return f"{field.metadata['help']} (default: {shown})"


def parse_lora_spec(text: str, default_scale: float) -> LoRASpec:
    """Parse ``FILE`` or ``FILE:SCALE``; a path that exists as written is never split at its colon."""
    source, scale = text, default_scale
    if not Path(text).exists() and ":" in text:
        head, tail = text.rsplit(":", 1)
        # Only a numeric tail is a scale, so Windows drive letters and URLs pass through untouched.
        if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", tail.strip()):
            source, scale = head, parse_number(tail, f"--lora {text}")
    if not source:
        raise ConfigError(f"--lora {text!r}: the LoRA file is missing")
    if scale < 0:
        raise ConfigError(f"--lora {source}: scale {scale:g} is negative; LoRA scales must be >= 0")
    return LoRASpec(source=source, scale=scale)


def generation_params(args: argparse.Namespace) -> GenerationParams:
    """The GenerationParams of ``--preset`` and the flags given (each checked by its field, named by its flag)."""
    values = read_preset(args.preset) if getattr(args, "preset", None) is not None else {}
    for field in cli_fields():
        text = getattr(args, field.name)
        if text is not None:
            flag = cli_flag(field)
            values[field.name] = GenerationParams.check_field(
                field.name, field.metadata["parse"](text, flag), where=flag
            )
    return GenerationParams(**values)


def read_preset(path: Path) -> dict[str, Any]:
    """The ``[generate]`` table of the TOML file ``path`` as GenerationParams values (``cfg`` sets w1 = w2)."""
    import tomllib

    if not path.is_file():
        raise ConfigError(f"--preset {path}: no such file")
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("generate")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"--preset {path}: cannot parse it: {error}") from None
    if not isinstance(table, dict):
        raise ConfigError(f"--preset {path}: no [generate] table of settings")
    table = dict(table)
    if "cfg" in table:
        table["cfg_base"] = table["cfg_lora"] = table.pop("cfg")
    return {
        key: GenerationParams.check_field(key, value, f"--preset {path}: {key}")
        for key, value in table.items()
    }


def check_args(args: argparse.Namespace) -> GenerateOptions:
    """Validate ``args`` and turn them into ``GenerateOptions``; raises ConfigError or InputFileError."""
    from autolora.lora import check_lora_source

    params = generation_params(args)
    if not (math.isfinite(args.lora_scale) and args.lora_scale >= 0):
        raise ConfigError(f"--lora-scale {args.lora_scale:g} must be >= 0")
    if args.compare and args.method is not None:
        raise ConfigError("--compare generates with every method; drop --method")
    if not args.prompt.strip():
        raise ConfigError("--prompt is empty")
    if args.device is not None:
        _check_device(args.device)
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out} exists and is not a folder")
    loras = tuple(parse_lora_spec(text, args.lora_scale) for text in args.lora)
    for spec in loras:
        # Refuse a missing, pickle or corrupt LoRA (or an unknown alias) before the model is loaded for nothing.
        check_lora_source(spec.source, allow_pickle=args.allow_pickle)
    return GenerateOptions(
        model=args.model,
        loras=loras,
        prompt=args.prompt,
        params=params,
        methods=COMPARE_METHODS if args.compare else (params.method,),
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


def _default_steps(pipe: Any) -> int | None:
    """The pipeline's own default number of steps, so the PNG records what was actually run."""
    import inspect

    parameter = inspect.signature(pipe.__call__).parameters.get("num_inference_steps")
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def resolved_params(pipe: Any, params: GenerationParams) -> GenerationParams:
    """``params`` with the defaults ``pipe`` resolves written out, so that each PNG records what was run."""
    from autolora import default_cfg_scale

    return replace(
        params,
        cfg_base=default_cfg_scale(pipe) if params.cfg_base is None else params.cfg_base,
        cfg_lora=default_cfg_scale(pipe) if params.cfg_lora is None else params.cfg_lora,
        num_inference_steps=params.num_inference_steps or _default_steps(pipe),
    )


def pipeline_info(pipe: Any) -> dict[str, Any]:
    """What ``image_params`` records of the pipeline itself: its sampler, dtype and device."""
    return {
        "sampler": type(pipe.scheduler).__name__,
        "dtype": str(pipe.dtype).removeprefix("torch."),
        "device": str(pipe.device),
    }


def image_params(
    options: GenerateOptions, params: GenerationParams, size: tuple[int, int], resolved: dict[str, Any]
) -> dict[str, Any]:
    """Everything that made one image: ``params.record()`` (values its method ignores are None) and the run."""
    uses_lora = params.used_by("cfg_lora", params.method)
    return {
        "prompt": options.prompt,
        **params.record(),
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
    from autolora import generate, load_lora, load_pipeline
    from autolora.devices import default_device

    pipe = load_pipeline(options.model, torch_dtype=options.dtype, device=options.device or default_device())
    for spec in options.loras:
        load_lora(pipe, spec.source, scale=spec.scale, allow_pickle=options.allow_pickle)
    params, run_info = resolved_params(pipe, options.params), pipeline_info(pipe)

    # 2. Generate with every method from the same seeds, hence from the same initial noise.
    rows = {}
    for method in options.methods:
        # generate keeps the pipeline's progress-bar settings, so the bar says which method is running.
        pipe.set_progress_bar_config(desc=method)
        rows[method] = generate(pipe, options.prompt, replace(params, method=method), progress=True)

    # 3. Write one PNG per image, then the comparison grid.
    write_outputs(options, params, rows, run_info)
    return 0


def write_outputs(
    options: GenerateOptions, params: GenerationParams, rows: dict[str, list], run_info: dict[str, Any]
) -> list[Path]:
    """Save every image of ``rows`` (method -> images by seed) and, with ``--compare``, their grid."""
    from autolora.images import make_grid, save_png

    options.out.mkdir(parents=True, exist_ok=True)
    index = next_index(options.out)
    seeds = [params.seed + i for i in range(params.num_images)]
    size = next(iter(rows.values()))[0].size
    paths = []
    for method, images in rows.items():
        for seed, image in zip(seeds, images, strict=True):
            record = image_params(options, replace(params, method=method, seed=seed), image.size, run_info)
            paths.append(save_png(image, options.out / image_name(index, method, seed), record))
            print(paths[-1])
            index += 1
    if options.compare:
        # The grid records the parameters shared by its rows; each row's own values are in its PNGs.
        grid_params = image_params(options, replace(params, method="autolora"), size, run_info)
        grid_params.update(method="compare", grid=True, rows=list(rows), seeds=seeds)
        labels = [_row_label(method, grid_params) for method in rows]
        grid = make_grid(list(rows.values()), row_labels=labels, col_labels=[f"seed {s}" for s in seeds])
        paths.append(save_png(grid, options.out / f"{index:0{_INDEX_DIGITS}d}-grid.png", grid_params))
        print(paths[-1])
    return paths
