"""Where the miniature world's shipped weights live, and what each LoRA is.

``assets/pipeline`` is a Stable Diffusion folder (``StableDiffusionPipeline.from_pretrained``),
``assets/loras/<name>.safetensors`` are LoRAs (``pipe.load_lora_weights``) described in
``assets/loras/index.json``, ``assets/evaluators`` holds the evaluators and
``assets/manifest.json`` records how everything was trained.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from autolora.errors import ConfigError, InputFileError

ASSETS_DIR = Path(__file__).parent / "assets"
#: CFG scale for the miniature world: SD1.5's 7.5 over-saturates a model this small.
WORLD_CFG = 4.0


@dataclass(frozen=True)
class LoRAInfo:
    """One shipped LoRA: what it renders and a prompt that exercises it."""

    name: str
    kind: Literal["style", "character"]
    style: str
    digit: int | None
    trigger: str
    prompt: str


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise InputFileError(
            f"the miniature world has no {what} at {path}; run `python -m autolora.world.train all`"
        )
    return path


def base_pipeline_path() -> Path:
    """The folder of the miniature base pipeline (diffusers layout)."""
    return _existing(ASSETS_DIR / "pipeline", "base pipeline")


@functools.cache
def _lora_index() -> dict[str, dict]:
    return json.loads(_existing(ASSETS_DIR / "loras" / "index.json", "LoRA index").read_text())


def available_loras() -> list[str]:
    """Names of the shipped LoRAs, sorted."""
    return sorted(_lora_index())


def _entry(name: str) -> dict:
    try:
        return _lora_index()[name]
    except KeyError:
        raise ConfigError(f"unknown world LoRA {name!r}; available: {', '.join(available_loras())}") from None


def lora_path(name: str) -> Path:
    """The safetensors file of the LoRA ``name``; unknown names raise ``ConfigError`` listing the known ones."""
    return _existing(
        ASSETS_DIR / "loras" / _entry(name).get("file", f"{name}.safetensors"), f"LoRA file {name!r}"
    )


def lora_info(name: str) -> LoRAInfo:
    """What the LoRA ``name`` renders and a prompt that exercises it."""
    entry = _entry(name)
    return LoRAInfo(name, entry["kind"], entry["style"], entry["digit"], entry["trigger"], entry["prompt"])
