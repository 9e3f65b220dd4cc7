"""One interface for every metric, and a registry that validates their names.

A metric sees a group of ``ImageRecord`` s (the images of one prompt, say) and returns
numbers. Image-level metrics return one row per image (cached per image hash by the
evaluation layer); group-level metrics return one row for the whole group.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from PIL import Image

from autolora.errors import ConfigError


@dataclass
class ImageRecord:
    """One image to evaluate: its pixels, where it came from, and its generation metadata."""

    image: Image.Image
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    sha256: str = ""

    def __post_init__(self) -> None:
        if not self.sha256:
            rgb = self.image.convert("RGB")
            self.sha256 = hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


class Metric(ABC):
    """A named measurement of images; ``options`` are recorded with its results."""

    name: ClassVar[str]
    level: ClassVar[Literal["image", "group"]]
    #: Other metrics whose per-group results this one combines (e.g. Div-CPS needs diversity and CPS).
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **options: Any) -> None:
        self.options = options

    @abstractmethod
    def compute(
        self,
        records: Sequence[ImageRecord],
        *,
        reference: Sequence[ImageRecord] | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Rows of results: one per record for image-level metrics, exactly one for group-level ones.

        ``inputs`` holds the per-group results of the metrics named in ``requires``.
        """


_REGISTRY: dict[str, type[Metric]] = {}


def register_metric(name: str) -> Callable[[type[Metric]], type[Metric]]:
    """Class decorator that makes a metric available under ``name``."""

    def decorator(cls: type[Metric]) -> type[Metric]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"metric {name!r} is already registered by {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def available_metrics() -> list[str]:
    """Names of every registered metric, sorted."""
    return sorted(_REGISTRY)


def get_metric(name: str, **options: Any) -> Metric:
    """An instance of the metric called ``name``; unknown names raise ``ConfigError`` listing the known ones."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown metric {name!r}; available: {', '.join(available_metrics())}") from None
    return cls(**options)
