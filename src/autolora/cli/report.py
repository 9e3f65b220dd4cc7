"""``autolora report``: tables, plots and image grids of a sweep's run folder, and exports of its index."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``report`` sub-command."""
    parser = subparsers.add_parser(
        "report",
        help="build the Markdown/HTML report of a sweep run folder",
        description="Tables, plots and same-noise image grids of a sweep's run folder, and exports of its index.",
    )
    parser.add_argument("run", help="run folder written by autolora sweep")
    parser.add_argument(
        "--format", default="md,html", help="comma-separated report formats: md, html (default: md,html)"
    )
    parser.add_argument(
        "--export", default="", help="also export the index and metrics: csv, parquet (comma-separated)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Build the report; returns the exit status."""
    from autolora.experiments.report import build_report

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    export = [f.strip() for f in args.export.split(",") if f.strip()]
    report = build_report(args.run, formats, export)
    for path in report.files:
        print(path)
    return 0
