"""What produced a result: the versions of the packages that determine it and the source revision."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: The packages whose versions change pixels or numbers.
VERSIONED = ("autolora", "torch", "diffusers", "transformers", "peft", "accelerate")


def package_versions() -> dict[str, str]:
    """Versions of the packages that determine the pixels, recorded with every image and result."""
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_revision() -> str | None:
    """The git commit of the autolora source tree (with ``-dirty`` when modified), or None outside git."""
    source = Path(__file__).resolve().parent
    try:
        revision = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return revision or None


def cpu_name() -> str:
    """The processor's model name (from ``lscpu``), or the architecture where that is unknown."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
        return next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line)
    except (OSError, subprocess.SubprocessError, StopIteration):
        return platform.processor() or platform.machine()


def _load_average() -> str:
    return ", ".join(f"{load:.2f}" for load in os.getloadavg())


@dataclass
class BenchmarkRun:
    """Where, when and how a benchmark measured: made when it starts, written at the head of its report.

    The load average is taken at both ends because these numbers are often measured on a shared machine.
    """

    command: Sequence[str] = field(default_factory=lambda: list(sys.argv))
    start_load: str = field(default_factory=_load_average)
    #: Taken at the start: the code that ran is the code imported then, whatever is committed meanwhile.
    revision: str | None = field(default_factory=git_revision)

    def header(self, device: str = "cpu") -> list[str]:
        """Markdown bullet lines: date, machine, load, command, versions and revision."""
        import torch  # here, not at the top: ``autolora doctor`` imports this module to report a broken torch

        where = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
        return [
            f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
            f"- machine: {cpu_name()}, {os.cpu_count()} cores visible; measured on {where}, "
            f"torch threads {torch.get_num_threads()}",
            f"- load average (1, 5, 15 min): {self.start_load} at the start, {_load_average()} at the end",
            f"- command: `{shlex.join(['python', *self.command])}`; revision {self.revision or 'unknown'}",
            f"- versions: python {platform.python_version()}, "
            + ", ".join(f"{name} {version}" for name, version in package_versions().items()),
        ]


def publish(text: str, out: str | Path | None) -> None:
    """Print a report and, when ``out`` is given, write it there too (ending in one newline)."""
    text = text.rstrip("\n") + "\n"
    print(text, end="")
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
