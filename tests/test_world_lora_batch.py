import json

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from autolora.errors import ConfigError
from autolora.world.lora import train_lora, train_lora_bank
from autolora.world.lora_batch import clip_each_lora, train_lora_batch
from autolora.world.lora_config import LoRATrainingConfig
from autolora.world.styles import sample_style


def _data(style, count):
    samples = sample_style(style, count, seed=0)
    return [s.image for s in samples], [s.caption for s in samples]


def _close(first, second, tolerance=5e-3):
    """Same keys, and every tensor equal up to ``tolerance`` of the largest entry of the first: Adam's
    first steps divide by gradients near zero, where the order of floating-point sums shows."""
    return first.keys() == second.keys() and all(
        (first[k] - second[k]).abs().max() <= tolerance * first[k].abs().max().clamp(min=1e-12) for k in first
    )


@pytest.fixture(scope="module")
def pipeline(random_world):
    return StableDiffusionPipeline.from_pretrained(random_world, safety_checker=None)


def test_loras_trained_together_are_the_loras_trained_alone(pipeline, tmp_path):
    datasets = [_data("neon", 3), _data("chalk", 5)]
    configs = [LoRATrainingConfig(steps=4, batch_size=2, seed=seed) for seed in (0, 7)]
    group = [tmp_path / "neon-group.safetensors", tmp_path / "chalk-group.safetensors"]
    train_lora_batch(pipeline, datasets, group, configs)
    for (images, captions), config, grouped in zip(datasets, configs, group, strict=True):
        alone = tmp_path / "alone.safetensors"
        train_lora(pipeline, images, captions, alone, config)
        together, single = load_file(grouped), load_file(alone)
        assert _close(single, together)
        assert any(not torch.equal(value, 0 * value) for key, value in single.items() if "lora.up" in key)
    # The group leaves the UNet as it found it: no stacked layers, no trainable weights.
    assert not any(p.requires_grad for p in pipeline.unet.parameters())
    assert all(type(m).__name__ != "StackedLoRA" for m in pipeline.unet.modules())


def test_an_interrupted_group_resumes_to_the_same_loras(pipeline, tmp_path, monkeypatch):
    from autolora.world import lora_batch

    datasets = [_data("neon", 3), _data("chalk", 3)]
    configs = [LoRATrainingConfig(steps=4, batch_size=2, seed=seed) for seed in (0, 1)]
    whole = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    train_lora_batch(pipeline, datasets, whole, configs)
    monkeypatch.setattr(lora_batch, "CHECKPOINT_EVERY", 2)
    write = lora_batch.write_lora

    def stop(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies when the run is over, its state saved at step 4

    monkeypatch.setattr(lora_batch, "write_lora", stop)
    cut, state = [tmp_path / "c.safetensors", tmp_path / "d.safetensors"], tmp_path / "group.ckpt"
    with pytest.raises(KeyboardInterrupt):
        train_lora_batch(pipeline, datasets, cut, configs, state_file=state)
    assert torch.load(state, weights_only=False)["step"] == 4 and not cut[0].exists()
    monkeypatch.setattr(lora_batch, "write_lora", write)
    result = train_lora_batch(pipeline, datasets, cut, configs, state_file=state)
    assert not state.exists() and result.steps == 4
    for first, second in zip(whole, cut, strict=True):
        assert _close(load_file(first), load_file(second), tolerance=0)


def test_each_lora_of_a_group_is_clipped_on_its_own():
    small, large = torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(2, 4))
    small.grad = torch.tensor([[0.3, 0.0, 0.0], [30.0, 0.0, 0.0]])
    large.grad = torch.tensor([[0.4, 0.0, 0.0, 0.0], [40.0, 0.0, 0.0, 0.0]])
    clip_each_lora([small, large])
    assert torch.allclose(small.grad[0], torch.tensor([0.3, 0.0, 0.0]))  # norm 0.5: left as it is
    assert torch.allclose(torch.cat([small.grad[1], large.grad[1]]).norm(), torch.tensor(1.0), atol=1e-5)


def test_a_group_refuses_configurations_that_differ_beyond_the_seed(pipeline, tmp_path):
    configs = [LoRATrainingConfig(steps=2, batch_size=2), LoRATrainingConfig(steps=3, batch_size=2, seed=1)]
    files = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    with pytest.raises(ConfigError, match="share every setting but their seed"):
        train_lora_batch(pipeline, [_data("neon", 2)] * 2, files, configs)
    with pytest.raises(ConfigError, match="one file and one configuration per data set"):
        train_lora_batch(pipeline, [_data("neon", 2)], files, configs)
    images, captions = _data("neon", 2)
    with pytest.raises(ConfigError, match="one caption per image, got 2 images, 1"):
        train_lora_batch(pipeline, [(images, captions[:1])] * 2, files, [configs[0]] * 2)


def test_bank_trains_in_groups_the_loras_it_trains_one_by_one(pipeline, tmp_path):
    config = LoRATrainingConfig(steps=2, batch_size=1)
    names = ["random-1", "random-2", "neon"]
    alone = train_lora_bank(pipeline, names, tmp_path / "alone", config, images=2, seed=0, init_seed=3)
    grouped = train_lora_bank(
        pipeline, names, tmp_path / "grouped", config, images=2, seed=0, init_seed=3, together=2
    )
    assert [alone[name]["trained_together"] for name in names] == [1, 1, 1]
    assert [grouped[name]["trained_together"] for name in names] == [2, 2, 1]
    assert [e["training"] for e in alone.values()] == [e["training"] for e in grouped.values()]
    for name in names:
        assert _close(
            *(load_file(tmp_path / folder / f"{name}.safetensors") for folder in ("alone", "grouped"))
        )
    assert not list((tmp_path / "grouped").glob("*.lock")) and not list((tmp_path / "grouped").glob("*.ckpt"))
    index = json.loads((tmp_path / "grouped" / "index.json").read_text())
    assert sorted(index) == sorted(names)
    with pytest.raises(ConfigError, match="at least 1"):
        train_lora_bank(pipeline, names, tmp_path / "x", config, images=2, seed=0, together=0)


def test_train_bank_cli_takes_together(random_world, tmp_path, capsys):
    from autolora.cli import main

    options = ["--base", str(random_world), "--steps", "1", "--batch-size", "1", "--images", "1"]
    assert main(["world", "train-bank", str(tmp_path), "--random", "3", "--together", "0", *options]) == 2
    assert "--together" in capsys.readouterr().err
    assert main(["world", "train-bank", str(tmp_path), "--random", "3", "--together", "3", *options]) == 0
    index = json.loads((tmp_path / "index.json").read_text())
    assert [index[f"random-{i}"]["trained_together"] for i in range(3)] == [3, 3, 3]


def test_bank_groups_are_fixed_runs_of_the_list_and_a_held_group_is_skipped(pipeline, tmp_path):
    import os

    config = LoRATrainingConfig(steps=1, batch_size=1)
    names = ["random-1", "random-2", "random-3", "random-4", "random-5"]
    (tmp_path / "random-2.lock").write_text(str(os.getpid()))  # another live worker holds the first group
    train_lora_bank(pipeline, names, tmp_path, config, images=1, seed=0, together=2)
    entries = {path.stem: json.loads(path.read_text()) for path in tmp_path.glob("random-*.json")}
    assert {name: entry["trained_together"] for name, entry in entries.items()} == {
        "random-3": 2,
        "random-4": 2,
        "random-5": 1,
    }
    assert not (tmp_path / "random-1.lock").exists()  # claimed while trying the first group, then let go
