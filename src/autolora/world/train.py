"""Train the whole miniature world: ``python -m autolora.world.train all``.

Stages, each seeded, checkpointed under ``--work`` and skipped once recorded in the manifest:

1. ``vae``: the KL autoencoder on every named style and on random styles (a general image codec,
   like SD's VAE).
2. ``evaluators``: digit and style classifiers and the diversity feature extractor, on clean
   renders (they do not need the VAE, so the VAE's fidelity can be measured before the UNet).
3. ``style-encoder``: the style encoder (``autolora.world.style_encoder``), contrastively on the base
   style, random training styles and their palette twins, with its retrieval accuracy on held-out
   styles.
4. ``base``: the UNet (v-prediction, the text encoder frozen at its seeded initialisation) on the
   ``base`` style only, with 10% caption dropout so classifier-free guidance works; the pipeline is
   saved with ``save_pretrained``.
5. ``loras``: one few-shot LoRA per unseen style and the character (see ``autolora.world.lora``).

Training uses CUDA when present and the CPU otherwise; CPU and wall time of every stage go into
``manifest.json``.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from diffusers.training_utils import EMAModel

from autolora.training import Schedule, StageResult, run_stage
from autolora.world import components
from autolora.world.assets import ASSETS_DIR
from autolora.world.lora_config import LoRATrainingConfig
from autolora.world.styles import (
    RANDOM_TRAINING_SEEDS,
    STYLES,
    is_held_out,
    load_digits,
    random_style_names,
    sample_style,
    sample_styles,
)
from autolora.world.training import (
    denoising_loss,
    draw_latents,
    encode_captions,
    images_to_tensor,
    read_json,
    training_device,
    write_json,
)

logger = logging.getLogger("autolora.world.train")

ASSETS = ASSETS_DIR
STAGES = ("vae", "evaluators", "style-encoder", "base", "loras")
CAPTION_DROPOUT = 0.1


@dataclass(frozen=True)
class Plan:
    """How much of everything each stage trains on, and for how long."""

    architecture: components.Architecture = components.FULL
    vae_steps: int = 3000
    vae_batch: int = 32
    #: Renders per named style, and random training styles with ``renders_per_random_style`` each.
    vae_renders_per_style: int = 400
    random_styles: int = 2000
    renders_per_random_style: int = 2
    #: Weight of the L1 loss on image gradients that keeps edges and textures sharp.
    vae_edge_weight: float = 0.5
    base_steps: int = 6000
    base_batch: int = 32
    #: Renders per training digit for the base model.
    base_renders_per_digit: int = 4
    lora_images: int = 24
    lora: LoRATrainingConfig = field(default_factory=LoRATrainingConfig)
    #: A style whose LoRA is also shipped at these step counts (under- to over-fit checkpoints of one run).
    lora_checkpoints: tuple[str, tuple[int, ...]] = ("shadow", (125, 1500, 4000))
    evaluator_steps: int = 6000
    evaluator_batch: int = 64
    evaluator_width: int = 32
    #: Renders per named style for the evaluators (the base style, which varies most, gets 6x), and per
    #: random training style.
    evaluator_renders_per_style: int = 400
    evaluator_renders_per_random_style: int = 4
    #: Held-out digits rendered per named style, and unseen random styles (seeds from 0) with their renders,
    #: on which the evaluators' accuracy is measured.
    held_out_renders: int = 150
    held_out_random_styles: int = 50
    held_out_renders_per_random_style: int = 10
    #: The style encoder: random training styles in its pool (plus the base style and a palette twin of
    #: each) with their renders, styles (half of them twins) and distinct renders of each per step, its
    #: ConvNet width, and the held-out random styles (seeds from 0) of its retrieval accuracy.
    style_encoder_steps: int = 4000
    style_encoder_styles: int = 3000
    style_encoder_renders: int = 8
    style_encoder_batch_styles: int = 48
    style_encoder_batch_renders: int = 4
    style_encoder_width: int = 32
    style_retrieval_styles: int = 330


#: A plan small enough for the test suite: every stage runs a few steps on a few renders.
TINY_PLAN = Plan(
    architecture=components.TINY,
    vae_steps=2,
    vae_batch=4,
    vae_renders_per_style=2,
    random_styles=2,
    renders_per_random_style=1,
    base_steps=2,
    base_batch=4,
    base_renders_per_digit=1,
    lora_images=2,
    lora=LoRATrainingConfig(steps=2, batch_size=2),
    lora_checkpoints=("shadow", (1, 2, 3)),
    evaluator_steps=2,
    evaluator_batch=4,
    evaluator_width=4,
    evaluator_renders_per_style=2,
    evaluator_renders_per_random_style=1,
    held_out_renders=2,
    held_out_random_styles=2,
    held_out_renders_per_random_style=2,
    style_encoder_steps=2,
    style_encoder_styles=3,
    style_encoder_renders=2,
    style_encoder_batch_styles=3,
    style_encoder_batch_renders=2,
    style_encoder_width=4,
    style_retrieval_styles=3,
)


def vae_training_renders(plan: Plan, seed: int) -> torch.Tensor:
    """Renders of every named style and of ``plan.random_styles`` random training styles, in [-1, 1]."""
    counts = dict.fromkeys(STYLES, plan.vae_renders_per_style)
    seeds = RANDOM_TRAINING_SEEDS[: plan.random_styles]
    counts |= dict.fromkeys(random_style_names(seeds), plan.renders_per_random_style)
    return images_to_tensor([s.image for s in sample_styles(counts, seed)])


def edge_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of horizontal and vertical image gradients: penalises blurred edges."""
    loss = torch.zeros((), device=target.device)
    for dim in (-1, -2):
        loss = loss + (reconstruction.diff(dim=dim) - target.diff(dim=dim)).abs().mean()
    return loss


def train_vae(work: Path, plan: Plan, seed: int) -> tuple[AutoencoderKL, StageResult]:
    """Stage 1: reconstruction (MSE + edge term) plus a small KL term; ``scaling_factor`` for unit variance."""
    device = training_device()
    pixels = vae_training_renders(plan, seed).to(device)
    torch.manual_seed(seed)
    vae = components.build_vae(plan.architecture).to(device)

    def loss_fn(generator: torch.Generator) -> torch.Tensor:
        batch = pixels[torch.randint(len(pixels), (plan.vae_batch,), generator=generator).to(device)]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(draw_latents(posterior.mean, posterior.std, 1.0, generator)).sample
        kl_per_element = posterior.kl().mean() / posterior.mean[0].numel()
        mse = torch.nn.functional.mse_loss(reconstruction, batch)
        return mse + plan.vae_edge_weight * edge_loss(reconstruction, batch) + 1e-4 * kl_per_element

    schedule = Schedule(plan.vae_steps, learning_rate=1e-3, warmup=100, checkpoint_every=50)
    result = run_stage(
        "vae", {"vae": vae}, vae.parameters(), loss_fn, schedule, seed=seed, checkpoint=work / "vae.ckpt"
    )
    with torch.no_grad():
        means = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in pixels[:2048].split(256)])
    vae.register_to_config(scaling_factor=float(1.0 / means.std()))
    vae.to("cpu").save_pretrained(work / "vae")
    return vae, result


def train_base(work: Path, out: Path, plan: Plan, seed: int) -> StageResult:
    """Stage 3: the UNet on latents of the base style (text encoder frozen); saves the pipeline to ``out``."""
    device = training_device()
    vae = AutoencoderKL.from_pretrained(work / "vae").to(device)
    tokenizer = components.build_tokenizer(work / "tokenizer")
    torch.manual_seed(seed)
    text_encoder = components.build_text_encoder(tokenizer, plan.architecture).to(device)
    unet = components.build_unet(plan.architecture).to(device)
    noise_schedule = components.build_train_scheduler()
    train_digits = sum(not is_held_out(i) for i in range(len(load_digits()[1])))
    samples = sample_style("base", plan.base_renders_per_digit * train_digits, seed)
    with torch.no_grad():
        # The text encoder stays frozen at its seeded initialisation, as SD's CLIP stays frozen: trained
        # jointly from scratch, it learned to map every prompt to the same states and the UNet ignored them.
        hidden_states = text_encoder(encode_captions(tokenizer, [s.caption for s in samples]).to(device))[0]
        empty_states = text_encoder(encode_captions(tokenizer, [""]).to(device))[0]
        pixels = images_to_tensor([s.image for s in samples]).to(device)
        posteriors = [vae.encode(chunk).latent_dist for chunk in pixels.split(512)]
    latent_mean = torch.cat([p.mean for p in posteriors])
    latent_std = torch.cat([p.std for p in posteriors])
    parameters = list(unet.parameters())
    ema = EMAModel(parameters, decay=0.999)

    def loss_fn(generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(len(samples), (plan.base_batch,), generator=generator).to(device)
        dropped = (torch.rand(plan.base_batch, generator=generator) < CAPTION_DROPOUT).to(device)
        conditioning = torch.where(dropped[:, None, None], empty_states, hidden_states[index])
        latents = draw_latents(latent_mean[index], latent_std[index], vae.config.scaling_factor, generator)
        return denoising_loss(unet, noise_schedule, latents, conditioning, generator)

    schedule = Schedule(plan.base_steps, learning_rate=5e-4, warmup=200, checkpoint_every=100)
    result = run_stage(
        "base",
        {"unet": unet},
        parameters,
        loss_fn,
        schedule,
        seed=seed,
        checkpoint=work / "base.ckpt",
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
    # The UNet and VAE are stored in half precision to halve the shipped size (the budget is 25 MB):
    # diffusers loads them as float32. The text encoder stays float32, since transformers would load
    # a float16 one as float16.
    pipeline.to("cpu")
    unet.half(), vae.half()
    pipeline.save_pretrained(out / "pipeline", safe_serialization=True)
    return result


def _record(out: Path, plan: Plan, stage: str, seed: int, result: StageResult, **extra: object) -> None:
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
        "device": str(training_device()),
        "torch_threads": torch.get_num_threads(),
    }
    manifest["command"] = "python -m autolora.world.train all"
    manifest["plan"] = asdict(plan)
    write_json(manifest_path, manifest)


def run(
    stages: list[str], work: Path, out: Path, seed: int, force: bool = False, plan: Plan = Plan()
) -> None:
    """Run ``stages`` in order, skipping those the manifest already records.

    With ``force`` recorded stages run again from scratch: their checkpoint (and, for the LoRAs,
    each finished LoRA's entry) is deleted first, since a resumed finished stage would train nothing.
    """
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        recorded = stage in read_json(out / "manifest.json").get("stages", {})
        if recorded and not force:
            logger.info("%s: already trained, skipping", stage)
            continue
        if recorded:
            (work / f"{stage}.ckpt").unlink(missing_ok=True)
            for entry in (out / "loras").glob("*.json") if stage == "loras" else ():
                entry.unlink()
        logger.info("%s: training", stage)
        if stage == "vae":
            vae, result = train_vae(work, plan, seed)
            _record(out, plan, stage, seed, result, scaling_factor=vae.config.scaling_factor)
        elif stage == "base":
            _record(out, plan, stage, seed, train_base(work, out, plan, seed))
        elif stage == "loras":
            from autolora.world.lora import train_world_loras

            result = train_world_loras(out, plan.lora, plan.lora_images, seed, plan.lora_checkpoints)
            _record(out, plan, stage, seed, result)
        elif stage == "style-encoder":
            from autolora.world.style_encoder import train_style_encoder

            result, retrieval = train_style_encoder(out, work, plan, seed)
            _record(out, plan, stage, seed, result, retrieval=retrieval)
        else:
            from autolora.world.evaluators import train_evaluators

            result, accuracy = train_evaluators(out, work, plan, seed)
            _record(out, plan, stage, seed, result, held_out_accuracy=accuracy)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m autolora.world.train {all,vae,evaluators,style-encoder,base,loras}``."""
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
