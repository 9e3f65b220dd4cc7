"""``autolora world``: train the miniature world, or a LoRA on any image folder.

``autolora world train all`` retrains every stage of the shipped world (seeded, resumable);
``autolora world train-lora IMAGES OUT`` trains one LoRA on a folder of captioned images
(``metadata.jsonl`` or kohya ``.txt`` sidecars) against any SD pipeline folder or ``world``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from autolora.world.lora_config import LoRATrainingConfig

    parser = subparsers.add_parser("world", help="train the miniature world or a LoRA", description=__doc__)
    actions = parser.add_subparsers(dest="world_action", required=True, metavar="ACTION")
    train = actions.add_parser("train", help="train stages of the miniature world")
    train.add_argument("stage", choices=("all", "vae", "evaluators", "base", "loras"))
    train.add_argument(
        "--work", type=Path, default=Path("world-train"), help="checkpoints (default: %(default)s)"
    )
    train.add_argument("--out", type=Path, default=None, help="output folder (default: the package's assets)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--force", action="store_true", help="retrain stages already in the manifest")
    lora = actions.add_parser("train-lora", help="train a LoRA on a folder of captioned images")
    lora.add_argument("images", type=Path, help="folder with metadata.jsonl or a .txt caption per image")
    lora.add_argument("out", type=Path, help="LoRA .safetensors file to write")
    lora.add_argument("--base", default="world", help="pipeline folder, or 'world' (default: %(default)s)")
    defaults = LoRATrainingConfig()
    for name in ("rank", "steps", "batch_size", "seed"):
        lora.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    lora.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.world_action == "train":
        from autolora.world import train

        train.run(
            list(train.STAGES) if args.stage == "all" else [args.stage],
            args.work,
            args.out or train.ASSETS,
            args.seed,
            args.force,
        )
        return 0
    from autolora.world.assets import base_pipeline_path
    from autolora.world.lora import check_base_pipeline, read_image_folder, train_lora
    from autolora.world.lora_config import LoRATrainingConfig

    # Everything is checked before the base model loads.
    base = check_base_pipeline(base_pipeline_path() if args.base == "world" else args.base)
    images, captions = read_image_folder(args.images)
    config = LoRATrainingConfig(
        rank=args.rank,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )
    result = train_lora(base, images, captions, args.out, config)
    print(
        f"wrote {args.out} ({len(images)} images, {result.steps} steps, final loss {result.final_loss:.4f})"
    )
    return 0
