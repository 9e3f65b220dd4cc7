"""Few-shot LoRA training for Stable Diffusion pipelines, and the miniature world's LoRA bank.

``train_lora`` takes any diffusers pipeline folder, a handful of images and their captions, adds a
peft ``LoraConfig`` to the UNet's attention projections and trains only those weights with the
usual epsilon-prediction loss. The result is saved with diffusers' own helpers, so
``pipe.load_lora_weights(file)`` reads it back. ``read_image_folder`` accepts the two common
dataset layouts: Hugging Face ``imagefolder`` (``metadata.jsonl`` with ``file_name`` and
``text``) and kohya (a ``.txt`` caption beside each image).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image
from safetensors.torch import save_file

from autolora.errors import ConfigError, InputFileError
from autolora.lora import to_kohya_state_dict
from autolora.world.lora_config import LoRATrainingConfig
from autolora.world.styles import STYLES, sample_style
from autolora.world.training import StageResult, encode_captions, images_to_tensor, run_stage, write_json

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def read_image_folder(folder: str | Path) -> tuple[list[Image.Image], list[str]]:
    """Images and captions from ``metadata.jsonl`` (imagefolder) or ``.txt`` sidecars (kohya)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(f"image folder {folder} does not exist")
    metadata = folder / "metadata.jsonl"
    if metadata.exists():
        rows = [json.loads(line) for line in metadata.read_text().splitlines() if line.strip()]
        try:
            pairs = [(folder / row["file_name"], str(row["text"])) for row in rows]
        except KeyError as error:
            raise InputFileError(
                f"{metadata}: every line needs 'file_name' and 'text' ({error} missing)"
            ) from None
    else:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        missing = [p.name for p in files if not p.with_suffix(".txt").exists()]
        if missing:
            raise InputFileError(
                f"{folder}: no metadata.jsonl and no caption .txt for {', '.join(missing[:5])}"
            )
        pairs = [(p, p.with_suffix(".txt").read_text().strip()) for p in files]
    if not pairs:
        raise InputFileError(f"image folder {folder} holds no images")
    images = []
    for path, _ in pairs:
        try:
            images.append(Image.open(path).convert("RGB"))
        except OSError as error:
            raise InputFileError(f"cannot read image {path}: {error}") from None
    return images, [text for _, text in pairs]


def train_lora(
    pipeline: str | Path | StableDiffusionPipeline,
    images: list[Image.Image],
    captions: list[str],
    out_file: str | Path,
    config: LoRATrainingConfig | None = None,
    kohya_file: str | Path | None = None,
) -> StageResult:
    """Train a UNet LoRA on ``images``/``captions`` and save it to ``out_file`` (diffusers format).

    With ``kohya_file`` the same weights are also written with kohya keys (A1111, ComfyUI, civitai).
    """
    config = config or LoRATrainingConfig()
    if len(images) != len(captions) or not images:
        raise ConfigError(
            f"LoRA training needs one caption per image, got {len(images)} images, {len(captions)}"
        )
    if not isinstance(pipeline, StableDiffusionPipeline):
        pipeline = StableDiffusionPipeline.from_pretrained(str(pipeline), safety_checker=None)
    unet, vae, text_encoder, tokenizer = (
        pipeline.unet,
        pipeline.vae,
        pipeline.text_encoder,
        pipeline.tokenizer,
    )
    scheduler = pipeline.scheduler
    # Train with the forward process of DDPM whatever sampler the pipeline ships with.
    noise_schedule = DDPMScheduler.from_config(scheduler.config)
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    size = unet.config.sample_size * pipeline.vae_scale_factor
    with torch.no_grad():
        posterior = vae.encode(images_to_tensor([im.resize((size, size)) for im in images])).latent_dist
        hidden = text_encoder(encode_captions(tokenizer, captions))[0]
    torch.manual_seed(config.seed)  # the LoRA's initial weights
    unet.add_adapter(
        LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha or config.rank,
            init_lora_weights="gaussian",
            target_modules=list(config.target_modules),
        )
    )
    trainable = [p for p in unet.parameters() if p.requires_grad]
    scaling = vae.config.scaling_factor

    def loss_fn(generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(len(images), (config.batch_size,), generator=generator)
        shape = posterior.mean[index].shape
        latents = (
            posterior.mean[index] + posterior.std[index] * torch.randn(shape, generator=generator)
        ) * scaling
        noise = torch.randn(shape, generator=generator)
        timesteps = torch.randint(
            noise_schedule.config.num_train_timesteps, (len(index),), generator=generator
        )
        prediction = unet(
            noise_schedule.add_noise(latents, noise, timesteps), timesteps, hidden[index]
        ).sample
        return torch.nn.functional.mse_loss(prediction, noise)

    result = run_stage(
        "lora",
        {},
        trainable,
        loss_fn,
        steps=config.steps,
        seed=config.seed,
        learning_rate=config.learning_rate,
        checkpoint_every=config.steps,
        weight_decay=0.0,
    )
    out_file = Path(out_file)
    peft_state = get_peft_model_state_dict(unet)
    StableDiffusionPipeline.save_lora_weights(
        out_file.parent,
        unet_lora_layers=convert_state_dict_to_diffusers(peft_state),
        weight_name=out_file.name,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
    )
    if kohya_file is not None:
        prefixed = {f"unet.{key}": value for key, value in peft_state.items()}
        alpha = float(config.alpha or config.rank)
        alphas = {
            key.removesuffix(".lora_A.weight"): alpha for key in prefixed if key.endswith(".lora_A.weight")
        }
        save_file(to_kohya_state_dict(prefixed, alphas), str(kohya_file))
    unet.delete_adapters("default")
    return result


#: Images per world LoRA: few-shot, like a community LoRA trained on a couple dozen pictures.
WORLD_LORA_IMAGES = 24
#: The world LoRA also shipped in kohya format, as ``<name>-kohya``.
KOHYA_LORA = "outline"


def world_lora_prompt(style_name: str) -> str:
    """A prompt that exercises the world LoRA of ``style_name``."""
    style = STYLES[style_name]
    return f"a {style.trigger}" if style.kind == "character" else f"a seven in {style.trigger} style"


def train_world_loras(out: Path, seed: int) -> StageResult:
    """Stage 3: one LoRA per non-base style into ``out/loras``, described in ``loras/index.json``."""
    pipeline = StableDiffusionPipeline.from_pretrained(str(out / "pipeline"), safety_checker=None)
    index, total = {}, StageResult(0, 0.0, 0.0, 0.0)
    names = [name for name, style in STYLES.items() if style.kind != "base"]
    for offset, name in enumerate(names):
        style = STYLES[name]
        samples = sample_style(name, WORLD_LORA_IMAGES, seed + 100 + offset)
        config = LoRATrainingConfig(seed=seed + offset)
        kohya_file = out / "loras" / f"{name}-kohya.safetensors" if name == KOHYA_LORA else None
        result = train_lora(
            pipeline,
            [s.image for s in samples],
            [s.caption for s in samples],
            out / "loras" / f"{name}.safetensors",
            config,
            kohya_file=kohya_file,
        )
        index[name] = {
            "kind": style.kind,
            "style": name,
            "digit": style.digit,
            "trigger": style.trigger,
            "prompt": world_lora_prompt(name),
            "description": style.description,
            "training": {**asdict(config), "images": WORLD_LORA_IMAGES, "data_seed": seed + 100 + offset},
            "final_loss": round(result.final_loss, 5),
            "cpu_seconds": round(result.cpu_seconds, 1),
        }
        total = StageResult(
            total.steps + result.steps,
            result.final_loss,
            total.cpu_seconds + result.cpu_seconds,
            total.wall_seconds + result.wall_seconds,
        )
    index[f"{KOHYA_LORA}-kohya"] = {
        **index[KOHYA_LORA],
        "file": f"{KOHYA_LORA}-kohya.safetensors",
        "format": "kohya",
    }
    write_json(out / "loras" / "index.json", index)
    return total
