"""``autolora sweep``: run a declarative sweep (a .toml/.yaml file or a shipped preset) into a run folder;
re-run to resume. Spread it over GPUs or nodes with: ``accelerate launch -m autolora sweep ...``.
"""

from __future__ import annotations

import argparse

from autolora.cli.arguments import add_key_values, add_no_progress
from autolora.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``sweep`` sub-command."""
    parser = subparsers.add_parser(
        "sweep", help="generate and evaluate a sweep of images (resumable, multi-GPU)", description=__doc__
    )
    parser.add_argument("config", nargs="?", help="a sweep file (.toml, .yaml) or a preset name (see --list)")
    parser.add_argument(
        "--out", metavar="RUN", help="run folder: images, index.sqlite, metrics (re-use it to resume)"
    )
    add_key_values(
        parser,
        "--set",
        "KEY=VALUE",
        "override a setting, e.g. --set loras.0.source=anna.safetensors --set seeds.count=8 (repeatable)",
        dest="overrides",
    )
    parser.add_argument(
        "--limit", type=int, help="only the first N images of the sweep (in its stable order)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="validate and print the plan, generate nothing"
    )
    parser.add_argument("--list", action="store_true", help="list the shipped presets and exit")
    add_no_progress(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the sweep; returns the exit status."""
    from autolora.experiments.config import available_presets, load_config
    from autolora.experiments.runner import describe_plan, run_sweep

    if args.list:
        print("\n".join(available_presets()))
        return 0
    if not args.config:
        raise ConfigError("give a sweep file or a preset name (autolora sweep --list shows the presets)")
    config = load_config(args.config, args.overrides)
    if args.dry_run:
        print(describe_plan(config, args.limit))
        return 0
    if not args.out:
        raise ConfigError("--out RUN is required: the folder that holds the images and the index")
    summary = run_sweep(config, args.out, limit=args.limit, progress=not args.no_progress)
    print(
        f"{config.name}: {summary.generated} generated, {summary.skipped} already done"
        f" (of {summary.owned} for this process); index: {args.out}/index.sqlite"
    )
    return 0
