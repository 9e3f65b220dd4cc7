"""``autolora doctor``: the environment autolora runs in, and whether it is one autolora is tested with.

Prints Python, the platform, torch with its accelerators, each core library's version against the range
autolora is tested with, the known-broken combinations present, whether the miniature world loads and
denoises, and which optional backends are importable. Paste its output into a bug report. Exit status 1
when a core library is outside its tested range or a known-broken combination is installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from typing import Any

from autolora import __version__, compat
from autolora.provenance import git_revision

#: Packages autolora uses when they are there, and what for.
OPTIONAL_BACKENDS = {
    "gradio": "autolora app",
    "optuna": "autolora tune",
    "openai": "the judge's OpenAI-compatible client",
    "playwright": "the web app's browser test",
    "xformers": "memory-efficient attention on CUDA",
}


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "doctor", help="print the environment and check autolora is tested with it", description=__doc__
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--skip-world", action="store_true", help="do not load the miniature world (faster)")
    return parser


def torch_report() -> dict[str, Any]:
    """torch's version and which accelerators it can use."""
    import torch

    return {
        "version": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "mps": torch.backends.mps.is_available(),
    }


def library_report() -> dict[str, dict[str, Any]]:
    """``package -> {version, tested, in_range}`` for the core libraries."""
    ranges = compat.tested_ranges()
    report = {}
    for package in compat.CORE:
        version = compat.installed_version(package)
        report[package] = {
            "version": str(version) if version is not None else None,
            "tested": str(ranges.get(package, "")) or None,
            "in_range": compat.in_tested_range(package),
        }
    return report


def world_report() -> dict[str, Any]:
    """Whether the miniature world loads and denoises one image, and how long that took."""
    import diffusers
    import transformers

    from autolora import generate, load_pipeline

    # The report is read by people and pasted into bug reports: no loading bars or import notices in it.
    diffusers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    start = time.perf_counter()
    try:
        pipe = load_pipeline("world")
        generate(pipe, "a seven", method="base", num_inference_steps=2, num_images=1, seed=0, progress=False)
    except Exception as error:  # any failure here is what the report is for
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}
    return {"ok": True, "seconds": round(time.perf_counter() - start, 2)}


def collect(*, world: bool = True) -> dict[str, Any]:
    """Everything ``autolora doctor`` reports, as a JSON-serialisable dict."""
    report: dict[str, Any] = {
        "autolora": {"version": __version__, "git": git_revision()},
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch_report(),
        "libraries": library_report(),
        "known_breaks": compat.known_breaks(),
        "optional": {name: importlib.util.find_spec(name) is not None for name in OPTIONAL_BACKENDS},
    }
    if world:
        report["world"] = world_report()
    return report


def problems(report: dict[str, Any]) -> list[str]:
    """What in ``report`` makes the environment one autolora is known not to work in."""
    found = [
        f"{package} {info['version'] or 'is not installed'}"
        + (f" is outside the tested range {info['tested']}" if info["version"] else "")
        for package, info in report["libraries"].items()
        if info["in_range"] is False or info["version"] is None
    ]
    found += report["known_breaks"]
    if "world" in report and not report["world"]["ok"]:
        found.append(f"the miniature world does not run: {report['world']['error']}")
    return found


def render(report: dict[str, Any]) -> str:
    """The report as the text ``autolora doctor`` prints."""
    torch = report["torch"]
    accelerators = []
    if torch["cuda"]:
        accelerators.append(f"CUDA {torch['cuda_version']} ({', '.join(torch['devices'])})")
    if torch["mps"]:
        accelerators.append("MPS")
    git = report["autolora"]["git"]
    lines = [
        f"- autolora: {report['autolora']['version']}" + (f" ({git})" if git else ""),
        f"- Python: {report['python']}",
        f"- Platform: {report['platform']}",
        f"- accelerators: {', '.join(accelerators) or 'none (CPU only)'}",
    ]
    marks = {True: "ok", False: "OUTSIDE TESTED RANGE", None: "no range known"}
    for package, info in report["libraries"].items():
        status = marks[info["in_range"]] if info["version"] else "NOT INSTALLED"
        tested = f" (tested: {info['tested']})" if info["tested"] else ""
        lines.append(f"- {package}: {info['version'] or '-'}{tested} {status}")
    if "world" in report:
        world = report["world"]
        outcome = f"loads and denoises ({world['seconds']} s)" if world["ok"] else f"FAILS: {world['error']}"
        lines.append(f"- miniature world: {outcome}")
    optional = ", ".join(
        f"{name} ({OPTIONAL_BACKENDS[name]}): {'yes' if present else 'no'}"
        for name, present in report["optional"].items()
    )
    lines.append(f"- optional backends: {optional}")
    found = problems(report)
    lines.append("")
    lines += [f"PROBLEM: {problem}" for problem in found] or ["No known problems."]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = collect(world=not args.skip_world)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 1 if problems(report) else 0
