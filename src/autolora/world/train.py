"""Train the whole miniature world: ``python -m autolora.world.train all``.

Stages, each seeded, checkpointed under ``--work`` and skipped once recorded in the manifest:

1. ``vae``: the KL autoencoder on every style (a general image codec, like SD's VAE).
2. ``base``: text encoder and UNet together on the ``base`` style only, with 10% caption
   dropout so classifier-free guidance works; the pipeline is saved with ``save_pretrained``.
3. ``loras``: one few-shot LoRA per unseen style and the character (see ``autolora.world.lora``).
4. ``evaluators``: digit and style classifiers and the diversity feature extractor.

CPU and wall time of every stage go into ``assets/manifest.json``.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from diffusers.training_utils import EMAModel

from autolora.world import components
from autolora.world.assets import ASSETS_DIR
from autolora.world.styles import STYLES, Sample, is_held_out, load_digits, sample_style
from autolora.world.training import (
    StageResult,
    encode_captions,
    images_to_tensor,
    read_json,
    run_stage,
    write_json,
)

logger = logging.getLogger("autolora.world.train")

ASSETS = ASSETS_DIR
STAGES = ("vae", "base", "loras", "evaluators")
VAE_STEPS = 500
BASE_STEPS = 6000
VAE_BATCH = 32
BASE_BATCH = 32
CAPTION_DROPOUT = 0.1
#: Renders per training digit for the base model, and per style for the VAE.
BASE_RENDERS_PER_DIGIT = 4
VAE_RENDERS_PER_STYLE = 400


def train_vae(work: Path, seed: int, steps: int) -> tuple[AutoencoderKL, StageResult]:
    """Stage 1: reconstruction plus a small KL term; sets ``scaling_factor`` to unit latent variance."""
    samples = [
        s for i, name in enumerate(STYLES) for s in sample_style(name, VAE_RENDERS_PER_STYLE, seed + i)
    ]
    pixels = images_to_tensor([s.image for s in samples])
    torch.manual_seed(seed)
    vae = components.build_vae()

    def loss_fn(generator: torch.Generator) -> torch.Tensor:
        batch = pixels[torch.randint(len(pixels), (VAE_BATCH,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(latents).sample
        kl_per_element = posterior.kl().mean() / posterior.mean[0].numel()
        return torch.nn.functional.mse_loss(reconstruction, batch) + 1e-4 * kl_per_element

    result = run_stage(
        "vae",
        {"vae": vae},
        vae.parameters(),
        loss_fn,
        steps=steps,
        seed=seed,
        learning_rate=1e-3,
        checkpoint=work / "vae.ckpt",
        checkpoint_every=50,
    )
    with torch.no_grad():
        means = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in pixels[:2048].split(256)])
    vae.register_to_config(scaling_factor=float(1.0 / means.std()))
    vae.save_pretrained(work / "vae")
    return vae, result


def train_base(work: Path, out: Path, seed: int, steps: int) -> StageResult:
    """Stage 2: text encoder and UNet on latents of the base style; saves the pipeline to ``out``."""
    vae = AutoencoderKL.from_pretrained(work / "vae")
    tokenizer = components.build_tokenizer(work / "tokenizer")
    torch.manual_seed(seed)
    text_encoder = components.build_text_encoder(tokenizer)
    unet = components.build_unet()
    scheduler = components.build_train_scheduler()
    train_digits = sum(not is_held_out(i) for i in range(len(load_digits()[1])))
    samples: list[Sample] = sample_style("base", BASE_RENDERS_PER_DIGIT * train_digits, seed)
    token_ids = encode_captions(tokenizer, [s.caption for s in samples])
    empty_ids = encode_captions(tokenizer, [""])
    with torch.no_grad():
        posteriors = [
            vae.encode(chunk).latent_dist for chunk in images_to_tensor([s.image for s in samples]).split(512)
        ]
    latent_mean = torch.cat([p.mean for p in posteriors])
    latent_std = torch.cat([p.std for p in posteriors])
    scaling = vae.config.scaling_factor
    parameters = [*unet.parameters(), *text_encoder.parameters()]
    ema = EMAModel(parameters, decay=0.999)

    # Standard epsilon-prediction objective (DDPM), conditioned on CLIP hidden states as in SD.
    def loss_fn(generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(len(samples), (BASE_BATCH,), generator=generator)
        noise_shape = latent_mean[index].shape
        latents = (
            latent_mean[index] + latent_std[index] * torch.randn(noise_shape, generator=generator)
        ) * scaling
        dropped = torch.rand(BASE_BATCH, generator=generator) < CAPTION_DROPOUT
        tokens = torch.where(dropped[:, None], empty_ids, token_ids[index])
        noise = torch.randn(noise_shape, generator=generator)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (BASE_BATCH,), generator=generator)
        prediction = unet(
            scheduler.add_noise(latents, noise, timesteps), timesteps, text_encoder(tokens)[0]
        ).sample
        return torch.nn.functional.mse_loss(prediction, noise)

    result = run_stage(
        "base",
        {"unet": unet, "text_encoder": text_encoder},
        parameters,
        loss_fn,
        steps=steps,
        seed=seed,
        learning_rate=5e-4,
        checkpoint=work / "base.ckpt",
        checkpoint_every=100,
        ema=ema,
    )
    ema.copy_to(parameters)
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=components.build_sample_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(out / "pipeline", safe_serialization=True)
    return result


def _record(out: Path, stage: str, seed: int, result: StageResult, **extra: object) -> None:
    manifest_path = out / "manifest.json"
    manifest = read_json(manifest_path)
    manifest.setdefault("stages", {})[stage] = {
        "seed": seed,
        "steps": result.steps,
        "final_loss": round(result.final_loss, 5),
        "cpu_seconds": round(result.cpu_seconds, 1),
        "wall_seconds": round(result.wall_seconds, 1),
        **extra,
    }
    manifest["environment"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }
    manifest["command"] = "python -m autolora.world.train all"
    write_json(manifest_path, manifest)


def run(stages: list[str], work: Path, out: Path, seed: int, force: bool = False) -> None:
    """Run ``stages`` in order, skipping those the manifest already records (unless ``force``)."""
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        if not force and stage in read_json(out / "manifest.json").get("stages", {}):
            logger.info("%s: already trained, skipping", stage)
            continue
        logger.info("%s: training", stage)
        if stage == "vae":
            vae, result = train_vae(work, seed, VAE_STEPS)
            _record(out, stage, seed, result, scaling_factor=vae.config.scaling_factor)
        elif stage == "base":
            _record(out, stage, seed, train_base(work, out, seed, BASE_STEPS))
        elif stage == "loras":
            from autolora.world.lora import train_world_loras

            _record(out, stage, seed, train_world_loras(out, seed))
        else:
            from autolora.world.evaluators import train_evaluators

            result, accuracy = train_evaluators(out, seed, work)
            _record(out, stage, seed, result, held_out_accuracy=accuracy)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m autolora.world.train {all,vae,base,loras,evaluators}``."""
    parser = argparse.ArgumentParser(
        prog="python -m autolora.world.train", description=__doc__.splitlines()[0]
    )
    parser.add_argument("stage", choices=("all", *STAGES))
    parser.add_argument(
        "--work", type=Path, default=Path("world-train"), help="checkpoints and intermediates"
    )
    parser.add_argument("--out", type=Path, default=ASSETS, help="where the shipped weights go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="retrain stages the manifest already records")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    stages = list(STAGES) if args.stage == "all" else [args.stage]
    run(stages, args.work, args.out, args.seed, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
