"""AutoLoRA guidance as pure tensor functions, and the schedules that say when and how strongly it applies.

Paper: AutoLoRA guidance. At every denoising step the prediction is

    eps = cfg_base(w1) + gamma * (cfg_lora(w2) - cfg_base(w1))                              (Eq. 7)

i.e. the base model's classifier-free-guided prediction is the reference and the LoRA model's is
extrapolated from it, the same shape as edm2's autoguidance ``ref.lerp(net, gamma)``.
gamma = 1 is the LoRA model with CFG, gamma = 0 the base model with CFG, gamma > 1 pushes past the LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from autolora.errors import ConfigError


# Eq. 4 -- classifier-free guidance.
def cfg(eps_uncond: torch.Tensor | None, eps_cond: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance (Eq. 4): ``eps_u + w (eps_c - eps_u)``; ``w = 1`` is the conditional
    prediction alone, so its unconditional prediction may be ``None`` (it is never evaluated)."""
    if w == 1:
        return eps_cond
    if eps_uncond is None:
        raise ValueError(f"CFG with w={w} needs the unconditional prediction")
    # Written as the pipelines write it, so gamma = 1 and gamma = 0 reproduce their outputs.
    return eps_uncond + w * (eps_cond - eps_uncond)


# Eq. 6 -- AutoLoRA without CFG: the base prediction is the reference, the LoRA prediction is extrapolated.
def autolora(eps_base: torch.Tensor, eps_lora: torch.Tensor, gamma: float) -> torch.Tensor:
    """AutoLoRA guidance (Eq. 6): ``eps_base + gamma (eps_lora - eps_base)``; exact at gamma 0 and 1."""
    return eps_base.lerp(eps_lora, gamma)


# Eq. 7 / Algorithm 2 -- AutoLoRA on top of each branch's CFG.
def autolora_cfg(
    eps_base_uncond: torch.Tensor | None,
    eps_base_cond: torch.Tensor,
    eps_lora_uncond: torch.Tensor | None,
    eps_lora_cond: torch.Tensor,
    *,
    w_base: float,
    w_lora: float,
    gamma: float,
) -> torch.Tensor:
    """AutoLoRA with CFG (Eq. 7, Algorithm 2): ``autolora(cfg(base, w1), cfg(lora, w2), gamma)``."""
    return autolora(
        cfg(eps_base_uncond, eps_base_cond, w_base), cfg(eps_lora_uncond, eps_lora_cond, w_lora), gamma
    )


# Eq. 7 written around the LoRA branch: eps = cfg_lora + (gamma - 1) * delta, delta = cfg_lora - cfg_base.
def guidance_delta(eps_base_cfg: torch.Tensor, eps_lora_cfg: torch.Tensor) -> torch.Tensor:
    """The AutoLoRA correction ``delta = cfg_lora - cfg_base`` (Eq. 7), what a delta cache keeps between steps."""
    return eps_lora_cfg - eps_base_cfg


def autolora_from_delta(eps_lora_cfg: torch.Tensor, delta: torch.Tensor, gamma: float) -> torch.Tensor:
    """Eq. 7 from the LoRA branch and a (possibly cached) correction: ``cfg_lora + (gamma - 1) delta``.

    With ``delta`` of the same step this equals ``autolora(cfg_base, cfg_lora, gamma)`` up to rounding.
    """
    return eps_lora_cfg + (gamma - 1) * delta


@dataclass(frozen=True)
class GuidanceSchedule:
    """When AutoLoRA guidance applies and with which gamma, per denoising step.

    Step ``i`` of ``n`` sits at progress ``p = i / n`` (0 = first step). Guidance applies where
    ``interval[0] <= p < interval[1]`` (so ``(0, 1)``, the paper's setting, covers every step); elsewhere the
    step is the LoRA model's own CFG prediction. ``gamma_end`` ramps gamma linearly from ``gamma`` at the first
    step to ``gamma_end`` at the last; ``None`` keeps it constant (the paper).
    """

    gamma: float = 1.5
    gamma_end: float | None = None
    interval: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if len(self.interval) != 2:
            raise ConfigError(f"interval must be two fractions (a, b), got {self.interval}")
        start, end = self.interval
        if not (0.0 <= start <= end <= 1.0):
            raise ConfigError(f"interval must satisfy 0 <= a <= b <= 1, got {self.interval}")
        # gamma < 0 would guide *away* from the LoRA past the base model: never a personalisation setting.
        for name, value in (("gamma", self.gamma), ("gamma_end", self.gamma_end)):
            if value is not None and not value >= 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")

    def is_active(self, step: int, num_steps: int) -> bool:
        """Whether AutoLoRA guidance applies at ``step`` (0-based) of ``num_steps``."""
        start, end = self.interval
        return start <= step / num_steps < end

    def single_branch(self) -> Literal["lora", "reference"] | None:
        """The branch every step reduces to when the other one's weight is zero on every step, else ``None``.

        No guided step, or gamma 1 throughout, is the LoRA branch's own CFG; gamma 0 on every step is the
        reference branch's. The other branch then never needs evaluating.
        """
        gamma_end = self.gamma if self.gamma_end is None else self.gamma_end
        if self.interval[0] == self.interval[1] or self.gamma == gamma_end == 1:
            return "lora"
        if self.interval == (0.0, 1.0) and self.gamma == gamma_end == 0:
            return "reference"
        return None

    def gamma_at(self, step: int, num_steps: int) -> float:
        """The gamma of ``step``: constant, or the linear ramp from ``gamma`` to ``gamma_end``."""
        if self.gamma_end is None or num_steps == 1:
            return self.gamma
        return self.gamma + (self.gamma_end - self.gamma) * step / (num_steps - 1)
