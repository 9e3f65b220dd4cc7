"""``autolora tradeoffs``: the trade-off map over every world LoRA (the ``mini-tradeoffs`` sweep once per
LoRA, resumable) and its pooled report in ``OUT/report``.
"""

from __future__ import annotations

import argparse

from autolora.cli.arguments import add_key_values, add_no_progress


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``tradeoffs`` sub-command."""
    parser = subparsers.add_parser(
        "tradeoffs",
        help="the trade-off map over the world's LoRAs, and its pooled report",
        description=__doc__,
    )
    parser.add_argument("out", help="folder: one run folder per LoRA and report/ (re-use it to resume)")
    parser.add_argument(
        "--loras",
        nargs="+",
        help="world LoRAs to map (default: every style LoRA and the shadow LoRA's checkpoints)",
    )
    add_key_values(
        parser,
        "--set",
        "KEY=VALUE",
        "override a setting of every LoRA's sweep, e.g. --set seeds.count=4",
        dest="overrides",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="only (re)write the report of the runs in OUT"
    )
    add_no_progress(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the map and write its report; returns the exit status."""
    from autolora.experiments.tradeoffs import MAP_LORAS, map_report, run_map

    if not args.report_only:
        run_map(args.out, args.loras or MAP_LORAS, args.overrides, progress=not args.no_progress)
    for path in map_report(args.out):
        print(path)
    return 0
