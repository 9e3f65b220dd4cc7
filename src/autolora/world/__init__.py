"""The miniature world: a tiny, real text-to-image pipeline with its LoRAs and evaluators.

A plugin of autolora (``autolora.sources``): ``register()`` makes ``"world"`` a model alias (with its
calibrated CFG scale), ``"world:NAME"`` its LoRAs, adds its metrics and feature extractor, and the
condition encoder ``"world:style"`` (``autolora.synthesis.conditions``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autolora.synthesis.conditions import ConditionEncoder


def _style_encoder(spec: str, model: str) -> ConditionEncoder:
    # Imported when an encoder is loaded, not when the plugin registers.
    from autolora.world.style_encoder import encoder_from_spec

    return encoder_from_spec(spec, model)


def register() -> None:
    """Register the world's model, LoRAs, metrics, feature extractor and style encoder with autolora."""
    from autolora.sources import register_lora_namespace, register_model
    from autolora.synthesis.conditions import register_encoder
    from autolora.world.assets import WORLD_CFG, base_pipeline_path, lora_path

    register_model("world", base_pipeline_path, default_cfg=WORLD_CFG)
    register_lora_namespace("world", lora_path)
    register_encoder("world", _style_encoder)
    # Its metrics (world:style, world:digit, ...) and the "world" extractor register themselves on import.
    importlib.import_module("autolora.world.evaluators")
