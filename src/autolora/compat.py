"""The library versions autolora is tested with, and the checks that keep an untested one from misbehaving.

The tested ranges are the ones ``pyproject.toml`` declares (read back from the installed package's
metadata, so there is one source). Where our code relies on a library's private attributes, it calls
:func:`require_tested` before using them: an untested release then fails with a message naming the
versions, instead of giving a wrong image or a deep ``AttributeError`` later.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from autolora.errors import AutoLoRAError

#: Set to 1 to use a library release outside the tested range anyway (at your own risk).
SKIP_CHECK_ENV = "AUTOLORA_SKIP_VERSION_CHECK"

#: The libraries whose versions decide whether autolora works, in the order ``autolora doctor`` lists them.
CORE = ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "huggingface-hub")


class DependencyError(AutoLoRAError):
    """An installed library is outside the range autolora is tested with, or a known-broken combination."""


@dataclass(frozen=True)
class KnownBreak:
    """A combination of releases known not to work together, with the reason and the fix."""

    description: str
    applies: Callable[[Callable[[str], Version | None]], bool]


def _at_least(version: Version | None, floor: str) -> bool:
    return version is not None and version >= Version(floor)


KNOWN_BREAKS = (
    KnownBreak(
        "transformers >= 5.24 loads LoRA text-encoder weights only with peft >= 0.22 "
        "(diffusers' load_lora_weights goes through it): install transformers<5.24 or a newer peft",
        lambda version: _at_least(version("transformers"), "5.24") and not _at_least(version("peft"), "0.22"),
    ),
)


def installed_version(package: str) -> Version | None:
    """The installed version of ``package`` (None when it is not installed or has no valid version)."""
    try:
        return Version(importlib.metadata.version(package))
    except (importlib.metadata.PackageNotFoundError, InvalidVersion):
        return None


@cache
def tested_ranges() -> dict[str, SpecifierSet]:
    """``package -> range`` for every required dependency, as declared by the installed autolora.

    Empty when autolora runs from a source tree without being installed (no metadata to read).
    """
    try:
        requirements = importlib.metadata.requires("autolora") or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    ranges = {}
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker is None:  # extras (dev, ...) carry a marker; only hard dependencies count here
            ranges[requirement.name.lower()] = requirement.specifier
    return ranges


def in_tested_range(package: str, version: Version | None = None) -> bool | None:
    """Whether ``package`` (at ``version``, default: the installed one) is in its tested range.

    None when no range is known for it or it is not installed.
    """
    version = version if version is not None else installed_version(package)
    specifier = tested_ranges().get(package.lower())
    if version is None or specifier is None:
        return None
    return specifier.contains(version, prereleases=True)


def known_breaks() -> list[str]:
    """The descriptions of the known-broken combinations present among the installed releases."""
    return [known.description for known in KNOWN_BREAKS if known.applies(installed_version)]


def require_tested(package: str, why: str) -> None:
    """Raise :class:`DependencyError` when ``package`` is outside its tested range.

    ``why`` says what of the library our code relies on; it is part of the message. Setting the
    environment variable ``AUTOLORA_SKIP_VERSION_CHECK=1`` skips the check.
    """
    if os.environ.get(SKIP_CHECK_ENV) == "1" or in_tested_range(package) is not False:
        return
    specifier = tested_ranges()[package.lower()]
    raise DependencyError(
        f"{package} {installed_version(package)} is installed, but autolora is tested with "
        f"{package}{specifier}, and {why}. Install a tested release (pip install '{package}{specifier}') "
        f"or set {SKIP_CHECK_ENV}=1 to try this one anyway."
    )
