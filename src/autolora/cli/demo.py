"""``autolora demo``: the base model, LoRA+CFG, AutoLoRA and the trade-off map's pick on the miniature
world, from the same noise.

Loads the shipped miniature pipeline and one of its few-shot style LoRAs, generates the same
seeds and prompt with the base model (LoRA off), LoRA+CFG, AutoLoRA and LoRA+CFG at half the CFG scale
and LoRA scale 0.75 (the setting the world's trade-off map puts on its front, docs/tradeoffs.md),
writes a labelled grid and prints diversity, style score and digit score per row (measured with the
world's own evaluators).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from autolora.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_LORA = "shadow"
#: The grid's rows: label -> (``generate`` method, LoRA scale, CFG scale as a multiple of the demo's).
ROWS = {
    "Base+CFG": ("base", None, 1.0),
    "LoRA+CFG": ("lora", None, 1.0),
    "AutoLoRA": ("autolora", None, 1.0),
    "CFG/2 x0.75": ("lora", 0.75, 0.5),
}
#: Grid cells are upscaled from the world's 32x32 so the images can be seen.
CELL = 96


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="compare the base model, LoRA+CFG, AutoLoRA and half CFG on the built-in miniature world",
        description=__doc__,
    )
    parser.add_argument("--out", type=Path, default=Path("autolora-demo"), help="folder for the grid PNG")
    parser.add_argument("--lora", default=DEFAULT_LORA, help="world LoRA name (default: %(default)s)")
    parser.add_argument("--images", type=int, default=8, help="images per method (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default: %(default)s)")
    parser.add_argument("--gamma", type=float, default=1.5, help="AutoLoRA gamma (default: %(default)s)")
    parser.add_argument(
        "--cfg", type=float, default=None, help="CFG scale of both branches (default: the world's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser


def score(
    images_by_row: dict[str, list[Image.Image]], prompt: str, style: str, digit: int | None
) -> pd.DataFrame:
    """Per-row diversity (Eq. 8 on the world's features), mean style score and mean digit score.

    Measured through the evaluation layer, with the same registered metrics ``autolora eval`` runs.
    """
    from autolora.metrics import evaluate
    from autolora.metrics.registry import ImageRecord

    records = [
        ImageRecord(image, meta={"row": row, "prompt": prompt, "style": style, "digit": digit})
        for row, images in images_by_row.items()
        for image in images
    ]
    result = evaluate(
        records,
        ["diversity", "world:style", "world:digit"],
        group_by=("row",),
        options={"diversity": {"extractor": "world"}},
    )
    return result.per_group.set_index("row").loc[list(images_by_row)]


def run(args: argparse.Namespace) -> int:
    if args.images < 2:
        raise ConfigError(f"--images must be at least 2 to measure diversity, got {args.images}")
    if args.steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {args.steps}")
    from autolora.images import make_grid, save_png
    from autolora.lora import load_lora
    from autolora.params import GenerationParams
    from autolora.pipelines import default_cfg_scale, generate, load_pipeline
    from autolora.world.assets import lora_info
    from autolora.world.evaluators import prompted_digit

    # Every option is checked here, before the world loads.
    scales = {"cfg_base": args.cfg, "cfg_lora": args.cfg}
    params = GenerationParams(
        gamma=args.gamma, num_inference_steps=args.steps, seed=args.seed, num_images=args.images, **scales
    )
    info = lora_info(args.lora)
    pipe = load_pipeline("world")
    load_lora(pipe, f"world:{args.lora}")
    digit = info.digit if info.digit is not None else prompted_digit({"prompt": info.prompt})
    cfg = default_cfg_scale(pipe) if args.cfg is None else args.cfg
    images_by_row = {
        label: generate(
            pipe,
            info.prompt,
            params,
            method=method,
            lora_scale=lora_scale,
            cfg_base=cfg * factor,
            cfg_lora=cfg * factor,
            progress=False,
        )
        for label, (method, lora_scale, factor) in ROWS.items()
    }
    rows = [
        [image.resize((CELL, CELL), Image.Resampling.NEAREST) for image in images]
        for images in images_by_row.values()
    ]
    scores = score(images_by_row, info.prompt, info.style, digit)
    grid = make_grid(rows, list(ROWS), [f"seed {args.seed + i}" for i in range(args.images)])
    grid_params = {
        "prompt": info.prompt,
        "model": "world",
        "grid": True,
        "lora": f"world:{args.lora}",
        "gamma": args.gamma,
        "cfg_lora": cfg,
        "num_inference_steps": args.steps,
        "seed": args.seed,
    }
    path = save_png(grid, Path(args.out) / f"demo-{args.lora}.png", grid_params)
    print(f'prompt: "{info.prompt}"  LoRA: world:{args.lora}  gamma: {args.gamma}  CFG: {cfg}')
    width = max(len(label) for label in ROWS)
    print(f"{'row':<{width}} {'diversity':>9} {'style':>7} {'digit':>7}")
    for label, row in scores.iterrows():
        print(f"{label:<{width}} {row.diversity:>9.3f} {row.style_score:>7.3f} {row.digit_score:>7.3f}")
    print(f"grid: {path}")
    return 0
