"""Fixtures shared by the tests: tiny random pipelines and LoRAs as a user has them on disk."""

from pathlib import Path

import pytest

import autolora.pipelines
from autolora.testing import random_lora_file, tiny_pipeline


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
