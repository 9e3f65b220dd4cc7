"""LoRA synthesis: a prior over a bank of LoRAs that makes a new LoRA from a few reference images.

``build_bank`` canonicalises LoRAs of one base model into a memory-mapped bank; ``train_prior`` fits
a prior on it (PCA, a regressor or a conditioned diffusion prior in a LoRA VAE's latent);
``synthesize`` turns reference images into a standard LoRA file. See docs/synthesis.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public API -> defining module, imported on first use (PEP 562) so the CLI's --help stays fast.
_EXPORTS = {
    "Bank": "autolora.synthesis.bank",
    "build_bank": "autolora.synthesis.bank",
    "Layout": "autolora.synthesis.canonical",
    "canonicalize": "autolora.synthesis.canonical",
    "read_lora_modules": "autolora.synthesis.canonical",
    "condition_of": "autolora.synthesis.conditions",
    "load_encoder": "autolora.synthesis.conditions",
    "register_encoder": "autolora.synthesis.conditions",
    "PriorConfig": "autolora.synthesis.config",
    "CoefficientLoRA": "autolora.synthesis.pclora",
    "fit_coefficients": "autolora.synthesis.pclora",
    "invert": "autolora.synthesis.pclora",
    "Prior": "autolora.synthesis.prior",
    "load_prior": "autolora.synthesis.prior",
    "FarConditionWarning": "autolora.synthesis.synth",
    "synthesize": "autolora.synthesis.synth",
    "write_lora": "autolora.synthesis.synth",
    "train_prior": "autolora.synthesis.training",
}

__all__ = [
    "Bank",
    "CoefficientLoRA",
    "FarConditionWarning",
    "Layout",
    "Prior",
    "PriorConfig",
    "build_bank",
    "canonicalize",
    "condition_of",
    "fit_coefficients",
    "invert",
    "load_encoder",
    "load_prior",
    "read_lora_modules",
    "register_encoder",
    "synthesize",
    "train_prior",
    "write_lora",
]

if TYPE_CHECKING:
    from autolora.synthesis.bank import Bank, build_bank
    from autolora.synthesis.canonical import Layout, canonicalize, read_lora_modules
    from autolora.synthesis.conditions import condition_of, load_encoder, register_encoder
    from autolora.synthesis.config import PriorConfig
    from autolora.synthesis.pclora import CoefficientLoRA, fit_coefficients, invert
    from autolora.synthesis.prior import Prior, load_prior
    from autolora.synthesis.synth import FarConditionWarning, synthesize, write_lora
    from autolora.synthesis.training import train_prior


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'autolora.synthesis' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
