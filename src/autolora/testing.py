"""Tiny random SD1.5 / SDXL / SD3 / Flux pipelines built from configs, and random LoRA files for them.

For tests (autolora's and a plugin's) and quick experiments: nothing here is downloaded or trained.

Everything is offline: CLIP tokenizers come from ``autolora.world.tokenizer``, the T5 tokenizer is built
with the ``tokenizers`` library. Components follow diffusers' own fast tests (hidden size 32, a layer or two),
so a 2-step 32x32 image takes well under a second on CPU.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

from autolora.world.tokenizer import build_clip_tokenizer

WORDS = ["a", "photo", "of", "cat", "dog", "red", "blue", "sks", "painting", "style"]
KINDS = ("sd15", "sdxl", "sd3", "flux")

# LoRA targets per denoiser (attention projections, as most published LoRAs).
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TRANSFORMER_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]

# What the SD3 and Flux builders share: a one-layer MMDiT on unpatched latents, and the VAE's latent shift and
# scale of those models.
_MMDIT = dict(patch_size=1, num_layers=1, joint_attention_dim=32)
_FLOW_VAE = dict(shift_factor=0.0609, scaling_factor=1.5035)


def _clip_text_encoder(tokenizer, projection: bool, hidden_size: int = 32):
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=hidden_size,
        intermediate_size=37,
        projection_dim=32,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        hidden_act="gelu",
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _vae(latent_channels: int = 4, **extra) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=latent_channels,
        norm_num_groups=2,
        sample_size=32,
        **extra,
    )


def t5_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    """An offline T5-style tokenizer (word level, ``</s>`` at the end, ``<pad>`` = 0)."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{word: i + 3 for i, word in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    from tokenizers.processors import TemplateProcessing

    backend.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def _t5_encoder(tokenizer) -> T5EncoderModel:
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(config)


def _unet(**extra: Any) -> UNet2DConditionModel:
    """A two-level UNet with cross-attention in the lower level; ``extra`` sets the SD1.5/SDXL differences."""
    return UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        **extra,
    )


def _text_encoders(folder: str | Path, encoders: tuple[str, ...]) -> dict[str, Any]:
    """Tokenizers and text encoders named as a pipeline's components (``tokenizer``, ``text_encoder_2``, ...).

    ``encoders`` lists each one's kind in order: ``"clip"``, ``"clip+projection"`` or ``"t5"``. They are
    built in that order, after the denoiser and the VAE, so every kind keeps the same random weights.
    """
    components: dict[str, Any] = {}
    for number, kind in enumerate(encoders, start=1):
        suffix = "" if number == 1 else f"_{number}"
        if kind == "t5":
            tokenizer = t5_tokenizer(Path(folder) / f"tokenizer{suffix}")
            encoder = _t5_encoder(tokenizer)
        else:
            tokenizer = build_clip_tokenizer(WORDS, Path(folder) / f"tokenizer{suffix}")
            encoder = _clip_text_encoder(tokenizer, projection=kind == "clip+projection")
        components |= {f"tokenizer{suffix}": tokenizer, f"text_encoder{suffix}": encoder}
    return components


def tiny_sd15(folder: str | Path) -> StableDiffusionPipeline:
    """A random SD1.5-shaped pipeline (UNet with cross-attention, one CLIP text encoder)."""
    torch.manual_seed(0)
    unet = _unet(cross_attention_dim=32, attention_head_dim=4)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        scheduler=scheduler,
        vae=_vae(),
        **_text_encoders(folder, ("clip",)),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    return _finish(pipe)


def tiny_sdxl(folder: str | Path) -> StableDiffusionXLPipeline:
    """A random SDXL-shaped pipeline (text-time conditioning, two CLIP text encoders)."""
    torch.manual_seed(0)
    unet = _unet(
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 time ids * 8 + pooled text (32)
        cross_attention_dim=64,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
    )
    encoders = _text_encoders(folder, ("clip", "clip+projection"))
    pipe = StableDiffusionXLPipeline(
        unet=unet, scheduler=scheduler, vae=_vae(), **encoders, image_encoder=None, feature_extractor=None
    )
    return _finish(pipe)


def tiny_sd3(folder: str | Path) -> StableDiffusion3Pipeline:
    """A random SD3-shaped pipeline (MMDiT, two CLIP text encoders and a T5)."""
    torch.manual_seed(0)
    sizes = dict(
        sample_size=16, in_channels=4, out_channels=4, caption_projection_dim=32, pooled_projection_dim=64
    )
    transformer = SD3Transformer2DModel(**_MMDIT, **sizes, attention_head_dim=8, num_attention_heads=4)
    vae = _vae(**_FLOW_VAE)
    encoders = _text_encoders(folder, ("clip+projection", "clip+projection", "t5"))
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, **encoders
    )
    return _finish(pipe)


def tiny_flux(folder: str | Path) -> FluxPipeline:
    """A random Flux-shaped pipeline (guidance-distilled MMDiT, one CLIP and a T5)."""
    torch.manual_seed(0)
    sizes = dict(in_channels=16, num_single_layers=1, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
    transformer = FluxTransformer2DModel(
        **_MMDIT, **sizes, attention_head_dim=16, num_attention_heads=2, guidance_embeds=True
    )
    vae = _vae(latent_channels=4, **_FLOW_VAE)
    encoders = _text_encoders(folder, ("clip", "t5"))
    pipe = FluxPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, **encoders
    )
    return _finish(pipe)


def tiny_image_encoder(kind: str, folder: str | Path, *, width: int = 16, resize: int = 32) -> Path:
    """A random one-layer DINOv2 (``kind="dinov2"``) or CLIP vision tower with an 8-wide projection
    (``"clip"``) on 32x32 crops, and its image processor (shortest edge ``resize``), saved like a Hub repo."""
    from transformers import (
        BitImageProcessor,
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        Dinov2Config,
        Dinov2Model,
    )

    torch.manual_seed(0)
    tower = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1, num_attention_heads=2)
    tower |= dict(image_size=32, patch_size=8)
    if kind == "dinov2":
        model, processor = Dinov2Model(Dinov2Config(**tower)), BitImageProcessor
    else:
        model, processor = (
            CLIPVisionModelWithProjection(CLIPVisionConfig(**tower, projection_dim=8)),
            CLIPImageProcessor,
        )
    model.save_pretrained(str(folder))
    processor(size={"shortest_edge": resize}, crop_size={"height": 32, "width": 32}).save_pretrained(
        str(folder)
    )
    return Path(folder)


FACTORIES = {"sd15": tiny_sd15, "sdxl": tiny_sdxl, "sd3": tiny_sd3, "flux": tiny_flux}


def tiny_pipeline(kind: str, folder: str | Path) -> DiffusionPipeline:
    """The tiny pipeline of ``kind`` (one of ``KINDS``), its tokenizers written under ``folder``."""
    return FACTORIES[kind](folder)


def _finish(pipe):
    """Inference mode as ``from_pretrained`` leaves it (models built from configs start in training mode,
    where T5's dropout would make every prompt encoding different), and no progress bars."""
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_lora_state_dict(
    pipe: DiffusionPipeline,
    *,
    seed: int = 0,
    rank: int = 4,
    denoiser: bool = True,
    text_encoder: bool = False,
    std: float = 0.3,
) -> dict[str, torch.Tensor]:
    """A random diffusers-format LoRA for ``pipe``: denoiser attention and/or the first text encoder."""
    generator = torch.Generator().manual_seed(seed)
    denoiser_name = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
    targets = {}
    if denoiser:
        targets[denoiser_name] = UNET_TARGETS if denoiser_name == "unet" else TRANSFORMER_TARGETS
    if text_encoder:
        targets["text_encoder"] = TEXT_ENCODER_TARGETS
    state: dict[str, torch.Tensor] = {}
    for component, modules in targets.items():
        # Inject into a copy so the pipeline itself stays free of LoRA layers.
        model = copy.deepcopy(getattr(pipe, component))
        model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=modules), adapter_name="random")
        for key, tensor in get_peft_model_state_dict(model, adapter_name="random").items():
            state[f"{component}.{key}"] = torch.randn(tensor.shape, generator=generator) * std
    return state


def random_lora_file(pipe: DiffusionPipeline, path: str | Path, **options: Any) -> Path:
    """Write ``random_lora_state_dict(pipe, **options)`` to a safetensors file."""
    path = Path(path)
    save_file(random_lora_state_dict(pipe, **options), str(path))
    return path
