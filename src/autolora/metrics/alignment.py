"""Prompt alignment of each image: CLIP score."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from autolora.errors import ConfigError
from autolora.metrics.features import FeatureMetric
from autolora.metrics.registry import ImageRecord, register_metric


@register_metric("clip_score")
class ClipScore(FeatureMetric):
    """CLIP score (Hessel et al., 2021) of each image against its ``prompt``: 100 * max(cos(image, text), 0).

    The factor 100 and the clipping at 0 follow torchmetrics' ``CLIPScore`` (Hessel et al. use
    2.5 instead of 100), so values read like the ones usually reported for text-to-image
    models. Options are those of the ``clip`` extractor (``model``, ``dtype``, ...); prompts
    longer than CLIP's context are truncated.
    """

    level = "image"

    def __init__(self, **options: Any) -> None:
        if "extractor" in options:
            raise ConfigError(
                "clip_score always uses the clip extractor; choose the CLIP weights with 'model'"
            )
        super().__init__(extractor="clip", **options)

    def compute(
        self,
        records: Sequence[ImageRecord],
        *,
        reference: Sequence[ImageRecord] | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        prompts = []
        for record in records:
            if not isinstance(record.meta.get("prompt"), str):
                raise ConfigError(
                    f"clip_score needs a prompt for every image; {record.path or record.sha256} has none"
                )
            prompts.append(record.meta["prompt"])
        image = F.normalize(self.features(records), dim=1)
        text = F.normalize(self.extractor.embed_text(prompts), dim=1)
        scores = 100 * (image * text).sum(dim=1).clamp(min=0)
        return [{"clip_score": float(s)} for s in scores.to(torch.float64)]
