"""Few-shot LoRA training for Stable Diffusion pipelines, and the miniature world's LoRA bank.

``train_lora`` takes any diffusers pipeline folder, a handful of images and their captions, adds a
peft ``LoraConfig`` to the UNet's attention projections and trains only those weights with the
model's own denoising loss (epsilon or velocity, as its scheduler says). The result is saved with
diffusers' own helpers, so ``pipe.load_lora_weights(file)`` reads it back. ``read_image_folder`` accepts the two common
dataset layouts: Hugging Face ``imagefolder`` (``metadata.jsonl`` with ``file_name`` and
``text``) and kohya (a ``.txt`` caption beside each image).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image
from safetensors.torch import save_file

from autolora.errors import ConfigError, InputFileError
from autolora.images import IMAGE_SUFFIXES
from autolora.lora import to_kohya_state_dict
from autolora.training import Schedule, StageResult, run_stage
from autolora.workers import claim
from autolora.world import training
from autolora.world.lora_config import LoRATrainingConfig
from autolora.world.styles import STYLES, Sample, get_style, sample_style


def _read_metadata(metadata: Path) -> list[tuple[str, str]]:
    """``(file_name, text)`` of each line of an imagefolder ``metadata.jsonl``; a bad line is named."""
    rows = []
    for number, line in enumerate(metadata.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append((str(row["file_name"]), str(row["text"])))
        except json.JSONDecodeError as error:
            raise InputFileError(f"{metadata}, line {number}: not JSON ({error.msg})") from None
        except (KeyError, TypeError):
            raise InputFileError(
                f"{metadata}, line {number}: needs an object with 'file_name' and 'text'"
            ) from None
    return rows


def read_image_folder(folder: str | Path) -> tuple[list[Image.Image], list[str]]:
    """Images and captions from ``metadata.jsonl`` (imagefolder) or ``.txt`` sidecars (kohya)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(f"image folder {folder} does not exist")
    metadata = folder / "metadata.jsonl"
    if metadata.exists():
        pairs = [(folder / name, text) for name, text in _read_metadata(metadata)]
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


def check_base_pipeline(folder: str | Path) -> Path:
    """``folder`` if it holds a diffusers pipeline (``model_index.json``), else ``InputFileError``."""
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise InputFileError(
            f"base pipeline {folder}: no such diffusers pipeline folder (model_index.json missing)"
        )
    return folder


@dataclass
class EncodedImages:
    """Training images as VAE posteriors and their captions as text-encoder hidden states."""

    latent_mean: torch.Tensor
    latent_std: torch.Tensor
    hidden_states: torch.Tensor
    scaling: float

    def batch(
        self, size: int, noise_schedule: DDPMScheduler, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``size`` images drawn with ``generator``, noised (``training.noised``): the noisy latents, their
        timesteps, the captions' hidden states and the denoiser's target."""
        index = torch.randint(len(self.latent_mean), (size,), generator=generator)
        latents = training.draw_latents(
            self.latent_mean[index], self.latent_std[index], self.scaling, generator
        )
        noisy, timesteps, target = training.noised(noise_schedule, latents, generator)
        return noisy, timesteps, self.hidden_states[index], target


@torch.no_grad()
def encode_images(
    pipeline: StableDiffusionPipeline, images: list[Image.Image], captions: list[str]
) -> EncodedImages:
    """Encode ``images`` (resized to the pipeline's resolution) and ``captions`` once, before training."""
    size = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
    pixels = training.images_to_tensor([image.resize((size, size)) for image in images])
    posterior = pipeline.vae.encode(pixels).latent_dist
    hidden = pipeline.text_encoder(training.encode_captions(pipeline.tokenizer, captions))[0]
    return EncodedImages(posterior.mean, posterior.std, hidden, pipeline.vae.config.scaling_factor)


def add_lora(unet: UNet2DConditionModel, config: LoRATrainingConfig) -> list[torch.nn.Parameter]:
    """Freeze ``unet``, add a seeded peft LoRA adapter ``default`` to it; returns the LoRA's parameters."""
    unet.requires_grad_(False)
    torch.manual_seed(config.seed)  # the LoRA's initial weights
    unet.add_adapter(
        LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha or config.rank,
            init_lora_weights="gaussian",
            target_modules=list(config.target_modules),
        )
    )
    return [p for p in unet.parameters() if p.requires_grad]


def save_lora(
    unet: UNet2DConditionModel, out_file: Path, config: LoRATrainingConfig, kohya_file: Path | None = None
) -> None:
    """Write the UNet's ``default`` adapter in diffusers format and, with ``kohya_file``, with kohya keys."""
    metadata = unet.peft_config["default"].to_dict()
    write_lora(get_peft_model_state_dict(unet), metadata, out_file, config, kohya_file)


def write_lora(
    peft_state: dict[str, torch.Tensor],
    metadata: dict,
    out_file: Path,
    config: LoRATrainingConfig,
    kohya_file: Path | None = None,
) -> None:
    """Write a UNet LoRA given by its peft state dict (``<module>.lora_A.weight`` / ``lora_B``) and its
    ``LoraConfig`` as a dict, in diffusers format and, with ``kohya_file``, with kohya keys."""
    StableDiffusionPipeline.save_lora_weights(
        out_file.parent,
        unet_lora_layers=convert_state_dict_to_diffusers(peft_state),
        weight_name=out_file.name,
        unet_lora_adapter_metadata=metadata,
    )
    if kohya_file is not None:
        prefixed = {f"unet.{key}": value for key, value in peft_state.items()}
        alpha = float(config.alpha or config.rank)
        alphas = {
            key.removesuffix(".lora_A.weight"): alpha for key in prefixed if key.endswith(".lora_A.weight")
        }
        save_file(to_kohya_state_dict(prefixed, alphas), str(kohya_file))


def check_captions(images: list[Image.Image], captions: list[str]) -> None:
    """Refuse training data without images or without one caption per image."""
    if len(images) != len(captions) or not images:
        raise ConfigError(
            f"LoRA training needs one caption per image, got {len(images)} images, {len(captions)}"
        )


def train_lora(
    pipeline: str | Path | StableDiffusionPipeline,
    images: list[Image.Image],
    captions: list[str],
    out_file: str | Path,
    config: LoRATrainingConfig | None = None,
    kohya_file: str | Path | None = None,
    checkpoints: Mapping[int, str | Path] | None = None,
) -> StageResult:
    """Train a UNet LoRA on ``images``/``captions`` and save it to ``out_file`` (diffusers format).

    The loss is the base model's (``autolora.world.training.denoising_loss``), on the forward process
    of DDPM whatever sampler the pipeline ships with. With ``kohya_file`` the same weights are also
    written with kohya keys (A1111, ComfyUI, civitai). ``checkpoints`` maps step counts below
    ``config.steps`` to files where the LoRA is also written after that many steps; the learning rate
    is constant, so the checkpoint at ``N`` steps is the LoRA that a run of ``N`` steps gives. The run's
    state is kept in ``<out_file>.ckpt`` until it ends, so an interrupted run resumes.
    """
    config = config or LoRATrainingConfig()
    checkpoints = {steps: Path(file) for steps, file in (checkpoints or {}).items()}
    check_captions(images, captions)
    if not all(0 < steps < config.steps for steps in checkpoints):
        raise ConfigError(
            f"checkpoint step counts must lie in 1 .. {config.steps - 1}, got {sorted(checkpoints)}"
        )
    if not isinstance(pipeline, StableDiffusionPipeline):
        pipeline = StableDiffusionPipeline.from_pretrained(
            str(check_base_pipeline(pipeline)), safety_checker=None
        )
    pipeline.vae.requires_grad_(False)
    pipeline.text_encoder.requires_grad_(False)
    encoded = encode_images(pipeline, images, captions)
    unet = pipeline.unet
    noise_schedule = DDPMScheduler.from_config(pipeline.scheduler.config)
    trainable = add_lora(unet, config)

    def loss_fn(generator: torch.Generator) -> torch.Tensor:
        noisy, timesteps, hidden_states, target = encoded.batch(config.batch_size, noise_schedule, generator)
        return torch.nn.functional.mse_loss(unet(noisy, timesteps, hidden_states).sample, target)

    out_file, kohya_file = Path(out_file), Path(kohya_file) if kohya_file is not None else None
    state_file = out_file.with_name(out_file.name + ".ckpt")
    done = torch.load(state_file, weights_only=False)["step"] if state_file.exists() else 0
    # The run is cut at every checkpoint: each piece resumes the previous one's state (weights,
    # optimiser, generator), so together they are one run. Pieces a resumed run has passed were written.
    for steps in sorted(steps for steps in {*checkpoints, config.steps} if steps >= done):
        schedule = Schedule(steps, config.learning_rate, checkpoint_every=steps, weight_decay=0.0)
        modules = {"lora": torch.nn.ParameterList(trainable)}
        result = run_stage(
            "lora", modules, trainable, loss_fn, schedule, seed=config.seed, checkpoint=state_file
        )
        save_lora(
            unet, checkpoints.get(steps, out_file), config, None if steps in checkpoints else kohya_file
        )
    state_file.unlink()
    unet.delete_adapters("default")
    return result


def style_renders(name: str, count: int, seed: int, *, split: str = "train") -> list[Sample]:
    """``count`` renders of world style ``name`` from a seed of its own: ``seed`` plus a hash of the name,
    so a style's renders do not depend on which other styles are drawn beside it."""
    return sample_style(name, count, seed + zlib.crc32(name.encode()), split=split)


def bank_references(count: int, seed: int = 0) -> Callable[[Path], list[Image.Image]]:
    """``build_bank(references=...)`` for world LoRAs, which keep no images on disk: ``count`` renders of
    the style each LoRA file is named after (``random-12.safetensors``: style ``random-12``)."""

    def references(source: Path) -> list[Image.Image]:
        try:
            return [sample.image for sample in style_renders(source.stem, count, seed)]
        except ConfigError as error:
            raise ConfigError(f"LoRA {source.name} is not named after a world style: {error}") from None

    return references


#: The world LoRA also shipped in kohya format, as ``<name>-kohya``.
KOHYA_LORA = "outline"


def world_lora_prompt(style_name: str) -> str:
    """A prompt that exercises the world LoRA of ``style_name``."""
    style = get_style(style_name)
    return f"a {style.trigger}" if style.kind == "character" else f"a seven in {style.trigger} style"


def _train_bank_group(
    pipeline: StableDiffusionPipeline,
    group: list[tuple[int, str]],
    out_dir: Path,
    config: LoRATrainingConfig,
    images: int,
    seed: int,
    init_seed: int | None,
) -> None:
    """Train the LoRAs of ``group`` (each style's place in the bank's list and name) side by side into
    ``out_dir`` and write each one's entry, ``<name>.json``; see ``train_lora_bank`` for the seeds."""
    from autolora.world.lora_batch import train_lora_batch  # it builds on this module

    configs = [replace(config, seed=seed + offset if init_seed is None else init_seed) for offset, _ in group]
    data_seeds = [seed + 100 + offset for offset, _ in group]
    renders = [
        sample_style(name, images, data_seed) for (_, name), data_seed in zip(group, data_seeds, strict=True)
    ]
    files = [out_dir / f"{name}.safetensors" for _, name in group]
    kohya = [out_dir / f"{name}-kohya.safetensors" if name == KOHYA_LORA else None for _, name in group]
    datasets = [([s.image for s in samples], [s.caption for s in samples]) for samples in renders]
    if len(group) == 1:
        result = train_lora(pipeline, *datasets[0], files[0], configs[0], kohya_file=kohya[0])
    else:
        # Named after its members, so a resumed group continues only its own state.
        members = zlib.crc32(",".join(name for _, name in group).encode())
        state_file = out_dir / f"group-{members:08x}.ckpt"
        result = train_lora_batch(
            pipeline, datasets, files, configs, state_file=state_file, kohya_files=kohya
        )
    for (_, name), lora_config, data_seed in zip(group, configs, data_seeds, strict=True):
        style = get_style(name)
        entry = {
            "kind": style.kind,
            "style": name,
            "digit": style.digit,
            "trigger": style.trigger,
            "prompt": world_lora_prompt(name),
            "description": style.description,
            "training": {**asdict(lora_config), "images": images, "data_seed": data_seed},
            # A group's loss and time are shared out evenly among its LoRAs.
            "final_loss": round(result.final_loss / len(group), 5),
            "cpu_seconds": round(result.cpu_seconds / len(group), 1),
            "wall_seconds": round(result.wall_seconds / len(group), 1),
            "trained_together": len(group),
        }
        training.write_json(out_dir / f"{name}.json", entry)


def _claim_group(style_names: list[str], out_dir: Path, size: int) -> list[tuple[int, str]]:
    """The unfinished styles of the first group of ``size`` consecutive styles of the list that has
    some and that no other live worker holds, each claimed for this worker (``<name>.lock``), with
    their places in the list. Fixed groups: a bank trains the same LoRAs however many workers share it."""
    for start in range(0, len(style_names), size):
        members = enumerate(style_names[start : start + size], start)
        group = [(offset, name) for offset, name in members if not (out_dir / f"{name}.json").exists()]
        claimed = [name for _, name in group if claim(out_dir / f"{name}.lock")]
        if group and len(claimed) == len(group):
            return group
        for name in claimed:
            (out_dir / f"{name}.lock").unlink()
    return []


def train_lora_bank(
    pipeline: StableDiffusionPipeline,
    style_names: list[str],
    out_dir: Path,
    config: LoRATrainingConfig,
    images: int,
    seed: int,
    init_seed: int | None = None,
    together: int = 1,
) -> dict[str, dict]:
    """One LoRA per style (named or ``random-<seed>``) into ``out_dir``, described in ``index.json``.

    Style ``i`` of the list trains on ``images`` renders drawn with seed ``seed + 100 + i`` and
    initialises its LoRA with seed ``seed + i``, or with ``init_seed`` for every style: LoRAs of one
    initialisation differ only by what training put in them, so a prior can compare them factor by
    factor (``build_bank(..., canonical=False)``). Groups of ``together`` consecutive styles of the list
    train side by side in one batch (``autolora.world.lora_batch``: the same LoRAs, in less time on a
    CPU); the groups are fixed, so the bank does not depend on how many workers train it. Each finished LoRA leaves
    ``<name>.json`` beside its file, so a rerun skips it (resumable); a style being trained is claimed
    by ``<name>.lock``, so several processes can train one bank in parallel. Returns the index of every
    finished LoRA.
    """
    if together < 1:
        raise ConfigError(f"LoRAs trained together must be at least 1, got {together}")
    out_dir.mkdir(parents=True, exist_ok=True)
    while group := _claim_group(style_names, out_dir, together):
        _train_bank_group(pipeline, group, out_dir, config, images, seed, init_seed)
        for _, name in group:
            (out_dir / f"{name}.lock").unlink()
    index = {}
    for name in style_names:
        if (out_dir / f"{name}.json").exists():
            index[name] = training.read_json(out_dir / f"{name}.json")
            if name == KOHYA_LORA:
                index[f"{name}-kohya"] = {
                    **index[name],
                    "file": f"{name}-kohya.safetensors",
                    "format": "kohya",
                }
    training.write_json(out_dir / "index.json", index)
    return index


def train_checkpoints(
    pipeline: StableDiffusionPipeline, entry: dict, out_dir: Path, steps: tuple[int, ...]
) -> dict[str, dict]:
    """Checkpoints at ``steps`` of one run that continues the bank LoRA ``entry`` describes.

    The run repeats the LoRA's training (same renders, seed and constant learning rate) for
    ``max(steps)`` steps, so the bank LoRA itself is its checkpoint at ``entry``'s step count. Each
    checkpoint is ``<name>-<N>steps.safetensors``; returns their index entries, recorded in
    ``<name>-checkpoints.json`` so a rerun skips a finished run.
    """
    name, recorded = entry["style"], out_dir / f"{entry['style']}-checkpoints.json"
    if recorded.exists():
        return training.read_json(recorded)
    train = entry["training"]
    files = {n: out_dir / f"{name}-{n}steps.safetensors" for n in steps}
    known = {field.name for field in fields(LoRATrainingConfig)}
    config = LoRATrainingConfig(
        **{key: value for key, value in train.items() if key in known}
        | {"steps": max(steps), "target_modules": tuple(train["target_modules"])}
    )
    samples = sample_style(name, train["images"], train["data_seed"])
    result = train_lora(
        pipeline,
        [s.image for s in samples],
        [s.caption for s in samples],
        files[max(steps)],
        config,
        checkpoints={n: files[n] for n in steps if n != max(steps)},
    )
    kept = {
        key: value for key, value in entry.items() if key not in ("final_loss", "cpu_seconds", "wall_seconds")
    }
    run = {
        "steps": result.steps,
        "cpu_seconds": round(result.cpu_seconds, 1),
        "wall_seconds": round(result.wall_seconds, 1),
    }
    checkpoints = {
        f"{name}-{n}steps": {
            **kept,
            "file": files[n].name,
            "checkpoint_of": name,
            "training": {**train, "steps": n},
            "run": run,
        }
        for n in steps
    }
    training.write_json(recorded, checkpoints)
    return checkpoints


def train_world_loras(
    out: Path, config: LoRATrainingConfig, images: int, seed: int, checkpoints: tuple[str, tuple[int, ...]]
) -> StageResult:
    """Stage 4: one LoRA per non-base named style into ``out/loras``, described in ``loras/index.json``,
    and ``checkpoints = (style, steps)``: the checkpoints of one longer run of that style's LoRA."""
    pipeline = StableDiffusionPipeline.from_pretrained(str(out / "pipeline"), safety_checker=None)
    names = [name for name, style in STYLES.items() if style.kind != "base"]
    index = train_lora_bank(pipeline, names, out / "loras", config, images, seed)
    style, steps = checkpoints
    index |= train_checkpoints(pipeline, index[style], out / "loras", steps)
    training.write_json(out / "loras" / "index.json", index)
    run = index[f"{style}-{max(steps)}steps"]["run"]
    trained = [index[name] for name in names]
    return StageResult(
        steps=sum(entry["training"]["steps"] for entry in trained),
        final_loss=trained[-1]["final_loss"],
        cpu_seconds=sum(entry["cpu_seconds"] for entry in trained) + run["cpu_seconds"],
        wall_seconds=sum(entry["wall_seconds"] for entry in trained) + run["wall_seconds"],
    )
