"""``autolora eval``: measure a folder of images per image and per group and write the results to CSV or
Parquet; docs/evaluation.md lists the metrics and their options."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from autolora.cli.arguments import add_key_values
from autolora.errors import ConfigError

#: Metrics whose features come from ``--extractor``.
FEATURE_METRICS = ("diversity", "vendi", "fd_dinov2", "kid")
JUDGE_METRICS = ("judge:cps", "judge:pc_sa")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``eval`` sub-command."""
    parser = subparsers.add_parser(
        "eval", help="evaluate images: diversity, Vendi, FD, KID, CLIP score, VLM judges", description=__doc__
    )
    parser.add_argument("folder", type=Path, help="folder of images (png, jpg, webp)")
    parser.add_argument("--metrics", required=True, help="comma-separated metric names, e.g. diversity,vendi")
    parser.add_argument("--out", required=True, type=Path, help="per-image results file (.csv or .parquet)")
    parser.add_argument(
        "--group-by", default="prompt", help="comma-separated metadata keys to group by; '' for one group"
    )
    parser.add_argument("--reference", type=Path, help="folder of reference images for fd_dinov2 and kid")
    parser.add_argument(
        "--metadata", type=Path, help="CSV or JSONL with a 'file' column and per-image fields"
    )
    parser.add_argument("--extractor", help=f"feature extractor for {', '.join(FEATURE_METRICS)}")
    parser.add_argument("--judge-backend", choices=("openai", "transformers"), help="how the VLM judge runs")
    parser.add_argument("--judge-url", help="OpenAI-compatible server of the VLM judge")
    parser.add_argument("--judge-model", help="model name (server) or id (transformers) of the VLM judge")
    parser.add_argument("--character", help="character the judge looks for (judge:cps)")
    parser.add_argument("--style", help="style the judge checks (judge:pc_sa)")
    parser.add_argument("--cache", type=Path, help="folder caching features and per-image results")
    add_key_values(
        parser,
        "--option",
        "METRIC.KEY=VALUE",
        "any metric option, value parsed as JSON when it can be, e.g. diversity.pooling=cls+mean",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Evaluate, write the results and print the per-group means."""
    from autolora.metrics import evaluate, load_records
    from autolora.metrics.evaluate import check_results_path

    check_results_path(args.out)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    group_by = [k.strip() for k in args.group_by.split(",") if k.strip()]
    options = build_options(args)
    records = load_records(args.folder, args.metadata)
    reference = load_records(args.reference) if args.reference else None
    result = evaluate(
        records,
        metrics,
        group_by=group_by,
        reference=reference,
        cache_dir=args.cache,
        options=options,
        progress=sys.stderr.isatty(),
    )
    written = result.to_file(args.out)
    print(summary_table(result.per_group, group_by))
    print("wrote " + ", ".join(map(str, written)))
    return 0


def build_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per-metric options from the dedicated flags, then from ``--option`` (which wins)."""
    options: dict[str, dict[str, Any]] = {}
    if args.extractor:
        for name in FEATURE_METRICS:
            options.setdefault(name, {})["extractor"] = args.extractor
    judge = {
        "backend": args.judge_backend,
        "url": args.judge_url,
        "model": args.judge_model,
        "character": args.character,
        "style": args.style,
    }
    judge = {k: v for k, v in judge.items() if v is not None}
    if judge:
        # The character only matters to CPS and the style only to PC/SA.
        for name in JUDGE_METRICS:
            skip = "style" if name == "judge:cps" else "character"
            options.setdefault(name, {}).update({k: v for k, v in judge.items() if k != skip})
    for item in args.option:
        name, key, value = _parse_option(item)
        options.setdefault(name, {})[key] = value
    return options


def _parse_option(item: str) -> tuple[str, str, Any]:
    target, sep, raw = item.partition("=")
    name, dot, key = target.rpartition(".")
    if not (sep and dot and name and key):
        raise ConfigError(f"--option must look like METRIC.KEY=VALUE; got {item!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return name, key, value


def summary_table(per_group: pd.DataFrame, group_by: list[str], width: int = 40) -> str:
    """The per-group table as text: long group labels shortened, failure counts left out."""
    shown = per_group[[c for c in per_group.columns if not c.endswith("_n_failed")]].copy()
    for column in group_by:
        shown[column] = (
            shown[column].astype(str).map(lambda s: s if len(s) <= width else s[: width - 1] + "…")
        )
    return shown.to_string(index=False, float_format=lambda x: f"{x:.4f}")
