"""Image feature extractors behind one interface, looked up by name.

Diversity, Vendi, FD and KID all work on features; which network makes them is an option
(DINOv2 as in the paper, CLIP, or the miniature world's own extractor), recorded with the
results through ``FeatureExtractor.id``.
"""

from __future__ import annotations

import functools
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from PIL import Image

from autolora.devices import default_device, torch_dtype
from autolora.errors import ConfigError, InputFileError
from autolora.metrics.cache import MetricsCache
from autolora.metrics.registry import ImageRecord, Metric, Registry


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


EXTRACTORS: Registry[FeatureExtractor] = Registry("feature extractor")
#: Class decorator that makes a feature extractor available under a name.
register_extractor = EXTRACTORS.register
#: Names of every registered feature extractor (the plugins' included), sorted.
available_extractors = EXTRACTORS.names
#: ``get_extractor(name, **options)``: an instance; unknown names or options raise ``ConfigError``.
get_extractor = EXTRACTORS.create


class FeatureMetric(Metric):
    """A metric computed on image features: ``extractor`` names one, the options not in
    ``own_options`` configure it."""

    own_options: ClassVar[tuple[str, ...]] = ()
    #: Whether ``compute`` compares with the reference images (whose features are then prefetched too).
    uses_reference: ClassVar[bool] = False

    def __init__(self, extractor: str = "dinov2", **options: Any) -> None:
        super().__init__(extractor=extractor, **options)
        extractor_options = {k: v for k, v in options.items() if k not in self.own_options}
        self.extractor = get_extractor(extractor, **extractor_options)
        #: Where features are looked up and stored; the evaluation layer shares one between metrics.
        self.cache = MetricsCache()

    def features(self, records: Sequence[ImageRecord]) -> torch.Tensor:
        """``(N, d)`` features of ``records`` from the cache or the extractor."""
        return self.cache.features(self.extractor, records)


# --- Extractors on transformers models -----------------------------------------------------------

Precision = Literal["float32", "float16", "bfloat16"]
Pooling = Literal["cls", "mean", "cls+mean"]


def _check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def _check_size(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name} must be a positive number of pixels or None; got {value!r}")


class TransformersExtractor(FeatureExtractor):
    """A transformers vision model and its image processor, loaded on first use.

    Loading (and importing transformers) is deferred so that an evaluation whose features are
    all cached never loads the model. ``device`` and ``batch_size`` do not change the
    features, so they stay out of ``id``.
    """

    def __init__(self, recorded: dict[str, Any], device: str | None, batch_size: int) -> None:
        _check_choice("dtype", recorded["dtype"], ("float32", "float16", "bfloat16"))
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer; got {batch_size!r}")
        super().__init__(**recorded)
        self.device = device or default_device()
        self.batch_size = batch_size

    @functools.cached_property
    def loaded(self) -> tuple[torch.nn.Module, Any]:
        """The model (in eval mode on ``device``) and its image processor."""
        from transformers import AutoImageProcessor

        model_id = self.options["model"]
        try:
            model = self.model_class().from_pretrained(model_id, dtype=torch_dtype(self.options["dtype"]))
            processor = AutoImageProcessor.from_pretrained(model_id)
        except (OSError, ValueError) as error:  # ValueError: not a valid repository id
            raise InputFileError(f"cannot load {self.name} model {model_id!r}: {error}") from None
        return model.to(self.device).eval(), processor

    def model_class(self) -> Any:
        """The transformers class that loads the model."""
        from transformers import AutoModel

        return AutoModel

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        model, processor = self.loaded
        outputs = []
        for start in range(0, len(images), self.batch_size):
            batch = [image.convert("RGB") for image in images[start : start + self.batch_size]]
            pixels = processor(images=batch, return_tensors="pt", **self.processor_options())["pixel_values"]
            with torch.inference_mode():
                outputs.append(self.embed(model, pixels.to(self.device, model.dtype)).float().cpu())
        return torch.cat(outputs) if outputs else torch.empty(0, 0)

    def processor_options(self) -> dict[str, Any]:
        """Keyword arguments that override the image processor's configuration."""
        return {}

    @abstractmethod
    def embed(self, model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """Features of a preprocessed batch."""


@register_extractor("dinov2")
class Dinov2Extractor(TransformersExtractor):
    """DINOv2 features (Oquab et al., 2023), the paper's choice for Eq. 8.

    The paper names ``facebook/dinov2-giant`` but neither the token nor the preprocessing, so
    both are options recorded in ``id``: ``pooling`` is the CLS token after the final layer
    norm (``"cls"``), the mean of the patch tokens (``"mean"``), or both concatenated
    (``"cls+mean"``, DINOv2's linear-probe features); ``size`` (shortest edge after resizing)
    and ``crop`` (side of the centre crop) default to the processor's configuration (256 and
    224 for the released models).
    """

    def __init__(
        self,
        model: str = "facebook/dinov2-giant",
        pooling: Pooling = "cls",
        size: int | None = None,
        crop: int | None = None,
        dtype: Precision = "float32",
        device: str | None = None,
        batch_size: int = 16,
    ) -> None:
        _check_choice("pooling", pooling, ("cls", "mean", "cls+mean"))
        _check_size("size", size)
        _check_size("crop", crop)
        recorded = {"model": model, "pooling": pooling, "size": size, "crop": crop, "dtype": dtype}
        super().__init__(recorded, device, batch_size)

    def processor_options(self) -> dict[str, Any]:
        overrides: dict[str, Any] = {}
        if self.options["size"] is not None:
            overrides["size"] = {"shortest_edge": self.options["size"]}
        if self.options["crop"] is not None:
            overrides["crop_size"] = {"height": self.options["crop"], "width": self.options["crop"]}
        return overrides

    def embed(self, model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = model(pixel_values=pixel_values).last_hidden_state  # after the final layer norm
        # Register tokens (DINOv2 "with registers") sit between the CLS token and the patches.
        first_patch = 1 + getattr(model.config, "num_register_tokens", 0)
        cls, mean = tokens[:, 0], tokens[:, first_patch:].mean(dim=1)
        return {"cls": cls, "mean": mean, "cls+mean": torch.cat([cls, mean], dim=1)}[self.options["pooling"]]


@register_extractor("clip")
class ClipExtractor(TransformersExtractor):
    """CLIP image embeddings (after the visual projection), and text embeddings for CLIP score."""

    def __init__(
        self,
        model: str = "openai/clip-vit-large-patch14",
        dtype: Precision = "float32",
        device: str | None = None,
        batch_size: int = 16,
    ) -> None:
        super().__init__({"model": model, "dtype": dtype}, device, batch_size)

    def model_class(self) -> Any:
        from transformers import CLIPModel

        return CLIPModel

    @functools.cached_property
    def tokenizer(self) -> Any:
        """The tokenizer saved with the model."""
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.options["model"])
        except (OSError, ValueError) as error:  # ValueError: not a valid repository id
            raise InputFileError(
                f"cannot load the CLIP tokenizer of {self.options['model']!r}: {error}"
            ) from None

    def embed(self, model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        return model.get_image_features(pixel_values=pixel_values).pooler_output

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """``(N, d)`` text embeddings in the space of the image embeddings; long texts are truncated."""
        model, _ = self.loaded
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(
            self.device
        )
        with torch.inference_mode():
            return model.get_text_features(**tokens).pooler_output.float().cpu()
