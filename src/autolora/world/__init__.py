"""The miniature world: a tiny, real text-to-image pipeline with its LoRAs and evaluators.

A plugin of autolora (``autolora.sources``): ``register()`` makes ``"world"`` a model alias (with its
calibrated CFG scale), ``"world:NAME"`` its LoRAs, and adds its metrics and feature extractor.
"""

from __future__ import annotations

import importlib


def register() -> None:
    """Register the world's model, LoRAs, metrics and feature extractor with autolora."""
    from autolora.sources import register_lora_namespace, register_model
    from autolora.world.assets import WORLD_CFG, base_pipeline_path, lora_path

    register_model("world", base_pipeline_path, default_cfg=WORLD_CFG)
    register_lora_namespace("world", lora_path)
    # Its metrics (world:style, world:digit, ...) and the "world" extractor register themselves on import.
    importlib.import_module("autolora.world.evaluators")
