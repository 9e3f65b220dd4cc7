"""``autolora bank build``: a folder of LoRAs of one base model as a memory-mapped bank.

Every LoRA (diffusers/PEFT, kohya, PEFT folders such as weights2weights') is checked against the base
model's UNet before any work; a LoRA of another base is refused naming the mismatching module. With
``--encoder`` the images in ``<lora stem>/`` beside each LoRA give its condition, or, with
``--world-renders N``, N renders of the miniature-world style each LoRA is named after. Factors are
canonicalised (any LoRAs), or kept as trained with ``--factors raw`` (LoRAs of one shared initialisation).
Re-run to resume.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``bank`` sub-command."""
    parser = subparsers.add_parser("bank", help="build a bank of LoRAs for synthesis", description=__doc__)
    actions = parser.add_subparsers(dest="bank_action", required=True, metavar="ACTION")
    build = actions.add_parser("build", help="every LoRA in a folder into a bank (resumable)")
    build.add_argument("loras", type=Path, metavar="DIR", help="folder of .safetensors LoRAs / PEFT folders")
    build.add_argument("--base", required=True, metavar="MODEL", help="pipeline folder, Hub id, or 'world'")
    build.add_argument("--rank", type=int, required=True, metavar="R", help="rank of every LoRA in the bank")
    build.add_argument("--out", type=Path, required=True, metavar="BANK", help="bank folder to write")
    build.add_argument(
        "--encoder",
        metavar="SPEC",
        help="condition encoder, e.g. clip:openai/clip-vit-large-patch14 or "
        "dinov2:facebook/dinov2-base (needs <lora stem>/ image folders, or --world-renders)",
    )
    build.add_argument(
        "--world-renders",
        type=int,
        metavar="N",
        help="world LoRAs: encode N renders of the style each LoRA is named after (no image folders needed)",
    )
    build.add_argument(
        "--factors",
        choices=("canonical", "raw"),
        default="canonical",
        help="canonical: SVD-balanced factors, for LoRAs of any origin; raw: factors as trained, for "
        "LoRAs of one shared initialisation such as `world train-bank --init-seed` (default: %(default)s)",
    )
    build.add_argument(
        "--exclude",
        nargs="+",
        default=[],
        metavar="NAME",
        help="leave out these LoRAs (file stems), e.g. held-out styles",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from autolora.errors import ConfigError
    from autolora.synthesis.bank import build_bank

    references = None
    if args.world_renders is not None:
        if args.world_renders < 1 or not args.encoder:
            raise ConfigError(
                "--world-renders needs a count of at least 1 and an --encoder to encode the renders"
            )
        from autolora.world.lora import bank_references

        references = bank_references(args.world_renders)
    bank = build_bank(
        args.loras,
        args.base,
        args.rank,
        args.out,
        encoder=args.encoder,
        references=references,
        exclude=args.exclude,
        factors=args.factors,
        log=print,
    )
    conditions = "" if bank.conditions is None else f", conditions {tuple(bank.conditions.shape)}"
    print(
        f"wrote bank {args.out}: {len(bank)} LoRAs x {bank.layout.dim} floats, {len(bank.layout.modules)} modules, "
        f"rank {bank.layout.rank}, {bank.layout.factors} factors{conditions}"
    )
    return 0
