"""What produced a result: the versions of the packages that determine it and the source revision."""

from __future__ import annotations

import importlib.metadata
import subprocess
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
