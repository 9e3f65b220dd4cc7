import numpy as np
import pytest
import torch
from diffusers.guiders import ClassifierFreeGuidance
from diffusers.modular_pipelines.stable_diffusion_xl.modular_blocks_stable_diffusion_xl import (
    StableDiffusionXLAutoBlocks,
)

from autolora import generate, load_lora
from autolora.errors import ConfigError
from autolora.modular_guider import AutoLoRAGuidance
from autolora.testing import random_lora_file, tiny_pipeline

PROMPT = "a photo of sks cat"
OPTIONS = {"num_inference_steps": 3, "height": 32, "width": 32, "output_type": "np"}


@pytest.fixture
def pipes(tmp_path):
    """A tiny SDXL pipeline with a denoiser LoRA, and a modular SDXL pipeline sharing its components."""
    pipe = tiny_pipeline("sdxl", tmp_path)
    load_lora(pipe, str(random_lora_file(pipe, tmp_path / "style.safetensors")))
    modular = StableDiffusionXLAutoBlocks().init_pipeline()
    modular.update_components(**{name: c for name, c in pipe.components.items() if c is not None})
    return pipe, modular


def _modular(modular, guider, seed=0):
    modular.update_components(guider=guider)
    generator = torch.Generator("cpu").manual_seed(seed)
    return modular(prompt=PROMPT, generator=generator, output="images", **OPTIONS)


def test_guider_equals_generate_with_the_same_parameter_names(pipes):
    pipe, modular = pipes
    guider = AutoLoRAGuidance(gamma=1.5, cfg_base=3.0, cfg_lora=4.5)
    expected = generate(pipe, PROMPT, gamma=1.5, cfg_base=3.0, cfg_lora=4.5, progress=False, **OPTIONS)
    assert np.abs(_modular(modular, guider) - expected).max() < 1e-5


def test_former_parameter_names_set_the_same_guider():
    former = AutoLoRAGuidance(guidance_scale_base=3.0, guidance_scale_lora=4.5, start=0.2, stop=0.6)
    current = AutoLoRAGuidance(cfg_base=3.0, cfg_lora=4.5, interval=(0.2, 0.6))
    assert (former.guidance_scale_base, former.guidance_scale_lora) == (3.0, 4.5)
    assert former.schedule == current.schedule and (former._start, former._stop) == (0.2, 0.6)


def test_layer_list_is_collected_once_per_run_not_every_step(pipes, monkeypatch):
    import autolora.modular_guider

    _, modular = pipes
    made = []

    class CountingSwitcher(autolora.modular_guider.BranchSwitcher):
        def __init__(self, modules):
            made.append(1)
            super().__init__(modules)

    monkeypatch.setattr(autolora.modular_guider, "BranchSwitcher", CountingSwitcher)
    _modular(modular, AutoLoRAGuidance(gamma=1.5))
    assert len(made) == 1  # OPTIONS runs 3 steps of 4 predictions each


def test_guider_gamma_one_and_zero_equal_lora_and_base_cfg(pipes):
    pipe, modular = pipes
    lora = _modular(modular, ClassifierFreeGuidance(guidance_scale=4.5))
    pipe.disable_lora()
    base = _modular(modular, ClassifierFreeGuidance(guidance_scale=3.0))
    pipe.enable_lora()
    for gamma, expected in ((1.0, lora), (0.0, base)):
        guider = AutoLoRAGuidance(gamma=gamma, cfg_base=3.0, cfg_lora=4.5)
        assert np.abs(_modular(modular, guider) - expected).max() < 1e-5


def test_guider_outside_interval_is_lora_cfg_and_restores_adapters(pipes):
    pipe, modular = pipes
    lora = _modular(modular, ClassifierFreeGuidance(guidance_scale=4.5))
    guider = AutoLoRAGuidance(gamma=2.0, cfg_base=3.0, cfg_lora=4.5, interval=(0.0, 0.0))
    assert np.abs(_modular(modular, guider) - lora).max() < 1e-5
    _modular(modular, AutoLoRAGuidance(gamma=2.0))
    assert pipe.get_active_adapters() == ["style"]
    assert not any(layer.disable_adapters for layer in pipe.unet.modules() if hasattr(layer, "lora_A"))


def test_guider_predictions_follow_cfg_scales():
    assert AutoLoRAGuidance().num_conditions == 4
    assert AutoLoRAGuidance(cfg_base=1.0, cfg_lora=1.0).num_conditions == 2


def test_guider_rejects_what_generate_rejects():
    with pytest.raises(ConfigError, match="gamma"):
        AutoLoRAGuidance(gamma=-1.0)
    with pytest.raises(ConfigError, match="cfg_base must be >= 1"):
        AutoLoRAGuidance(cfg_base=0.5)
