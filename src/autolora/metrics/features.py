"""Image feature extractors behind one interface, looked up by name.

Diversity, Vendi, FD and KID all work on features; which network makes them is an option
(DINOv2 as in the paper, CLIP, or the miniature world's own extractor), recorded with the
results through ``FeatureExtractor.id``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from PIL import Image

from autolora.errors import ConfigError


class FeatureExtractor(ABC):
    """Maps images to an ``(N, d)`` float32 tensor of features."""

    name: ClassVar[str]

    def __init__(self, **options: Any) -> None:
        self.options = options

    @property
    def id(self) -> str:
        """The extractor and its options: the cache key of its features."""
        return f"{self.name}:{json.dumps(self.options, sort_keys=True, default=str)}"

    @abstractmethod
    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Features of ``images``, one row each."""


_EXTRACTORS: dict[str, type[FeatureExtractor]] = {}


def register_extractor(name: str) -> Callable[[type[FeatureExtractor]], type[FeatureExtractor]]:
    """Class decorator that makes a feature extractor available under ``name``."""

    def decorator(cls: type[FeatureExtractor]) -> type[FeatureExtractor]:
        if name in _EXTRACTORS and _EXTRACTORS[name] is not cls:
            raise ValueError(f"feature extractor {name!r} is already registered")
        cls.name = name
        _EXTRACTORS[name] = cls
        return cls

    return decorator


def available_extractors() -> list[str]:
    """Names of every registered feature extractor, sorted."""
    return sorted(_EXTRACTORS)


def get_extractor(name: str, **options: Any) -> FeatureExtractor:
    """An instance of the extractor called ``name``; unknown names raise ``ConfigError``."""
    try:
        cls = _EXTRACTORS[name]
    except KeyError:
        known = ", ".join(available_extractors())
        raise ConfigError(f"unknown feature extractor {name!r}; available: {known}") from None
    return cls(**options)
