"""The miniature world's Stable Diffusion components, built from configs.

The same classes and folder layout as Stable Diffusion 1.x (CLIP text encoder and tokenizer,
``AutoencoderKL``, ``UNet2DConditionModel``, a multistep solver), only small enough to train on
two CPU cores: 32x32 RGB images, 8x8x4 latents.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from autolora.world.styles import IMAGE_SIZE, vocabulary
from autolora.world.tokenizer import build_clip_tokenizer

#: Captions are a handful of words, so a short context keeps the text encoder small.
MAX_TOKENS = 16
TEXT_DIM = 64
LATENT_CHANNELS = 4
LATENT_SIZE = IMAGE_SIZE // 4

#: Stable Diffusion 1.x's noise schedule, so the world shares SD's timestep semantics.
SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
}


def build_tokenizer(folder: str | Path) -> CLIPTokenizer:
    """A CLIP tokenizer with one token per word of the world's vocabulary, written to ``folder``."""
    return build_clip_tokenizer(vocabulary(), folder, model_max_length=MAX_TOKENS)


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A two-layer CLIP text transformer whose vocabulary and special tokens match ``tokenizer``."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_DIM,
        intermediate_size=2 * TEXT_DIM,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=TEXT_DIM,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_vae() -> AutoencoderKL:
    """A KL autoencoder that maps 32x32 RGB to 8x8x4 latents (two downsamplings)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=16,
        sample_size=IMAGE_SIZE,
    )


def build_unet() -> UNet2DConditionModel:
    """A two-level conditional UNet with cross-attention (LoRA's targets) at both levels."""
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=4,
        cross_attention_dim=TEXT_DIM,
        norm_num_groups=16,
    )


def build_train_scheduler() -> DDPMScheduler:
    """The forward process used to train the UNet and the LoRAs."""
    return DDPMScheduler(**SCHEDULE)


def build_sample_scheduler() -> DPMSolverMultistepScheduler:
    """The sampler shipped with the pipeline: few steps, same schedule as training."""
    return DPMSolverMultistepScheduler(**SCHEDULE)
