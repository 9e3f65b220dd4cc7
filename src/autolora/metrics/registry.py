"""One interface for every metric, and a registry that validates their names.

A metric sees a group of ``ImageRecord`` s (the images of one prompt, say) and returns
numbers. Image-level metrics return one row per image (cached per image hash by the
evaluation layer); group-level metrics return one row for the whole group.
"""

from __future__ import annotations

import hashlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

from PIL import Image

from autolora.errors import ConfigError
from autolora.sources import load_plugins

T = TypeVar("T")


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


class Registry(Generic[T]):
    """Classes looked up by name; ``kind`` names them in errors ("metric", "feature extractor")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator that makes a class available under ``name`` and sets its ``name`` attribute."""

        def decorator(cls: type[T]) -> type[T]:
            known = self._classes.get(name)
            if known is not None and known is not cls:
                raise ValueError(f"{self.kind} {name!r} is already registered by {known.__name__}")
            cls.name = name
            self._classes[name] = cls
            return cls

        return decorator

    def names(self) -> list[str]:
        """Every registered name (the plugins' included), sorted."""
        load_plugins()
        return sorted(self._classes)

    def create(self, name: str, **options: Any) -> T:
        """An instance of the class called ``name`` built with ``options``.

        Unknown names, and options the class does not accept, raise ``ConfigError`` naming the problem.
        """
        if name not in self._classes:
            load_plugins()
        try:
            cls = self._classes[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}") from None
        try:
            inspect.signature(cls).bind(**options)
        except TypeError as error:
            raise ConfigError(
                f"{self.kind} {name!r} does not accept these options {sorted(options)}: {error}"
            ) from None
        return cls(**options)


METRICS: Registry[Metric] = Registry("metric")
#: Class decorator that makes a metric available under a name: ``@register_metric("diversity")``.
register_metric = METRICS.register
#: Names of every registered metric (the plugins' included), sorted.
available_metrics = METRICS.names
#: ``get_metric(name, **options)``: an instance; unknown names or options raise ``ConfigError``.
get_metric = METRICS.create
