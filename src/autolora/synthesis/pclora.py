"""PCLoRA: a LoRA as a learned mixture of a basis, fitted on a few images through the diffusion loss.

ethansmith2000/AutoLoRADiscovery learns only mixing coefficients over bank LoRAs; weights2weights
inverts an image by optimising its PC coefficients. Both are ``vector = offset + Σ_k c_k · basis_k``
in unnormalised LoRA space with the basis either bank rows (``offset = 0``) or scaled principal
components (``offset`` = the bank mean), and the coefficients shared by the whole LoRA
(``"global"``), one set per module (``"layer"``) or one per factor (``"factor"``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from autolora.errors import ConfigError
from autolora.synthesis.canonical import Layout

Granularity = Literal["global", "layer", "factor"]


class CoefficientLoRA(nn.Module):
    """Raw canonical LoRA vectors ``offset + Σ_k c[k, group(i)] · basis[k, i]`` with learnable ``c``."""

    def __init__(
        self,
        layout: Layout,
        basis: torch.Tensor,
        offset: torch.Tensor | None = None,
        granularity: Granularity = "global",
        init: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if basis.ndim != 2 or basis.shape[1] != layout.dim:
            raise ConfigError(
                f"a basis for this layout has shape (K, {layout.dim}), got {tuple(basis.shape)}"
            )
        segments = layout.segment_ids()
        groups = {"global": torch.zeros_like(segments), "layer": segments // 2, "factor": segments}[
            granularity
        ]
        self.layout = layout
        # Segments lie in order along the vector, so each group is one contiguous run of columns and the
        # mixture is one small matmul per group: far cheaper, forward and backward, than gathering a
        # coefficient for every (row, column) of a bank of hundreds of LoRAs.
        self.sizes = torch.bincount(groups).tolist()
        self.register_buffer("basis", basis.float())
        self.register_buffer("offset", torch.zeros(layout.dim) if offset is None else offset.float())
        count = len(self.sizes)
        start = (
            torch.zeros(len(basis), count)
            if init is None
            else init.float().reshape(len(basis), -1).expand(-1, count)
        )
        self.coefficients = nn.Parameter(start.clone())

    @classmethod
    def one_hot(
        cls, layout: Layout, basis: torch.Tensor, index: int, granularity: Granularity = "global"
    ) -> CoefficientLoRA:
        """Coefficients selecting basis row ``index`` alone (PCLoRA started at one bank LoRA)."""
        return cls(
            layout, basis, granularity=granularity, init=F.one_hot(torch.tensor(index), len(basis)).float()
        )

    def vector(self) -> torch.Tensor:
        """The current unnormalised LoRA vector."""
        chunks = self.basis.split(self.sizes, dim=1)
        mixed = [weights @ chunk for weights, chunk in zip(self.coefficients.T, chunks, strict=True)]
        return self.offset + torch.cat(mixed)


@dataclass
class DiffusionLoss:
    """The denoising loss (``autolora.world.training.denoising_loss``) of a pipeline's UNet on a few
    captioned images, their latents cached."""

    pipe: Any
    latents: torch.Tensor
    hidden: torch.Tensor
    #: The forward process of DDPM, whatever sampler the pipeline ships with.
    schedule: Any

    @classmethod
    @torch.no_grad()
    def prepare(cls, pipe: Any, images: list, captions: list[str]) -> DiffusionLoss:
        from diffusers import DDPMScheduler

        from autolora.world.training import encode_captions, images_to_tensor

        if len(images) != len(captions) or not images:
            raise ConfigError(
                f"need one caption per image, got {len(images)} images and {len(captions)} captions"
            )
        size = pipe.unet.config.sample_size * pipe.vae_scale_factor
        pixels = images_to_tensor([image.convert("RGB").resize((size, size)) for image in images])
        latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        hidden = pipe.text_encoder(encode_captions(pipe.tokenizer, captions))[0]
        return cls(pipe, latents, hidden, DDPMScheduler.from_config(pipe.scheduler.config))

    def __call__(
        self, parameters: dict[str, torch.Tensor], generator: torch.Generator, batch_size: int
    ) -> torch.Tensor:
        """Loss of the UNet with ``parameters`` substituted (``torch.func.functional_call``)."""
        from autolora.world.training import denoising_loss

        index = torch.randint(len(self.latents), (batch_size,), generator=generator)

        def unet(*inputs: torch.Tensor) -> Any:
            return torch.func.functional_call(self.pipe.unet, parameters, inputs)

        return denoising_loss(unet, self.schedule, self.latents[index], self.hidden[index], generator)


def fit_coefficients(
    pipe: Any,
    model: CoefficientLoRA,
    images: list,
    captions: list[str],
    *,
    steps: int = 200,
    learning_rate: float = 1e-2,
    batch_size: int = 4,
    seed: int = 0,
    callback: Callable[[int], None] | None = None,
) -> list[float]:
    """Fit ``model``'s coefficients on ``images`` by the diffusion loss of ``pipe``'s UNet; returns losses.

    Only the coefficients train; the UNet gets a rank-``R`` adapter whose factors are computed from them
    at every step, and the adapter is removed afterwards. ``callback(step)`` runs after each step
    (1-based), e.g. to record ``model.vector()`` along the way.
    """
    from peft import LoraConfig

    loss_fn = DiffusionLoss.prepare(pipe, images, captions)
    unet, rank, name = pipe.unet, model.layout.rank, "pclora"
    unet.requires_grad_(False)
    targets = [module.removeprefix("unet.") for module in model.layout.modules]
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets), adapter_name=name)
    try:
        optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
        generator = torch.Generator().manual_seed(seed)
        losses = []
        for _ in range(steps):
            state = model.layout.unflatten(model.vector())
            parameters = {
                key.removeprefix("unet.")
                .replace(".lora_A.", f".lora_A.{name}.")
                .replace(".lora_B.", f".lora_B.{name}."): v
                for key, v in state.items()
            }
            loss = loss_fn(parameters, generator, batch_size)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if callback is not None:
                callback(len(losses))
    finally:
        unet.delete_adapters(name)
    return losses


def invert(
    pipe: Any,
    prior: Any,
    images: list,
    captions: list[str],
    *,
    granularity: Granularity = "global",
    **options: Any,
) -> torch.Tensor:
    """weights2weights' inversion: the raw LoRA vector in a PCA prior's span that best explains ``images``.

    Optimises coefficients of the prior's principal components (scaled by their standard deviations,
    starting at the bank mean) through the diffusion loss; ``options`` go to ``fit_coefficients``.
    """
    basis, offset = prior.pca.basis()
    scale = prior.stds[prior.layout.segment_ids()]
    model = CoefficientLoRA(prior.layout, basis * scale, offset * scale, granularity)
    fit_coefficients(pipe, model, images, captions, **options)
    return model.vector().detach()
