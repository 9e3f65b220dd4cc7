"""``autolora tune``: search guidance settings on your own model, LoRAs and prompts; write the Pareto front
(table and plot), the recommended setting, and that setting as a preset for ``generate`` and ``sweep``."""

from __future__ import annotations

import argparse
from pathlib import Path

from autolora.cli.arguments import (
    LORA_SOURCES,
    add_key_values,
    add_loras,
    add_model,
    add_no_progress,
    add_prompts,
    read_prompts,
)
from autolora.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``tune`` sub-command."""
    from autolora.tune import METHODS

    parser = subparsers.add_parser(
        "tune",
        help="find the guidance setting with the most varied images at the adherence you want",
        description=__doc__.replace("\n", " "),
    )
    add_model(parser)
    add_loras(parser, f"LoRA weights: {LORA_SOURCES} (repeatable)")
    add_prompts(parser)
    parser.add_argument(
        "--seeds",
        type=int,
        default=8,
        metavar="N",
        help="paired seeds 0..N-1 per prompt and trial (default: 8)",
    )
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the pipeline's)")
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated methods to search (default: {','.join(METHODS)})",
    )
    parser.add_argument(
        "--diversity-metric", default="diversity", help="group-level diversity metric (default: diversity)"
    )
    parser.add_argument(
        "--adherence-metric",
        default="world:style",
        help="image-level adherence metric, e.g. clip_score or judge:pc_sa (default: world:style)",
    )
    parser.add_argument(
        "--adherence-column",
        default=None,
        help="its result column, e.g. sa for judge:pc_sa (default: style_score for world:style, "
        "digit_score for world:digit, else the metric's name)",
    )
    add_key_values(
        parser,
        "--metric-option",
        "METRIC.KEY=VALUE",
        "a metric option, e.g. diversity.extractor=dinov2 (repeatable)",
    )
    floor = parser.add_mutually_exclusive_group()
    floor.add_argument("--floor", type=float, help="adherence floor: settings below it are not recommended")
    floor.add_argument(
        "--floor-ratio",
        type=float,
        default=0.9,
        help="without --floor: this fraction of LoRA+CFG's adherence at the default scale (default: 0.9)",
    )
    parser.add_argument("--budget-images", type=int, help="stop before this many images (all runs together)")
    parser.add_argument(
        "--budget-minutes", type=float, help="stop after this many minutes (all runs together)"
    )
    parser.add_argument("--sampler-seed", type=int, default=0, help="seed of the optimiser (default: 0)")
    parser.add_argument("--out", required=True, type=Path, help="folder of the study; re-use it to resume")
    add_no_progress(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Check the options, run (or resume) the search and print the recommendation."""
    from autolora.cli.generate import parse_lora_spec
    from autolora.experiments.config import LoRASpec, apply_override
    from autolora.lora import check_lora_source
    from autolora.tune import TuneSpec, tune

    prompts = read_prompts(args)
    loras = [parse_lora_spec(text, 1.0) for text in args.lora]
    for lora in loras:
        check_lora_source(lora.source)
    adherence = args.adherence_metric
    column = args.adherence_column or _KNOWN_COLUMNS.get(adherence, adherence)
    options: dict = {}
    for text in args.metric_option:
        if "." not in text.partition("=")[0]:
            raise ConfigError(f"--metric-option {text!r}: expected METRIC.KEY=VALUE")
        metric, _, rest = text.partition(".")
        apply_override(options.setdefault(metric, {}), rest)
    options = {**_world_defaults(args.model, loras, adherence), **options}
    spec = TuneSpec(
        model=args.model,
        loras=tuple(LoRASpec(source=lora.source, scale=lora.scale) for lora in loras),
        prompts=tuple(prompts),
        seeds=tuple(range(args.seeds)),
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        diversity_metric=args.diversity_metric,
        adherence_metric=adherence,
        adherence_column=column,
        metric_options=options,
        floor=args.floor,
        floor_ratio=args.floor_ratio,
        budget_images=args.budget_images,
        budget_minutes=args.budget_minutes,
        num_inference_steps=args.steps,
        sampler_seed=args.sampler_seed,
    )
    result = tune(spec, args.out, progress=not args.no_progress)
    for path in result.files:
        print(path)
    if result.recommended is not None:
        best = result.recommended
        print(
            f"recommended: trial {best['trial']} {best['method']} {best['settings']}: diversity"
            f" {best['diversity']:.3f}, adherence {best['adherence']:.3f} (floor {result.floor:.3f})"
        )
    return 0


# Result columns of the adherence metrics whose column is not their name.
_KNOWN_COLUMNS = {"world:style": "style_score", "world:digit": "digit_score"}


def _world_defaults(model: str, loras: list, adherence: str) -> dict[str, dict]:
    """For the miniature world: diversity on its features, and the style score of the first world LoRA's style."""
    if model != "world":
        return {}
    from autolora.world.assets import lora_info

    defaults: dict[str, dict] = {"diversity": {"extractor": "world"}}
    names = [lora.source.removeprefix("world:") for lora in loras if lora.source.startswith("world:")]
    if adherence == "world:style" and names:
        defaults["world:style"] = {"style": lora_info(names[0]).style}
    return defaults
