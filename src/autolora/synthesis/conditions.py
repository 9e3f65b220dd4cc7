"""Condition encoders: reference images -> one condition vector for a prior.

An encoder is named by a spec ``"<kind>:<model>"``: ``clip:openai/clip-vit-large-patch14`` (CLIP image
embeddings) or ``dinov2:facebook/dinov2-base`` (DINOv2 CLS features), loaded through transformers from
a Hub id or a local folder, or ``features:<extractor>`` (any feature extractor of ``autolora.metrics``,
e.g. ``features:world``, the miniature world's autoencoder codes). Plugins register their own kinds
(the miniature world's style encoder ``world:style``), and other encoders (ArcFace for faces) register
a factory with ``register_encoder``. A set of images is encoded as the mean of its
unit-normalised embeddings, so one image and eight images of one style land in the same place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from autolora.errors import ConfigError, InputFileError
from autolora.sources import load_plugins


class ConditionEncoder(Protocol):
    """Anything that maps a batch of images to one embedding per image."""

    spec: str

    def embed(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``(len(images), C)`` embeddings."""
        ...


def condition_of(encoder: ConditionEncoder, images: Sequence[Image.Image | str | Path]) -> torch.Tensor:
    """The condition of a set of images: the mean of their unit-normalised embeddings, shape ``(C,)``."""
    if not images:
        raise ConfigError("a condition needs at least one reference image")
    embeddings = encoder.embed([open_image(image) for image in images]).float()
    return torch.nn.functional.normalize(embeddings, dim=-1).mean(0)


def open_image(image: Image.Image | str | Path) -> Image.Image:
    """An RGB image from a PIL image or a path (``InputFileError`` when it cannot be read)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        with Image.open(image) as opened:
            return opened.convert("RGB")
    except OSError as error:
        raise InputFileError(f"cannot read reference image {image}: {error}") from None


class TransformersEncoder:
    """CLIP image embeddings or DINOv2 CLS features of a transformers vision model."""

    def __init__(self, spec: str, kind: str, model: str, device: str = "cpu") -> None:
        from transformers import AutoImageProcessor, AutoModel, CLIPVisionModelWithProjection

        self.spec, self.kind, self.device = spec, kind, device
        try:
            self.processor = AutoImageProcessor.from_pretrained(model)
            loader = CLIPVisionModelWithProjection if kind == "clip" else AutoModel
            self.model = loader.from_pretrained(model).eval().to(device)
        except (OSError, ValueError) as error:
            raise InputFileError(f"cannot load condition encoder {spec}: {error}") from None

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image]) -> torch.Tensor:
        inputs = self.processor(images=list(images), return_tensors="pt").to(self.device)
        output = self.model(**inputs)
        return output.image_embeds if self.kind == "clip" else output.last_hidden_state[:, 0]


class FeatureEncoder:
    """A feature extractor of ``autolora.metrics.features`` (``get_extractor(name)``) as a condition encoder."""

    def __init__(self, spec: str, name: str) -> None:
        from autolora.metrics.features import get_extractor

        self.spec, self.extractor = spec, get_extractor(name)

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.extractor(list(images))


_FACTORIES: dict[str, Callable[[str, str], ConditionEncoder]] = {
    "clip": lambda spec, model: TransformersEncoder(spec, "clip", model),
    "dinov2": lambda spec, model: TransformersEncoder(spec, "dinov2", model),
    "features": FeatureEncoder,
}


def register_encoder(kind: str, factory: Callable[[str, str], ConditionEncoder]) -> None:
    """Make ``"<kind>:<model>"`` specs load through ``factory(spec, model)``."""
    _FACTORIES[kind] = factory


def load_encoder(spec: str) -> ConditionEncoder:
    """The encoder a spec names; ``ConfigError`` lists the known kinds for an unknown one.

    Plugins (``autolora.sources``) are loaded first, since they register their own kinds (``world``).
    """
    load_plugins()
    kind, _, model = spec.partition(":")
    if kind not in _FACTORIES or not model:
        raise ConfigError(f"condition encoder {spec!r}: expected <{'|'.join(sorted(_FACTORIES))}>:<model>")
    return _FACTORIES[kind](spec, model)
