import json
import os
import subprocess
import sys

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from autolora.errors import ConfigError, InputFileError
from autolora.world.lora import read_image_folder, train_lora, train_lora_bank
from autolora.world.lora_config import LoRATrainingConfig
from autolora.world.styles import get_style, sample_style


def _train(folder, out, seed, steps=2, **extra):
    samples = sample_style("neon", 4, seed=0)
    config = LoRATrainingConfig(steps=steps, batch_size=2, seed=seed)
    train_lora(folder, [s.image for s in samples], [s.caption for s in samples], out, config, **extra)
    return load_file(out)


def test_same_seed_reproduces_lora_weights_and_another_seed_does_not(random_world, tmp_path):
    first = _train(random_world, tmp_path / "a.safetensors", seed=0)
    second = _train(random_world, tmp_path / "b.safetensors", seed=0)
    other = _train(random_world, tmp_path / "c.safetensors", seed=1)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_checkpoints_of_one_run_are_the_loras_of_shorter_runs(random_world, tmp_path):
    checkpoints = {1: tmp_path / "at1.safetensors", 2: tmp_path / "at2.safetensors"}
    samples = sample_style("neon", 4, seed=0)
    config = LoRATrainingConfig(steps=3, batch_size=2, seed=0)
    images, captions = [s.image for s in samples], [s.caption for s in samples]
    train_lora(random_world, images, captions, tmp_path / "at3.safetensors", config, checkpoints=checkpoints)
    assert not (tmp_path / "at3.safetensors.ckpt").exists()
    for steps in (1, 2):
        short = _train(random_world, tmp_path / f"short{steps}.safetensors", seed=0, steps=steps)
        checkpoint = load_file(checkpoints[steps])
        assert short.keys() == checkpoint.keys() and all(torch.equal(short[k], checkpoint[k]) for k in short)
    with pytest.raises(ConfigError, match="checkpoint step counts"):
        train_lora(random_world, images, captions, tmp_path / "x.safetensors", config, checkpoints={3: "y"})


def test_interrupted_run_with_checkpoints_resumes_to_the_same_lora(random_world, tmp_path, monkeypatch):
    from autolora.world import lora

    whole = _train(random_world, tmp_path / "whole.safetensors", seed=0, steps=3)
    save = lora.save_lora

    def save_then_stop(unet, out_file, *args):
        save(unet, out_file, *args)
        raise KeyboardInterrupt  # the process dies right after the first checkpoint is written

    monkeypatch.setattr(lora, "save_lora", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        _train(random_world, tmp_path / "cut.safetensors", seed=0, steps=3, checkpoints={1: tmp_path / "c1"})
    assert (tmp_path / "cut.safetensors.ckpt").exists() and not (tmp_path / "cut.safetensors").exists()
    monkeypatch.setattr(lora, "save_lora", save)
    resumed = _train(
        random_world, tmp_path / "cut.safetensors", seed=0, steps=3, checkpoints={1: tmp_path / "c1"}
    )
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_lora_and_its_kohya_twin_load_with_diffusers_and_agree(random_world, tmp_path):
    _train(random_world, tmp_path / "lora.safetensors", seed=0, kohya_file=tmp_path / "kohya.safetensors")
    kohya = load_file(tmp_path / "kohya.safetensors")
    assert all(k.startswith("lora_unet_") for k in kohya)
    outputs = []
    for name in ("lora", "kohya"):
        pipe = StableDiffusionPipeline.from_pretrained(random_world, safety_checker=None)
        pipe.load_lora_weights(str(tmp_path / f"{name}.safetensors"))
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(0)
        outputs.append(pipe("a seven", num_inference_steps=2, generator=generator, output_type="pt").images)
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)


def test_read_image_folder_reads_imagefolder_and_kohya_layouts(tmp_path):
    samples = sample_style("outline", 2, seed=0)
    imagefolder, kohya = tmp_path / "hf", tmp_path / "kohya"
    imagefolder.mkdir(), kohya.mkdir()
    rows = []
    for i, sample in enumerate(samples):
        sample.image.save(imagefolder / f"{i}.png")
        sample.image.save(kohya / f"{i}.png")
        (kohya / f"{i}.txt").write_text(sample.caption + "\n")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": sample.caption}))
    (imagefolder / "metadata.jsonl").write_text("\n".join(rows))
    for folder in (imagefolder, kohya):
        images, captions = read_image_folder(folder)
        assert captions == [s.caption for s in samples] and len(images) == 2


def test_bad_folders_and_configs_raise_named_errors(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        read_image_folder(tmp_path / "missing")
    sample_style("outline", 1, seed=0)[0].image.save(tmp_path / "0.png")
    with pytest.raises(InputFileError, match=r"no caption \.txt for 0\.png"):
        read_image_folder(tmp_path)
    with pytest.raises(ConfigError, match="steps must be at least 1"):
        LoRATrainingConfig(steps=0)


def test_metadata_line_that_is_not_json_is_named_with_file_and_line(tmp_path):
    sample_style("outline", 1, seed=0)[0].image.save(tmp_path / "0.png")
    good = json.dumps({"file_name": "0.png", "text": "a seven in outlined style"})
    (tmp_path / "metadata.jsonl").write_text(f"{good}\n\n{{not json\n")
    with pytest.raises(InputFileError, match=r"metadata\.jsonl, line 3: not JSON"):
        read_image_folder(tmp_path)
    (tmp_path / "metadata.jsonl").write_text(f'{good}\n["0.png"]\n')
    with pytest.raises(InputFileError, match=r"line 2: needs an object with 'file_name' and 'text'"):
        read_image_folder(tmp_path)


def test_train_lora_cli_refuses_a_base_that_is_not_a_pipeline_before_training(tmp_path, capsys):
    from autolora.cli import main

    images = tmp_path / "images"
    images.mkdir()
    sample_style("outline", 1, seed=0)[0].image.save(images / "0.png")
    (images / "0.txt").write_text("a seven in outlined style")
    out = tmp_path / "lora.safetensors"
    assert main(["world", "train-lora", str(images), str(out), "--base", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such diffusers pipeline folder" in capsys.readouterr().err
    assert not out.exists()


def test_bank_resumes_and_leaves_styles_claimed_by_a_live_worker(random_world, tmp_path):
    pipeline = StableDiffusionPipeline.from_pretrained(random_world, safety_checker=None)
    config = LoRATrainingConfig(steps=1, batch_size=1)
    first = train_lora_bank(pipeline, ["neon"], tmp_path, config, images=1, seed=0)
    (tmp_path / "neon.safetensors").unlink()  # a finished style is not retrained, even without its file
    (tmp_path / "chalk.lock").write_text(str(os.getpid()))  # claimed by a live process: this one
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    (tmp_path / "random-7.lock").write_text(finished.stdout.decode())  # claimed by a process that ended
    index = train_lora_bank(pipeline, ["neon", "chalk", "random-7"], tmp_path, config, images=1, seed=0)
    assert index["neon"]["final_loss"] == first["neon"]["final_loss"]
    assert not (tmp_path / "neon.safetensors").exists() and not (tmp_path / "chalk.safetensors").exists()
    assert set(index) == {"neon", "random-7"} and (tmp_path / "random-7.safetensors").exists()
    assert not (tmp_path / "random-7.lock").exists()
    assert index["random-7"]["prompt"] == f"a seven in {get_style('random-7').trigger} style"
    assert index["random-7"]["training"]["seed"] == 2
    assert json.loads((tmp_path / "index.json").read_text()).keys() == index.keys()


def test_train_bank_cli_trains_the_named_styles_and_checks_names_first(random_world, tmp_path, capsys):
    from autolora.cli import main

    options = ["--base", str(random_world), "--steps", "1", "--batch-size", "1", "--images", "1"]
    assert main(["world", "train-bank", str(tmp_path), "--styles", "random-3", "sepia", *options]) == 2
    assert "unknown style 'sepia'" in capsys.readouterr().err and not list(tmp_path.iterdir())
    assert main(["world", "train-bank", str(tmp_path), "--styles", "random-3", *options]) == 0
    assert (tmp_path / "random-3.safetensors").exists() and "1 of 1 LoRAs trained" in capsys.readouterr().out


def test_train_lora_cli_writes_a_checkpoint_every_n_steps(random_world, tmp_path, capsys):
    from autolora.cli import main

    images = tmp_path / "images"
    images.mkdir()
    sample_style("outline", 1, seed=0)[0].image.save(images / "0.png")
    (images / "0.txt").write_text("a seven in outlined style")
    out = tmp_path / "lora.safetensors"
    options = ["--base", str(random_world), "--steps", "5", "--batch-size", "1"]
    assert main(["world", "train-lora", str(images), str(out), *options, "--save-every", "0"]) == 2
    assert "--save-every must be at least 1" in capsys.readouterr().err
    assert main(["world", "train-lora", str(images), str(out), *options, "--save-every", "2"]) == 0
    written = sorted(path.name for path in tmp_path.glob("*.safetensors"))
    assert written == ["lora-2steps.safetensors", "lora-4steps.safetensors", "lora.safetensors"]


def test_train_bank_init_seed_starts_every_lora_from_one_initialisation(random_world, tmp_path):
    from safetensors.torch import load_file

    from autolora.cli import main

    options = ["--base", str(random_world), "--steps", "1", "--batch-size", "1", "--images", "1"]
    options += ["--learning-rate", "1e-7"]  # one tiny step: the factors stay at their initial values
    for folder, extra in (("shared", ["--init-seed", "5"]), ("own", [])):
        assert (
            main(
                [
                    "world",
                    "train-bank",
                    str(tmp_path / folder),
                    "--styles",
                    "random-3",
                    "neon",
                    *options,
                    *extra,
                ]
            )
            == 0
        )
    first, second = (load_file(str(tmp_path / "shared" / f"{n}.safetensors")) for n in ("random-3", "neon"))
    down = [key for key in first if "lora_A" in key or "lora.down" in key]
    assert down and all(torch.allclose(first[key], second[key], atol=1e-5) for key in down)
    own = (load_file(str(tmp_path / "own" / f"{n}.safetensors")) for n in ("random-3", "neon"))
    assert not torch.allclose(*(state[down[0]] for state in own), atol=1e-3)
    index = json.loads((tmp_path / "shared" / "index.json").read_text())
    assert {entry["training"]["seed"] for entry in index.values()} == {5}
