"""The shipped miniature world loads through diffusers' own classes and stays within its size budget."""

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline

from autolora.errors import ConfigError
from autolora.world import assets

BUDGET_BYTES = 25 * 1024 * 1024


def test_shipped_assets_fit_the_size_budget():
    total = sum(p.stat().st_size for p in assets.ASSETS_DIR.rglob("*") if p.is_file())
    assert 0 < total <= BUDGET_BYTES


def test_manifest_records_cpu_time_of_every_stage():
    stages = json.loads((assets.ASSETS_DIR / "manifest.json").read_text())["stages"]
    assert set(stages) == {"vae", "base", "loras", "evaluators", "style-encoder"}
    assert all(stage["cpu_seconds"] > 0 and stage["steps"] > 0 for stage in stages.values())


@pytest.fixture(scope="module")
def pipe():
    pipeline = StableDiffusionPipeline.from_pretrained(assets.base_pipeline_path(), safety_checker=None)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _sample(pipe, prompt):
    generator = torch.Generator().manual_seed(0)
    return pipe(prompt, num_inference_steps=3, generator=generator, output_type="pt").images


def test_base_pipeline_loads_with_diffusers_and_renders_32px(pipe):
    assert isinstance(pipe, StableDiffusionPipeline) and pipe.safety_checker is None
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    assert _sample(pipe, "a seven").shape == (1, 3, 32, 32)


def test_every_lora_loads_with_load_lora_weights_and_changes_the_image(pipe):
    base = _sample(pipe, "a seven")
    for name in assets.available_loras():
        info = assets.lora_info(name)
        pipe.load_lora_weights(str(assets.lora_path(name)), adapter_name=name.replace("-", "_"))
        assert not torch.allclose(_sample(pipe, "a seven"), base), name
        pipe.delete_adapters(name.replace("-", "_"))
        assert info.kind in ("style", "character") and info.trigger in info.prompt


def test_bank_has_six_styles_a_character_and_a_kohya_file():
    infos = [assets.lora_info(name) for name in assets.available_loras()]
    assert len({i.style for i in infos if i.kind == "style"}) >= 6
    character = assets.lora_info("character")
    assert character.kind == "character" and character.digit is not None
    assert any(assets.lora_path(n).name.endswith("-kohya.safetensors") for n in assets.available_loras())


def test_unknown_lora_raises_config_error_listing_names():
    with pytest.raises(ConfigError, match=r"unknown world LoRA 'nope'; available: .*neon"):
        assets.lora_path("nope")


def test_world_pipeline_defaults_to_its_own_cfg_scale_and_others_keep_the_papers(tmp_path):
    from autolora import default_cfg_scale, load_pipeline
    from autolora.testing import tiny_pipeline
    from autolora.world.assets import WORLD_CFG

    assert default_cfg_scale(load_pipeline("world")) == WORLD_CFG
    assert default_cfg_scale(tiny_pipeline("sd15", tmp_path)) == 7.5
