"""Zero-shot synthesis: reference images -> condition -> prior sample -> a standard LoRA file.

The file has diffusers/PEFT keys (``unet.<module>.lora_A.weight`` / ``lora_B.weight``, rank ``R``,
scale 1), so diffusers' ``load_lora_weights``, ``autolora.load_lora`` and AutoLoRA guidance read it;
``kohya=True`` writes kohya keys instead (A1111, ComfyUI).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import save_file

from autolora.errors import ConfigError
from autolora.lora import to_kohya_state_dict
from autolora.synthesis.canonical import Layout
from autolora.synthesis.conditions import ConditionEncoder, condition_of, load_encoder, open_image
from autolora.synthesis.prior import Prior


class FarConditionWarning(UserWarning):
    """The reference images' condition is far from every condition the prior was trained on."""


@dataclass
class SynthesisResult:
    """What ``synthesize`` wrote and how long it took from images to files."""

    files: list[Path]
    seconds: float
    distance: float | None
    far: bool


def write_lora(
    layout: Layout,
    vector: torch.Tensor,
    path: str | Path,
    *,
    kohya: bool = False,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a unnormalised LoRA vector as a diffusers/PEFT (or kohya) safetensors file."""
    state = layout.unflatten(vector.detach().float().cpu())
    if kohya:
        state = to_kohya_state_dict(state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {
        "format": "pt",
        "autolora_base": layout.base,
        "autolora_rank": str(layout.rank),
        **(metadata or {}),
    }
    save_file(state, str(path), metadata=info)
    return path


def synthesize(
    prior: Prior,
    images: Sequence[Image.Image | str | Path],
    out: str | Path,
    *,
    samples: int = 1,
    seed: int = 0,
    guidance: float = 1.0,
    encoder: ConditionEncoder | None = None,
    kohya: bool = False,
    pipe: Any = None,
    captions: Sequence[str] | None = None,
    fit_steps: int = 200,
) -> SynthesisResult:
    """Write ``samples`` LoRAs for the condition of ``images`` (``out``, or ``out`` stem ``-<i>`` for several).

    The condition encoder is the one the prior's bank was built with, unless ``encoder`` is given.
    An unconditional (PCA) prior inverts the images instead: ``fit_steps`` steps of the diffusion loss
    of ``pipe`` (the bank's base pipeline) on the images with ``captions`` (default: empty), each
    sample from its own seed.
    A condition further from the bank than the prior's threshold raises a ``FarConditionWarning``
    naming the distance. The returned time covers images to files, encoder loading excluded.
    """
    if samples < 1:
        raise ConfigError(f"samples must be at least 1, got {samples}")
    if not prior.conditional and pipe is None:
        raise ConfigError(
            f"the {prior.kind} prior is unconditional: it makes a LoRA from images by inversion, which needs the "
            "bank's base pipeline (pipe=, autolora synth --base MODEL)"
        )
    if prior.conditional and encoder is None:
        encoder = load_encoder(prior.encoder)
    started = time.perf_counter()
    distance = None
    if prior.conditional:
        condition = condition_of(encoder, images)
        distance = prior.nearest_distance(condition)
        vectors = prior.generate(condition, samples, seed=seed, guidance=guidance)
    else:
        from autolora.synthesis.pclora import invert

        opened = [open_image(image) for image in images]
        texts = list(captions) if captions is not None else [""] * len(opened)
        vectors = torch.stack(
            [invert(pipe, prior, opened, texts, steps=fit_steps, seed=seed + i) for i in range(samples)]
        )
    far = distance is not None and distance > prior.far_threshold
    out = Path(out)
    paths = [out] if samples == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(samples)]
    metadata = {"autolora_prior": prior.kind, "autolora_seed": str(seed), "autolora_guidance": str(guidance)}
    files = [
        write_lora(
            prior.layout, vector, path, kohya=kohya, metadata={**metadata, "autolora_sample": json.dumps(i)}
        )
        for i, (vector, path) in enumerate(zip(vectors, paths, strict=True))
    ]
    seconds = time.perf_counter() - started
    if far:
        warnings.warn(
            f"the reference images are far from the prior's bank: distance {distance:.3f} to the nearest bank "
            f"condition (threshold {prior.far_threshold:.3f}); the LoRA may not follow them",
            FarConditionWarning,
            stacklevel=2,
        )
    return SynthesisResult(files, seconds, distance, far)
