"""autolora: AutoLoRA guidance, evaluation and experiments for LoRA-personalised diffusion models."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public API -> defining module. Imported on first use (PEP 562) so that ``import autolora.errors`` or the
# CLI's ``--help`` do not pay for importing torch and diffusers.
_EXPORTS = {
    "AutoLoRAGuidance": "autolora.modular_guider",
    "GenerationParams": "autolora.params",
    "default_cfg_scale": "autolora.pipelines",
    "generate": "autolora.pipelines",
    "load_pipeline": "autolora.pipelines",
    "load_lora": "autolora.lora",
    "to_kohya_state_dict": "autolora.lora",
}

__all__ = [
    "AutoLoRAGuidance",
    "GenerationParams",
    "default_cfg_scale",
    "generate",
    "load_lora",
    "load_pipeline",
    "to_kohya_state_dict",
]

if TYPE_CHECKING:
    from autolora.lora import load_lora, to_kohya_state_dict
    from autolora.modular_guider import AutoLoRAGuidance
    from autolora.params import GenerationParams
    from autolora.pipelines import default_cfg_scale, generate, load_pipeline


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'autolora' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
