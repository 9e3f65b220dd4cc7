"""``autolora world``: train the miniature world, a LoRA on any image folder, or a bank of style LoRAs.

``autolora world train all`` retrains every stage of the world (seeded, resumable);
``autolora world train-lora IMAGES OUT [--save-every N]`` trains one LoRA on a folder of captioned images
(``metadata.jsonl`` or kohya ``.txt`` sidecars) against any SD pipeline folder or ``world``;
``autolora world train-bank OUT --random 330`` trains one LoRA per world style (resumable; start
it in several processes to train in parallel).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _add_lora_options(parser: argparse.ArgumentParser) -> None:
    from autolora.world.lora_config import LoRATrainingConfig

    parser.add_argument("--base", default="world", help="pipeline folder, or 'world' (default: %(default)s)")
    defaults = LoRATrainingConfig()
    for name in ("rank", "steps", "batch_size", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("world", help="train the miniature world or a LoRA", description=__doc__)
    actions = parser.add_subparsers(dest="world_action", required=True, metavar="ACTION")
    train = actions.add_parser("train", help="train stages of the miniature world")
    train.add_argument("stage", choices=("all", "vae", "evaluators", "style-encoder", "base", "loras"))
    train.add_argument(
        "--work", type=Path, default=Path("world-train"), help="checkpoints (default: %(default)s)"
    )
    train.add_argument("--out", type=Path, default=None, help="output folder (default: the package's assets)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--force", action="store_true", help="retrain stages already in the manifest from scratch"
    )
    lora = actions.add_parser("train-lora", help="train a LoRA on a folder of captioned images")
    lora.add_argument("images", type=Path, help="folder with metadata.jsonl or a .txt caption per image")
    lora.add_argument("out", type=Path, help="LoRA .safetensors file to write")
    lora.add_argument(
        "--save-every",
        type=int,
        metavar="N",
        help="also write the LoRA every N steps, as <out>-<steps>steps.safetensors",
    )
    _add_lora_options(lora)
    bank = actions.add_parser("train-bank", help="train one LoRA per world style into a folder")
    bank.add_argument("out", type=Path, help="folder for the LoRAs and their index.json")
    styles = bank.add_mutually_exclusive_group(required=True)
    styles.add_argument("--styles", nargs="+", help="style names: named styles or random-<seed>")
    styles.add_argument("--random", type=int, metavar="N", help="the random styles random-0 .. random-<N-1>")
    bank.add_argument("--images", type=int, default=24, help="renders per LoRA (default: %(default)s)")
    bank.add_argument(
        "--init-seed",
        type=int,
        metavar="S",
        help="initialise every LoRA from seed S (a bank for a prior over raw factors); default: one seed per style",
    )
    bank.add_argument(
        "--together",
        type=int,
        default=8,
        metavar="N",
        help="LoRAs trained side by side in one batch, faster on a CPU (default: %(default)s)",
    )
    _add_lora_options(bank)
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
    from autolora.errors import ConfigError
    from autolora.world.assets import base_pipeline_path
    from autolora.world.lora import check_base_pipeline
    from autolora.world.lora_config import LoRATrainingConfig

    # Everything is checked before the base model loads.
    base = check_base_pipeline(base_pipeline_path() if args.base == "world" else args.base)
    config = LoRATrainingConfig(
        rank=args.rank,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )
    if args.world_action == "train-lora":
        from autolora.world.lora import read_image_folder, train_lora

        if args.save_every is not None and args.save_every < 1:
            raise ConfigError(f"--save-every must be at least 1, got {args.save_every}")
        images, captions = read_image_folder(args.images)
        every = range(args.save_every, config.steps, args.save_every) if args.save_every else ()
        checkpoints = {
            steps: args.out.with_name(f"{args.out.stem}-{steps}steps.safetensors") for steps in every
        }
        result = train_lora(base, images, captions, args.out, config, checkpoints=checkpoints)
        written = "".join(f", {file}" for file in checkpoints.values())
        print(
            f"wrote {args.out}{written} ({len(images)} images, {result.steps} steps,"
            f" final loss {result.final_loss:.4f})"
        )
        return 0
    from diffusers import StableDiffusionPipeline

    from autolora.world.lora import train_lora_bank
    from autolora.world.styles import get_style, random_style_names

    if args.images < 1 or args.together < 1 or (args.random is not None and args.random < 1):
        raise ConfigError(
            f"--images, --together and --random must be at least 1, got {args.images}, {args.together}"
            f" and {args.random}"
        )
    names = args.styles or random_style_names(range(args.random))
    for name in names:
        get_style(name)
    pipeline = StableDiffusionPipeline.from_pretrained(str(base), safety_checker=None)
    index = train_lora_bank(
        pipeline, names, args.out, config, args.images, args.seed, args.init_seed, args.together
    )
    print(f"{args.out}: {len(index)} of {len(names)} LoRAs trained (index.json)")
    return 0
