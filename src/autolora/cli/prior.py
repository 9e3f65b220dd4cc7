"""``autolora prior train``: fit a prior (PCA, regressor, diffusion) on a LoRA bank, resumably.

Trains on CUDA when present; spread it over GPUs with ``accelerate launch -m autolora prior train ...``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``prior`` sub-command; every ``PriorConfig`` field is an option."""
    from dataclasses import fields

    from autolora.synthesis.config import PRIOR_KINDS, PriorConfig

    parser = subparsers.add_parser("prior", help="train a LoRA prior on a bank", description=__doc__)
    actions = parser.add_subparsers(dest="prior_action", required=True, metavar="ACTION")
    train = actions.add_parser("train", help="fit a prior on a bank (re-run to resume)")
    train.add_argument("bank", type=Path, metavar="BANK", help="bank folder (autolora bank build)")
    train.add_argument("--out", type=Path, required=True, metavar="PRIOR", help="prior folder to write")
    train.add_argument("--work", type=Path, help="checkpoint folder (default: PRIOR/checkpoints)")
    train.add_argument(
        "--vae-from",
        type=Path,
        metavar="PRIOR",
        help="reuse the LoRA VAE of this trained prior (not retrained)",
    )
    defaults = PriorConfig()
    choices = {"kind": list(PRIOR_KINDS), "conditioning": ["hyperada", "adanorm"]}
    for field in fields(PriorConfig):
        default = getattr(defaults, field.name)
        train.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=type(default),
            default=default,
            choices=choices.get(field.name),
            help="(default: %(default)s)",
        )
    return parser


def run(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from autolora.synthesis.bank import Bank
    from autolora.synthesis.config import PriorConfig
    from autolora.synthesis.prior import load_prior
    from autolora.synthesis.training import train_prior

    config = PriorConfig(**{field.name: getattr(args, field.name) for field in fields(PriorConfig)})
    vae_from = load_prior(args.vae_from) if args.vae_from else None
    prior = train_prior(Bank.open(args.bank), config, args.out, work=args.work, log=print, vae_from=vae_from)
    print(f"wrote {config.kind} prior {args.out} ({sum(p.numel() for p in prior.parameters())} parameters)")
    return 0
