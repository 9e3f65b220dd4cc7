"""``autolora distill``: a LoRA whose plain LoRA+CFG sampling reproduces AutoLoRA guidance.

The teacher (base model + LoRA, AutoLoRA guidance at ``--gamma``) samples the LoRA's prompts; the student, the
same LoRA, is trained to predict the teacher's guided prediction with its own CFG. Seeded and resumable: the
teacher's trajectories and training checkpoints are kept in ``--work``. The result is a standard LoRA file,
applied at the same scale as the teacher's LoRA, at LoRA+CFG's cost.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from autolora.cli.arguments import LORA_SOURCES, add_device, add_loras, add_model, add_prompts, read_prompts
from autolora.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``distill`` sub-command to ``subparsers``."""
    parser = subparsers.add_parser(
        "distill",
        help="distil AutoLoRA guidance into a LoRA that runs at LoRA+CFG's cost",
        description=__doc__.splitlines()[0],
    )
    add_model(parser)
    add_loras(parser, f"the LoRA to distil: {LORA_SOURCES}", repeat=False)
    add_prompts(
        parser,
        "a prompt of the LoRA; repeat for several (default for world:NAME: its prompt for every digit)",
    )
    parser.add_argument(
        "--gamma", type=float, default=1.5, help="the teacher's AutoLoRA gamma (default: 1.5)"
    )
    parser.add_argument(
        "--cfg-base", type=float, default=None, help="the teacher's base CFG (default: model's)"
    )
    parser.add_argument("--cfg-lora", type=float, default=None, help="LoRA CFG of teacher and student")
    parser.add_argument(
        "--sampling-steps", type=int, default=20, help="teacher denoising steps (default: 20)"
    )
    parser.add_argument("--seeds", type=int, default=4, help="teacher trajectories per prompt (default: 4)")
    parser.add_argument("--seed", type=int, default=1000, help="first teacher seed and training seed")
    parser.add_argument("--steps", type=int, default=300, help="training steps (default: 300)")
    parser.add_argument("--batch-size", type=int, default=16, help="trajectory points per step (default: 16)")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    parser.add_argument(
        "--work", type=Path, default=None, help="teacher samples and checkpoints (default: OUT.work)"
    )
    add_device(parser, "cpu", dtype=False)
    parser.add_argument("--out", type=Path, required=True, help="student LoRA .safetensors file to write")
    return parser


def run(args: argparse.Namespace) -> int:
    from autolora.cli.generate import parse_lora_spec
    from autolora.distill import DistillConfig, distill
    from autolora.lora import check_lora_source

    spec = parse_lora_spec(args.lora, 1.0)
    if args.out.suffix != ".safetensors":
        raise ConfigError(f"--out must be a .safetensors file, got {args.out}")
    config = DistillConfig(
        prompts=tuple(read_prompts(args) or _world_prompts(spec.source)),
        gamma=args.gamma,
        cfg_base=args.cfg_base,
        cfg_lora=args.cfg_lora,
        num_inference_steps=args.sampling_steps,
        seeds_per_prompt=args.seeds,
        seed=args.seed,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        checkpoint_every=args.checkpoint_every,
    )
    check_lora_source(spec.source)

    from autolora.lora import load_lora
    from autolora.pipelines import load_pipeline

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pipe = load_pipeline(args.model, device=args.device)
    load_lora(pipe, spec.source, scale=spec.scale)
    result = distill(pipe, args.out, config, work=args.work)
    print(
        f"wrote {args.out} ({len(config.prompts)} prompts x {config.seeds_per_prompt} teacher seeds, "
        f"{result.steps} steps, final loss {result.final_loss:.5f}, {result.wall_seconds:.0f} s)"
    )
    return 0


def _world_prompts(source: str) -> list[str]:
    """The prompts of a miniature-world LoRA: its style on every digit, or its character prompt."""
    if not source.startswith("world:"):
        raise ConfigError("--prompt is required (the LoRA's prompts), except for world:NAME LoRAs")
    from autolora.world.assets import lora_info
    from autolora.world.styles import DIGIT_NAMES

    info = lora_info(source.removeprefix("world:"))
    if info.kind != "style":
        return [info.prompt]
    return [f"a {word} in {info.trigger} style" for word in DIGIT_NAMES]
