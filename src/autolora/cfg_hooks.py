"""Baselines that change the pipeline's own classifier-free guidance: CFG in a limited interval and CADS.

``generate`` registers :class:`CFGHook` on the denoiser for methods "lora" and "base" when ``cfg_interval``
or ``cads`` is set. The pipeline keeps its loop and its ``u + w (c - u)``:

* outside the interval (Kynkäänniemi et al. 2024) the hook evaluates only the conditional rows and returns
  them in both slots, so the pipeline's formula gives ``c`` exactly (the paper's ``D_1``) at half the cost;
* CADS (Sadat et al. 2024) replaces the conditional rows' text embeddings by ``cads_condition(...)`` before
  the denoiser runs; the unconditional rows keep theirs.

The math is in :mod:`autolora.guidance` (``interval_cfg``, ``cads_gamma``, ``cads_condition``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers.hooks import ModelHook

from autolora.guidance import CADSSchedule, cads_condition
from autolora.pipelines import _as_output, _keyword_inputs, _latent_name

# CADS noise comes from its own generator per image, seeded apart from the image's initial noise.
_CADS_SEED_OFFSET = 0x5EEDCAD5


def noise_level(scheduler: Any, timestep: float) -> float:
    """The EDM noise level sigma of ``timestep``: ``sqrt((1 - a) / a)`` for DDPM-style schedules (a = alpha_bar),
    ``s / (1 - s)`` for flow matching (``s = timestep / num_train_timesteps``), so one interval fits both."""
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is not None:
        alpha_bar = float(alphas_cumprod[round(timestep)])
        return math.sqrt((1 - alpha_bar) / alpha_bar)
    s = timestep / scheduler.config.num_train_timesteps
    return math.inf if s >= 1 else s / (1 - s)


class CFGHook(ModelHook):
    """Denoiser hook for a pipeline's own CFG over rows ``[uncond, cond]`` (or ``cond`` alone when w = 1)."""

    def __init__(
        self,
        *,
        num_images: int,
        w: float,
        interval: tuple[float, float] | None,
        cads: CADSSchedule | None,
        seeds: list[int],
        scheduler: Any,
    ) -> None:
        super().__init__()
        self.num_images, self.w, self.interval, self.cads = num_images, w, interval, cads
        self.scheduler = scheduler
        self.latent_name = ""
        self.generators = [torch.Generator("cpu").manual_seed(seed + _CADS_SEED_OFFSET) for seed in seeds]

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self.latent_name = _latent_name(module)
        return module

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        inputs = _keyword_inputs(module, args, kwargs)
        rows = inputs[self.latent_name].shape[0]
        timestep = inputs["timestep"]
        t = float(timestep.reshape(-1)[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        cond = slice(rows - self.num_images, rows)  # the conditional rows come last
        if self.cads is not None:
            inputs["encoder_hidden_states"] = self._annealed(inputs["encoder_hidden_states"], cond, t)
        guided = self.w > 1 and rows == 2 * self.num_images
        if guided and self.interval is not None:
            sigma_lo, sigma_hi = self.interval
            if not sigma_lo < noise_level(self.scheduler, t) <= sigma_hi:
                # D_1: the conditional prediction in both slots, so u + w (c - u) = c exactly.
                eps_cond = self.fn_ref.original_forward(
                    **{**_rows(inputs, cond, rows), "return_dict": False}
                )[0]
                return _as_output(eps_cond.repeat(2, *([1] * (eps_cond.ndim - 1))), inputs)
        return self.fn_ref.original_forward(**inputs)

    def _annealed(self, embeddings: torch.Tensor, cond: slice, t: float) -> torch.Tensor:
        """The embeddings with the conditional rows annealed by CADS at normalised time t."""
        gamma = self.cads.gamma_at(t / self.scheduler.config.num_train_timesteps)
        y = embeddings[cond]
        noise = torch.stack(
            [torch.randn(y.shape[1:], generator=g, dtype=torch.float32) for g in self.generators]
        ).to(device=y.device, dtype=y.dtype)
        annealed = embeddings.clone()
        annealed[cond] = cads_condition(y, noise, gamma, self.cads.noise_scale, self.cads.psi)
        return annealed


def _rows(inputs: dict[str, Any], rows: slice, num_rows: int) -> dict[str, Any]:
    """``inputs`` restricted to ``rows``: every tensor (nested dicts included) batched over ``num_rows``."""
    out: dict[str, Any] = {}
    for name, value in inputs.items():
        if isinstance(value, dict):
            out[name] = _rows(value, rows, num_rows)
        elif isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == num_rows:
            out[name] = value[rows]
        else:
            out[name] = value
    return out
