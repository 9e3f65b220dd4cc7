"""AutoLoRA guidance as a guider for diffusers modular pipelines (``diffusers.guiders``).

A modular pipeline asks its guider which predictions it needs, runs the denoiser once per prediction between
``prepare_models`` and ``cleanup_models``, and hands the predictions to the guider. This guider asks for the
base model's and the LoRA model's (cond, uncond) predictions, switches the denoiser's LoRA adapters off for the
base ones, and combines them with Eq. 7.

Limit: a modular pipeline encodes the prompt once, with whatever adapters are active, so a text-encoder LoRA
would reach the base branch too. Use ``autolora.generate`` for LoRAs that include text-encoder weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.guiders.guider_utils import BaseGuidance, GuiderOutput

from autolora.branches import BranchSwitcher
from autolora.guidance import autolora_cfg, cfg
from autolora.params import GenerationParams

if TYPE_CHECKING:
    from diffusers.modular_pipelines.modular_pipeline import BlockState


class AutoLoRAGuidance(BaseGuidance):
    """AutoLoRA guidance (Eq. 7, Algorithm 2): ``cfg_base(w1) + gamma (cfg_lora(w2) - cfg_base(w1))``.

    Args (checked by ``GenerationParams``, the fields of the same names):
        gamma: guidance strength, ``>= 0``; 0 = base model with CFG, 1 = LoRA model with CFG (paper: 1.5).
        cfg_base: w1, the base branch's CFG scale, ``>= 1`` (1 = no CFG, one prediction fewer).
        cfg_lora: w2, the LoRA branch's CFG scale, ``>= 1``.
        gamma_end: optional linear ramp of gamma to this value at the last step.
        interval: (a, b), the fractions of the denoising steps where AutoLoRA applies; elsewhere the LoRA
            branch's CFG alone runs (two predictions instead of four).
        enabled: when False, the LoRA model's conditional prediction alone (as diffusers' CFG guider does).
        guidance_scale_base, guidance_scale_lora, start, stop: the former names of cfg_base, cfg_lora and
            interval's ends, still accepted.
    """

    _input_predictions: ClassVar[list[str]] = [
        "pred_cond_base",
        "pred_uncond_base",
        "pred_cond_lora",
        "pred_uncond_lora",
    ]

    @register_to_config
    def __init__(
        self,
        gamma: float = 1.5,
        cfg_base: float = 7.5,
        cfg_lora: float = 7.5,
        gamma_end: float | None = None,
        interval: tuple[float, float] = (0.0, 1.0),
        enabled: bool = True,
        *,
        guidance_scale_base: float | None = None,
        guidance_scale_lora: float | None = None,
        start: float | None = None,
        stop: float | None = None,
    ) -> None:
        params = GenerationParams(
            gamma=gamma,
            gamma_end=gamma_end,
            cfg_base=cfg_base if guidance_scale_base is None else guidance_scale_base,
            cfg_lora=cfg_lora if guidance_scale_lora is None else guidance_scale_lora,
            interval=(interval[0] if start is None else start, interval[1] if stop is None else stop),
        )
        super().__init__(*params.interval, enabled)
        self.schedule = params.schedule
        self.guidance_scale_base, self.guidance_scale_lora = params.cfg_base, params.cfg_lora
        self._switcher: BranchSwitcher | None = None
        self._denoiser: torch.nn.Module | None = None

    def _predictions(self) -> list[tuple[int, str]]:
        """(tuple index into the pipeline's (cond, uncond) inputs, prediction name), in evaluation order."""
        lora = [(0, "pred_cond_lora")]
        if not self._enabled:
            return lora
        if self.guidance_scale_lora != 1:
            lora.append((1, "pred_uncond_lora"))
        if not self._is_guided():
            return lora
        base = [(0, "pred_cond_base")]
        if self.guidance_scale_base != 1:
            base.append((1, "pred_uncond_base"))
        return base + lora

    def _is_guided(self) -> bool:
        if self._num_inference_steps is None:
            return True
        return self.schedule.is_active(self._step, self._num_inference_steps)

    def prepare_inputs(self, data: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list[BlockState]:
        return [self._prepare_batch(data, index, name) for index, name in self._predictions()]

    def prepare_inputs_from_block_state(
        self, data: BlockState, input_fields: dict[str, str | tuple[str, str]]
    ) -> list[BlockState]:
        return [
            self._prepare_batch_from_block_state(input_fields, data, index, name)
            for index, name in self._predictions()
        ]

    def prepare_models(self, denoiser: torch.nn.Module) -> None:
        self._count_prepared += 1
        if (
            self._switcher is None
            or denoiser is not self._denoiser
            or (self._step, self._count_prepared) == (0, 1)
        ):
            # Collected once per run (a full module walk), at its first prediction, when the denoiser is in
            # the user's adapter state; every prediction restores that state, so it holds for later steps.
            self._switcher, self._denoiser = BranchSwitcher([denoiser]), denoiser
        if self._current_prediction().endswith("_base"):
            self._switcher.apply({})

    def cleanup_models(self, denoiser: torch.nn.Module) -> None:
        if self._switcher is not None:
            self._switcher.restore()

    def _current_prediction(self) -> str:
        return self._predictions()[self._count_prepared - 1][1]

    def forward(
        self,
        pred_cond_lora: torch.Tensor,
        pred_uncond_lora: torch.Tensor | None = None,
        pred_cond_base: torch.Tensor | None = None,
        pred_uncond_base: torch.Tensor | None = None,
    ) -> GuiderOutput:
        w_lora = self.guidance_scale_lora if pred_uncond_lora is not None else 1.0
        if pred_cond_base is None:
            pred = cfg(pred_uncond_lora, pred_cond_lora, w_lora)
        else:
            pred = autolora_cfg(
                pred_uncond_base,
                pred_cond_base,
                pred_uncond_lora,
                pred_cond_lora,
                w_base=self.guidance_scale_base,
                w_lora=w_lora,
                gamma=self.schedule.gamma_at(self._step, self._num_inference_steps),
            )
        return GuiderOutput(pred=pred, pred_cond=pred_cond_lora, pred_uncond=pred_uncond_lora)

    @property
    def is_conditional(self) -> bool:
        return self._current_prediction().startswith("pred_cond")

    @property
    def num_conditions(self) -> int:
        return len(self._predictions())

    def get_state(self) -> dict[str, Any]:
        return {**super().get_state(), "predictions": [name for _, name in self._predictions()]}
