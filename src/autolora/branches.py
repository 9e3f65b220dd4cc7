"""Switching a pipeline's peft LoRA layers between guidance branches, and putting them back.

A *branch* is a mapping ``adapter name -> scale`` (``None`` = the scale the user set); the empty mapping is
the base model. The LoRA layers are collected once per request and toggled through their own attributes:
diffusers' ``set_adapters`` walks every module of every component on each call (about 22 ms on SDXL), which
would be paid twice per denoising step in sequential mode.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

from peft.tuners.lora.layer import LoraLayer
from torch import nn

from autolora.compat import DependencyError, installed_version, require_tested
from autolora.errors import ConfigError

# What ``BranchSwitcher.apply`` writes directly, bypassing peft's public setters (see there for why).
PRIVATE_ATTRIBUTES = ("_active_adapter", "_disable_adapters")

# peft's placeholder adapter name for rows of a mixed batch that skip every adapter.
BASE_ADAPTER = "__base__"

Branch = dict[str, "float | None"]


@dataclass
class _LayerState:
    active: list[str]
    scaling: dict[str, float]
    disabled: bool


def pipeline_modules(pipe: Any) -> list[nn.Module]:
    """The ``nn.Module`` components of a pipeline (denoiser, text encoders, VAE)."""
    return [module for module in pipe.components.values() if isinstance(module, nn.Module)]


def lora_layers(modules: Iterable[nn.Module]) -> list[LoraLayer]:
    """Every peft LoRA layer inside ``modules``."""
    return [layer for module in modules for layer in module.modules() if isinstance(layer, LoraLayer)]


def adapter_scales(pipe: Any) -> dict[str, float]:
    """The scale each active adapter of ``pipe`` currently has (as given to ``set_adapters``)."""
    scales: dict[str, float] = {}
    for layer in lora_layers(pipeline_modules(pipe)):
        for name in layer.active_adapters:
            if name in layer.scaling and name not in scales:
                # peft stores scale * lora_alpha / r (sqrt(r) with rsLoRA); divide the unit scale back out.
                rank = layer.r[name] ** 0.5 if layer.use_rslora.get(name, False) else layer.r[name]
                scales[name] = layer.scaling[name] * rank / layer.lora_alpha[name]
    return scales


class BranchSwitcher:
    """The LoRA layers of some modules, switchable between branches, restorable to the user's state."""

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        require_tested(
            "peft", f"it switches LoRA branches through peft's private {', '.join(PRIVATE_ATTRIBUTES)}"
        )
        self.layers = lora_layers(modules)
        missing = [name for name in PRIVATE_ATTRIBUTES if self.layers and name not in vars(self.layers[0])]
        if missing:
            raise DependencyError(
                f"peft {installed_version('peft')}'s LoRA layers have no {', '.join(missing)}, which autolora "
                "uses to switch branches; install the peft release pyproject.toml names"
            )
        if any(layer.merged for layer in self.layers):
            raise ConfigError(
                "a LoRA is fused into the model weights; AutoLoRA needs the base weights: call pipe.unfuse_lora()"
            )
        self._saved = [
            _LayerState(list(layer.active_adapters), dict(layer.scaling), layer.disable_adapters)
            for layer in self.layers
        ]

    def apply(self, branch: Branch) -> None:
        """Make ``branch`` the active adapter set (empty = base model), with its scales."""
        active = list(branch)
        for layer, saved in zip(self.layers, self._saved, strict=True):
            # Direct writes instead of layer.set_adapter / enable_adapters, which also walk every adapter weight
            # to change requires_grad; through __dict__ because nn.Module.__setattr__ type-checks every value,
            # which dominates when this runs for hundreds of layers twice per step.
            attributes = vars(layer)
            attributes["_disable_adapters"] = not branch
            if not branch:
                continue
            attributes["_active_adapter"] = active
            for name, scale in branch.items():
                if name not in layer.scaling:
                    continue
                if scale is None:
                    layer.scaling[name] = saved.scaling[name]
                else:
                    layer.set_scale(name, scale)

    def restore(self) -> None:
        """Put back the adapter state the layers had when this switcher was made."""
        for layer, saved in zip(self.layers, self._saved, strict=True):
            layer._active_adapter = list(saved.active)
            layer.scaling.update(saved.scaling)
            layer._disable_adapters = saved.disabled

    @contextmanager
    def mixed_batch(self, adapter_names: list[str]) -> Iterator[None]:
        """Run each batch row through its own adapter (``BASE_ADAPTER`` = none) with peft's mixed-batch path.

        peft reads ``adapter_names`` from each LoRA layer's forward kwargs; this injects them with a forward
        pre-hook, as peft's own ``_enable_peft_forward_hooks`` does for a ``PeftModel``. Scales are those of the
        adapters' current state, so ``apply`` the union of both branches first.
        """
        handles = [
            layer.register_forward_pre_hook(partial(_inject_adapter_names, adapter_names), with_kwargs=True)
            for layer in self.layers
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def _inject_adapter_names(
    adapter_names: list[str], module: nn.Module, args: tuple, kwargs: dict
) -> tuple[tuple, dict]:
    return args, {**kwargs, "adapter_names": adapter_names}
