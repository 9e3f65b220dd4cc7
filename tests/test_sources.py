"""Sources: model and LoRA aliases registered by plugins, and the one local-path-or-Hub-id rule."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autolora import default_cfg_scale, load_lora, load_pipeline, sources
from autolora.errors import ConfigError
from autolora.lora import check_lora_source

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def zoo(sd15_folder, monkeypatch):
    """A user's model zoo as a plugin would register it: one model with its own CFG and a LoRA namespace."""

    def lora(name):
        if name not in ("style", "face"):
            raise ConfigError(f"unknown zoo LoRA {name!r}")
        return sd15_folder / f"{name}.safetensors"

    sources.load_plugins()  # once, into the real tables, before they are swapped for this test's copies
    monkeypatch.setattr(sources, "_MODELS", dict(sources._MODELS))
    monkeypatch.setattr(sources, "_LORA_NAMESPACES", dict(sources._LORA_NAMESPACES))
    sources.register_model("zoo", lambda: sd15_folder / "model", default_cfg=3.0)
    sources.register_lora_namespace("zoo", lora)
    return sd15_folder


def test_model_alias_loads_its_folder_with_its_own_default_cfg(zoo):
    pipe = load_pipeline("zoo")
    assert Path(pipe.name_or_path) == zoo / "model"
    assert default_cfg_scale(pipe) == 3.0  # not SD1.5's 7.5
    assert default_cfg_scale(load_pipeline(str(zoo / "model"))) == 3.0  # the folder itself, too


def test_lora_alias_loads_and_an_unknown_name_is_refused_before_loading(zoo):
    pipe = load_pipeline("zoo")
    assert load_lora(pipe, "zoo:style") == "style"
    assert check_lora_source("zoo:style") == zoo / "style.safetensors"
    with pytest.raises(ConfigError, match="unknown zoo LoRA 'sytle'"):
        check_lora_source("zoo:sytle")


def test_commands_resolve_a_plugins_aliases_and_refuse_unknown_ones_before_loading(
    zoo, refuse_loading, tmp_path, capsys
):
    from autolora.cli import main
    from autolora.synthesis.bank import resolve_base

    assert resolve_base("zoo") == str(zoo / "model")
    loras = ["--model", "zoo", "--lora", "zoo:sytle", "--prompt", "a photo of a cat"]
    for argv in (
        ["distill", *loras, "--out", str(tmp_path / "student.safetensors")],
        ["tune", *loras, "--adherence-metric", "clip_score", "--out", str(tmp_path / "tune")],
    ):
        assert main(argv) == 2
        assert "unknown zoo LoRA 'sytle'" in capsys.readouterr().err


def test_world_is_registered_by_its_plugin():
    from autolora.world.assets import WORLD_CFG, base_pipeline_path, lora_path

    assert sources.resolve_model("world") == str(base_pipeline_path())
    assert sources.resolve_lora("world:neon") == str(lora_path("neon"))
    assert sources.model_default_cfg(base_pipeline_path()) == WORLD_CFG


@pytest.mark.parametrize(
    ("source", "local"),
    [
        ("owner/name", False),
        ("stabilityai/stable-diffusion-3.5-large", False),
        ("./owner/name", True),
        ("~/loras/x", True),
        ("/abs/model", True),
        ("style.safetensors", True),
        ("owner/name.safetensors", True),
        ("a/b/c", True),
        ("sd15-folder", True),
    ],
)
def test_local_path_or_hub_id(source, local):
    assert sources.is_local(source) is local


def test_core_modules_do_not_import_the_world_until_a_world_name_is_looked_up():
    code = (
        "import sys, autolora.pipelines, autolora.lora, autolora.metrics, autolora.experiments.report, "
        "autolora.distill, autolora.tune, autolora.synthesis.bank; "
        "assert not [m for m in sys.modules if m.startswith('autolora.world')], 'world imported'; "
        "assert autolora.metrics.get_metric('world:digit').name == 'world:digit'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(SRC)})
