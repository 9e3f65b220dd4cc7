"""Experiments: declarative sweeps, a resumable multi-process runner, its SQLite index, and reports."""

from autolora.experiments.config import SweepConfig, WorkItem, available_presets, load_config, parse_config
from autolora.experiments.report import build_report
from autolora.experiments.runner import run_sweep

__all__ = [
    "SweepConfig",
    "WorkItem",
    "available_presets",
    "build_report",
    "load_config",
    "parse_config",
    "run_sweep",
]
