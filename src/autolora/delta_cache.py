"""Cached guidance deltas: AutoLoRA that evaluates the reference branch on some guided steps only.

The AutoLoRA correction ``delta = cfg_lora - cfg_base`` (Eq. 7) changes slowly from one denoising step to the
next (measured in benchmarks/results/). A ``DeltaCache`` keeps the delta of the last step that evaluated both
branches and answers the steps in between from the LoRA branch alone, ``eps = cfg_lora + (gamma - 1) delta``:
the guidance-caching idea of FasterCache, applied to AutoLoRA's reference instead of CFG's unconditional branch.

Two refresh rules, as a ``DeltaCachePolicy``:

- every ``interval`` (k) guided steps; k = 1 evaluates both branches on every step, exactly AutoLoRA;
- adaptively, with a ``threshold``: also refresh once the LoRA branch's own prediction, which is evaluated on
  every step anyway, has drifted since the last refresh by more than ``threshold`` (accumulated relative L1
  change from step to step, the indicator TeaCache accumulates); k then bounds the steps between refreshes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from autolora.errors import ConfigError
from autolora.guidance import autolora_from_delta, guidance_delta


@dataclass(frozen=True)
class DeltaCachePolicy:
    """When a cached AutoLoRA delta is refreshed by evaluating the reference branch."""

    #: Refresh at least every ``interval`` guided steps; 1 = every step (full AutoLoRA, no caching).
    interval: int = 1
    #: Adaptive: also refresh when the LoRA prediction drifted more than this (relative L1, accumulated).
    threshold: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 1:
            raise ConfigError(f"cache_interval must be an integer >= 1, got {self.interval!r}")
        if self.threshold is not None:
            if not self.threshold > 0:
                raise ConfigError(f"cache_threshold must be > 0, got {self.threshold}")
            if self.interval == 1:
                raise ConfigError(
                    "cache_threshold needs cache_interval > 1: it bounds the steps between refreshes, "
                    "and 1 refreshes on every step"
                )


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    """``mean |current - previous| / mean |previous|``: how much a prediction changed between two steps."""
    return float((current - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12))


class DeltaCache:
    """The AutoLoRA delta of the last refreshed step, and the state of the refresh rule."""

    def __init__(self, policy: DeltaCachePolicy) -> None:
        self.policy = policy
        self.delta: torch.Tensor | None = None
        #: Guided steps answered from the cache since the last refresh.
        self.age = 0
        self.drift = 0.0
        self._previous: torch.Tensor | None = None

    def due(self) -> bool:
        """Whether this guided step must evaluate the reference branch, whatever the LoRA branch predicts."""
        return self.delta is None or self.age + 1 >= self.policy.interval

    def drifted(self, eps_lora_cfg: torch.Tensor) -> bool:
        """Adaptive rule: add this step's change of the LoRA prediction; whether the sum passed the threshold."""
        if self.policy.threshold is None or self._previous is None:
            return False
        self.drift += relative_l1(eps_lora_cfg, self._previous)
        self._previous = eps_lora_cfg
        return self.drift > self.policy.threshold

    def store(self, eps_base_cfg: torch.Tensor, eps_lora_cfg: torch.Tensor) -> None:
        """Keep the delta of a step that evaluated both branches, and restart the refresh rule."""
        self.delta = guidance_delta(eps_base_cfg, eps_lora_cfg)
        self.age, self.drift, self._previous = 0, 0.0, eps_lora_cfg

    def reuse(self, eps_lora_cfg: torch.Tensor, gamma: float) -> torch.Tensor:
        """Eq. 7 for a step that evaluated the LoRA branch only, with the cached delta."""
        if self.delta is None:
            raise RuntimeError("no delta cached yet: the first guided step must evaluate both branches")
        self.age += 1
        return autolora_from_delta(eps_lora_cfg, self.delta, gamma)
