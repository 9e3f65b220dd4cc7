"""Fixtures shared by the tests: tiny random pipelines and LoRAs as a user has them on disk."""

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

import autolora.pipelines
from autolora.testing import random_lora_file, tiny_pipeline
from autolora.world import components


@pytest.fixture(scope="session")
def sd15_folder(tmp_path_factory) -> Path:
    """A tiny random SD1.5 pipeline saved as a diffusers folder (``model``) and two random LoRA files for it
    (``style.safetensors``, ``face.safetensors``). Built once per session; tests must not write into it."""
    root = tmp_path_factory.mktemp("sd15")
    pipe = tiny_pipeline("sd15", root / "tokenizer")
    pipe.save_pretrained(root / "model")
    random_lora_file(pipe, root / "style.safetensors")
    random_lora_file(pipe, root / "face.safetensors", seed=1)
    return root


@pytest.fixture
def refuse_loading(monkeypatch):
    """Make loading a model fail loudly, to show that an error came before any loading."""

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(autolora.pipelines, "load_pipeline", fail)


@pytest.fixture(scope="session")
def random_world(tmp_path_factory):
    """The world's components at tiny sizes with random weights, saved like the shipped pipeline."""
    folder = tmp_path_factory.mktemp("pipeline")
    torch.manual_seed(0)
    tokenizer = components.build_tokenizer(folder / "tok")
    pipeline = StableDiffusionPipeline(
        vae=components.build_vae(components.TINY),
        text_encoder=components.build_text_encoder(tokenizer, components.TINY),
        tokenizer=tokenizer,
        unet=components.build_unet(components.TINY),
        scheduler=components.build_sample_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)
    return folder
