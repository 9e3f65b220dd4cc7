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


# --- Baselines a user would reach for instead of AutoLoRA ----------------------------------------


# Kynkäänniemi et al. 2024, "Applying Guidance in a Limited Interval Improves Sample and Distribution
# Quality in Diffusion Models", Eq. 2: CFG only at noise levels sigma in (sigma_lo, sigma_hi].
def interval_cfg(
    eps_uncond: torch.Tensor | None,
    eps_cond: torch.Tensor,
    w: float,
    sigma: float,
    interval: tuple[float, float],
) -> torch.Tensor:
    """Guidance in a limited interval: ``cfg(eps_u, eps_c, w)`` if ``sigma_lo < sigma <= sigma_hi``, else
    ``eps_c``, the conditional prediction alone (the paper's ``D_1``). ``sigma`` is the EDM noise level
    (``sqrt((1 - alpha_bar) / alpha_bar)`` for DDPM-style schedules); the paper's SDXL interval is (0.28, 5.42]."""
    sigma_lo, sigma_hi = interval
    return cfg(eps_uncond, eps_cond, w) if sigma_lo < sigma <= sigma_hi else eps_cond


# Sadat et al. 2024, "CADS: Unleashing the Diversity of Diffusion Models through Condition-Annealed
# Sampling", Eq. 5: the annealing schedule gamma(t) over normalised time t (1 = pure noise, 0 = data).
def cads_gamma(t: float, tau1: float, tau2: float) -> float:
    """CADS annealing: ``1`` for ``t <= tau1``, ``(tau2 - t) / (tau2 - tau1)`` between, ``0`` for ``t >= tau2``."""
    if t <= tau1:
        return 1.0
    if t >= tau2:
        return 0.0
    return (tau2 - t) / (tau2 - tau1)


# CADS, Eq. 4 and 6: Gaussian noise on the conditioning y, then its mean and spread restored.
def cads_condition(
    y: torch.Tensor, noise: torch.Tensor, gamma: float, noise_scale: float, psi: float
) -> torch.Tensor:
    """Condition annealing (CADS Eq. 4, 6)::

        y_hat       = sqrt(gamma) y + s sqrt(1 - gamma) n,       n ~ N(0, I)
        y_rescaled  = (y_hat - mean(y_hat)) / std(y_hat) * std(y) + mean(y)
        y_final     = psi y_rescaled + (1 - psi) y_hat

    ``gamma`` is :func:`cads_gamma` at this step, ``s = noise_scale``; mean and std are taken per sample over
    all its elements. ``gamma = 1`` returns ``y`` itself (the condition is untouched, plain CFG follows).
    """
    if gamma == 1:
        return y
    y_hat = gamma**0.5 * y + noise_scale * (1 - gamma) ** 0.5 * noise
    dims = tuple(range(1, y.ndim))
    mean_in, std_in = y.mean(dims, keepdim=True), y.std(dims, keepdim=True)
    # A zero y_hat (no noise where gamma = 0) has no spread to rescale: it becomes mean(y), not NaN.
    mean_hat = y_hat.mean(dims, keepdim=True)
    std_hat = y_hat.std(dims, keepdim=True).clamp_min(torch.finfo(y.dtype).tiny)
    y_rescaled = (y_hat - mean_hat) / std_hat * std_in + mean_in
    return psi * y_rescaled + (1 - psi) * y_hat


@dataclass(frozen=True)
class CADSSchedule:
    """CADS settings: noise scale ``s``, annealing thresholds ``tau1 <= tau2`` in [0, 1], rescale mix ``psi``.

    The paper's defaults for text-to-image: s = 0.25, tau = (0.6, 0.9), psi = 1. ``noise_scale = 0`` with
    ``psi = 1`` restores y wherever gamma > 0; ``tau1 = 1`` never anneals (plain CFG).
    """

    noise_scale: float = 0.25
    tau: tuple[float, float] = (0.6, 0.9)
    psi: float = 1.0

    def __post_init__(self) -> None:
        if not self.noise_scale >= 0:
            raise ConfigError(f"cads_noise must be >= 0, got {self.noise_scale}")
        if len(self.tau) != 2 or not (0.0 <= self.tau[0] <= self.tau[1] <= 1.0):
            raise ConfigError(f"cads_tau must satisfy 0 <= tau1 <= tau2 <= 1, got {self.tau}")
        if not (0.0 <= self.psi <= 1.0):
            raise ConfigError(f"cads_psi must be in [0, 1], got {self.psi}")

    def gamma_at(self, t: float) -> float:
        """gamma(t) of Eq. 5 at normalised time ``t`` (1 = pure noise)."""
        return cads_gamma(t, *self.tau)
