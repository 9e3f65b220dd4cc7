"""Training the miniature world: every stage at tiny sizes, recorded and skipped once trained."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline
from safetensors.torch import load_file

from autolora.errors import ConfigError
from autolora.metrics.features import get_extractor
from autolora.world import components, fidelity, train
from autolora.world.evaluators import load_evaluators
from autolora.world.styles import STYLES, sample_style
from autolora.world.training import denoising_loss, prediction_target


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    train.run(list(train.STAGES), root / "work", root / "out", seed=0, plan=train.TINY_PLAN)
    return root / "out"


def test_every_stage_is_recorded_with_its_plan(tiny_world):
    manifest = json.loads((tiny_world / "manifest.json").read_text())
    assert set(manifest["stages"]) == set(train.STAGES)
    assert manifest["plan"]["vae_steps"] == train.TINY_PLAN.vae_steps
    assert set(manifest["stages"]["evaluators"]["held_out_accuracy"]) == {
        "digit",
        "style",
        "digit_random_styles",
    }


def test_tiny_world_is_a_diffusers_pipeline_with_the_planned_latent(tiny_world):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_world / "pipeline", safety_checker=None)
    assert pipe.unet.config.in_channels == components.TINY.latent_channels
    assert pipe.vae.config.latent_channels == components.TINY.latent_channels
    stored = load_file(tiny_world / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    assert {w.dtype for w in stored.values()} == {torch.float16} and pipe.unet.dtype == torch.float32
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        "a seven", num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0)
    )
    assert image.images.shape == (1, 3, 32, 32)


def test_tiny_world_has_a_lora_per_style_and_evaluators_the_metrics_can_load(tiny_world):
    index = json.loads((tiny_world / "loras" / "index.json").read_text())
    checkpoints = {f"shadow-{n}steps" for n in (1, 2, 3)}
    named = {name for name, style in STYLES.items() if style.kind != "base"}
    assert set(index) == named | {"outline-kohya"} | checkpoints
    assert {index[name]["training"]["steps"] for name in checkpoints} == {1, 2, 3}
    assert all(index[name]["checkpoint_of"] == "shadow" for name in checkpoints)
    assert all(
        (tiny_world / "loras" / entry.get("file", f"{name}.safetensors")).exists()
        for name, entry in index.items()
    )
    # The bank's 2-step shadow LoRA is the 2-step checkpoint of the longer run, bit for bit.
    bank, checkpoint = (
        load_file(tiny_world / "loras" / f) for f in ("shadow.safetensors", "shadow-2steps.safetensors")
    )
    assert bank.keys() == checkpoint.keys() and all(torch.equal(bank[k], checkpoint[k]) for k in bank)
    folder = tiny_world / "evaluators"
    assert load_evaluators(folder).styles == list(STYLES)
    images = [s.image for s in sample_style("neon", 3, seed=0)]
    assert get_extractor("world", evaluators=str(folder))(images).shape == (3, 32)


def test_a_rerun_skips_recorded_stages(tiny_world, tmp_path):
    before = (tiny_world / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    train.run(["base"], tmp_path / "work", tiny_world, seed=0, plan=train.TINY_PLAN)
    after = (tiny_world / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert before == after and not (tmp_path / "work" / "base.ckpt").exists()


def test_world_extractor_refuses_unknown_options():
    with pytest.raises(ConfigError, match="does not accept"):
        get_extractor("world", evaluator="typo")


def test_psnr_of_a_known_error_and_of_an_exact_copy():
    target = torch.zeros(2, 3, 4, 4)
    assert torch.allclose(fidelity.psnr(target + 0.2, target), torch.tensor([20.0, 20.0]))
    assert torch.isinf(fidelity.psnr(target, target)).all()


def test_fidelity_measures_every_style_of_a_tiny_world(tiny_world, tmp_path, capsys):
    out = tmp_path / "fidelity.json"
    argv = ["--world", str(tiny_world), "--renders", "4", "--random-styles", "2", "--per-digit", "1"]
    assert (
        fidelity.main([*argv, "--steps", "1", "--json", str(out), "--grid", str(tmp_path / "grid.png")]) == 0
    )
    rows = {row["style"]: row for row in json.loads(out.read_text())}
    assert set(STYLES) | {fidelity.RANDOM_ROW} <= set(rows)
    assert all(
        name.startswith(f"{fidelity.RANDOM_ROW}, ")
        for name in set(rows) - set(STYLES) - {fidelity.RANDOM_ROW}
    )
    assert all(math.isfinite(row["psnr"]) for row in rows.values())
    # Every style has a LoRA in the tiny world, so every named style has samples and an FD ratio.
    assert all(math.isfinite(rows[name]["fd_ratio"]) and rows[name]["fd_ratio"] > 0 for name in STYLES)
    assert math.isnan(rows[fidelity.RANDOM_ROW]["render_style"])
    by_texture = [row["renders"] for name, row in rows.items() if name.startswith(f"{fidelity.RANDOM_ROW}, ")]
    assert sum(by_texture) == rows[fidelity.RANDOM_ROW]["renders"] == 2 * 10
    assert "| neon |" in capsys.readouterr().out and (tmp_path / "grid.png").exists()


def test_study_runs_on_a_trained_world_folder(tiny_world):
    from autolora.world.study import run_study

    results = run_study(["neon"], [3], images=2, steps=1, gamma=1.5, world=tiny_world)
    assert list(results["method"]) == ["base", "lora", "autolora"]
    assert list(results["prompt"]) == ["a three", "a three in neon style", "a three in neon style"]
    assert results[["diversity", "style_score", "digit_score"]].notna().all().all()


def test_force_retrains_a_recorded_stage_from_scratch(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    train.run(["vae"], work, out, seed=0, plan=train.TINY_PLAN)
    first = load_file(work / "vae" / "diffusion_pytorch_model.safetensors")
    # Zero the finished checkpoint: resuming from it would train no step and save zeros.
    state = torch.load(work / "vae.ckpt", weights_only=False)
    state["modules"]["vae"] = {k: torch.zeros_like(v) for k, v in state["modules"]["vae"].items()}
    torch.save(state, work / "vae.ckpt")
    train.run(["vae"], work, out, seed=0, plan=train.TINY_PLAN, force=True)
    again = load_file(work / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(first[k], again[k]) for k in first)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_denoising_loss_targets_what_the_schedule_predicts(kind):
    schedule = DDPMScheduler.from_config({**components.SCHEDULE, "prediction_type": kind})
    latents = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    seen = {}

    def denoiser(noisy, timesteps, hidden):
        seen.update(noisy=noisy, timesteps=timesteps)
        return SimpleNamespace(sample=torch.zeros_like(noisy))

    loss = denoising_loss(denoiser, schedule, latents, torch.zeros(3, 1, 8), torch.Generator().manual_seed(0))
    # Replay the loss's draws to recover its noise and timesteps.
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(latents.shape, generator=generator)
    assert torch.equal(seen["timesteps"], torch.randint(1000, (3,), generator=generator))
    target = noise if kind == "epsilon" else schedule.get_velocity(latents, noise, seen["timesteps"])
    assert torch.allclose(loss, target.pow(2).mean())
    assert kind == "epsilon" or not torch.allclose(target, noise)


def test_denoising_loss_refuses_a_prediction_type_it_cannot_train():
    schedule = DDPMScheduler.from_config({**components.SCHEDULE, "prediction_type": "sample"})
    with pytest.raises(ConfigError, match="'sample'"):
        prediction_target(schedule, torch.zeros(1), torch.zeros(1), torch.zeros(1, dtype=torch.long))
