"""The miniature world's Stable Diffusion components, built from configs.

The same classes and folder layout as Stable Diffusion 1.x (CLIP text encoder and tokenizer,
``AutoencoderKL``, ``UNet2DConditionModel``, a multistep solver), only small enough to train on
two CPU cores: 32x32 RGB images, 8x8 latents with 16 channels (as SD3 and Flux, where SD1.x has 4).
``Architecture`` holds every size, so tests build the same components at a tiny scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from autolora.world.styles import IMAGE_SIZE, vocabulary
from autolora.world.tokenizer import build_clip_tokenizer

#: Captions are a handful of words, so a short context keeps the text encoder small.
MAX_TOKENS = 16
TEXT_DIM = 64

#: Stable Diffusion 1.x's noise schedule, so the world shares SD's timestep semantics.
SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "steps_offset": 1,
}


def build_tokenizer(folder: str | Path) -> CLIPTokenizer:
    """A CLIP tokenizer with one token per word of the world's vocabulary, written to ``folder``."""
    return build_clip_tokenizer(vocabulary(), folder, model_max_length=MAX_TOKENS)


@dataclass(frozen=True)
class Architecture:
    """The sizes of the world's networks."""

    text_layers: int = 2
    vae_channels: tuple[int, ...] = (32, 64, 64)
    #: 16 channels keep textures and thin strokes through the 4x downsampling (4 channels blur them).
    latent_channels: int = 16
    unet_channels: tuple[int, ...] = (64, 128)
    unet_layers: int = 2
    attention_head_dim: int = 8
    norm_groups: int = 16

    @property
    def latent_size(self) -> int:
        """Side of the latent: each VAE level after the first halves the image."""
        return IMAGE_SIZE // 2 ** (len(self.vae_channels) - 1)


#: The shipped world.
FULL = Architecture()
#: The same component types at the smallest useful sizes, for tests.
TINY = Architecture(
    text_layers=1,
    vae_channels=(8, 8, 8),
    latent_channels=4,
    unet_channels=(16, 16),
    unet_layers=1,
    attention_head_dim=4,
    norm_groups=8,
)


def build_text_encoder(tokenizer: CLIPTokenizer, architecture: Architecture = FULL) -> CLIPTextModel:
    """A small CLIP text transformer whose vocabulary and special tokens match ``tokenizer``."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        intermediate_size=2 * TEXT_DIM,
        num_hidden_layers=architecture.text_layers,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=TEXT_DIM,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_vae(architecture: Architecture = FULL) -> AutoencoderKL:
    """A KL autoencoder from 32x32 RGB to ``latent_size`` x ``latent_size`` x ``latent_channels`` latents."""
    levels = len(architecture.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=architecture.vae_channels,
        layers_per_block=1,
        latent_channels=architecture.latent_channels,
        norm_num_groups=architecture.norm_groups,
        sample_size=IMAGE_SIZE,
    )


def build_unet(architecture: Architecture = FULL) -> UNet2DConditionModel:
    """A conditional UNet with cross-attention (LoRA's targets) at every level."""
    levels = len(architecture.unet_channels)
    return UNet2DConditionModel(
        sample_size=architecture.latent_size,
        in_channels=architecture.latent_channels,
        out_channels=architecture.latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * levels,
        up_block_types=("CrossAttnUpBlock2D",) * levels,
        block_out_channels=architecture.unet_channels,
        layers_per_block=architecture.unet_layers,
        attention_head_dim=architecture.attention_head_dim,
        cross_attention_dim=TEXT_DIM,
        norm_num_groups=architecture.norm_groups,
    )


def build_train_scheduler() -> DDPMScheduler:
    """The forward process used to train the UNet and the LoRAs."""
    return DDPMScheduler(**SCHEDULE)


def build_sample_scheduler() -> DPMSolverMultistepScheduler:
    """The sampler shipped with the pipeline: few steps, same schedule as training."""
    return DPMSolverMultistepScheduler(**SCHEDULE)
