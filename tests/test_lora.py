import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from autolora import generate, load_lora, to_kohya_state_dict
from autolora.branches import adapter_scales
from autolora.errors import ConfigError, IncompatibleLoRAError, InputFileError
from autolora.testing import random_lora_file, random_lora_state_dict, tiny_pipeline

OPTIONS = {"num_inference_steps": 2, "height": 32, "width": 32, "output_type": "np", "progress": False}


@pytest.fixture
def sd15(tmp_path):
    return tiny_pipeline("sd15", tmp_path / "sd15")


def test_load_returns_the_adapter_name_and_activates_it(sd15, tmp_path):
    name = load_lora(sd15, str(random_lora_file(sd15, tmp_path / "my style.safetensors")))
    assert name == "my_style"
    assert sd15.get_active_adapters() == [name]
    assert (
        load_lora(sd15, str(random_lora_file(sd15, tmp_path / "x.safetensors")), adapter_name="second")
        == "second"
    )


def test_loaded_loras_stack_with_their_scales(sd15, tmp_path):
    first = load_lora(sd15, str(random_lora_file(sd15, tmp_path / "a.safetensors", seed=1)), scale=0.8)
    second = load_lora(sd15, str(random_lora_file(sd15, tmp_path / "b.safetensors", seed=2)), scale=0.5)
    assert sd15.get_active_adapters() == [first, second]
    assert adapter_scales(sd15) == pytest.approx({first: 0.8, second: 0.5})
    both = generate(sd15, "a photo of cat", method="lora", **OPTIONS)
    sd15.set_adapters([first], adapter_weights=[0.8])
    assert np.abs(generate(sd15, "a photo of cat", method="lora", **OPTIONS) - both).max() > 1e-4


def test_duplicate_adapter_name_raises_config_error(sd15, tmp_path):
    path = str(random_lora_file(sd15, tmp_path / "a.safetensors"))
    load_lora(sd15, path, adapter_name="style")
    with pytest.raises(ConfigError, match="already loaded"):
        load_lora(sd15, path, adapter_name="style")


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_kohya_file_gives_the_same_images_as_its_diffusers_twin(kind, tmp_path):
    pipe = tiny_pipeline(kind, tmp_path / kind)
    state = random_lora_state_dict(pipe, text_encoder=True)
    save_file(state, str(tmp_path / "diffusers.safetensors"))
    save_file(to_kohya_state_dict(state), str(tmp_path / "kohya.safetensors"))
    images = {}
    for name in ("diffusers", "kohya"):
        pipe = tiny_pipeline(kind, tmp_path / kind)
        load_lora(pipe, str(tmp_path / f"{name}.safetensors"))
        images[name] = generate(pipe, "a photo of sks cat", gamma=1.5, cfg_base=3.0, cfg_lora=3.0, **OPTIONS)
    base = generate(pipe, "a photo of sks cat", method="base", cfg_base=3.0, **OPTIONS)
    assert np.abs(images["diffusers"] - images["kohya"]).max() < 1e-5
    # Both loads did something: the LoRA changes the image (two no-op loads would also be equal).
    assert np.abs(images["kohya"] - base).max() > 1e-3


def test_to_kohya_state_dict_names_modules_the_kohya_way():
    down, up = torch.zeros(4, 32), torch.zeros(32, 4)
    kohya = to_kohya_state_dict(
        {
            "unet.mid_block.attentions.0.proj_in.lora_A.weight": down,
            "unet.mid_block.attentions.0.proj_in.lora_B.weight": up,
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": down,
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": up,
        },
        alphas={"unet.mid_block.attentions.0.proj_in": 2.0},
    )
    assert kohya["lora_unet_mid_block_attentions_0_proj_in.lora_down.weight"] is down
    assert kohya["lora_unet_mid_block_attentions_0_proj_in.lora_up.weight"] is up
    assert float(kohya["lora_unet_mid_block_attentions_0_proj_in.alpha"]) == 2.0
    assert float(kohya["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha"]) == 4.0  # the rank


def test_to_kohya_state_dict_refuses_transformer_loras():
    with pytest.raises(ConfigError, match="transformer"):
        to_kohya_state_dict({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 32)})


def test_missing_file_raises_input_file_error(sd15, tmp_path):
    with pytest.raises(InputFileError, match="no such file or folder"):
        load_lora(sd15, str(tmp_path / "missing.safetensors"))


def test_corrupt_safetensors_raises_input_file_error(sd15, tmp_path):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(InputFileError, match="corrupt"):
        load_lora(sd15, str(path))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_pickle_files_are_refused_unless_allowed(sd15, tmp_path, suffix):
    path = tmp_path / f"style{suffix}"
    torch.save(random_lora_state_dict(sd15), path)
    with pytest.raises(InputFileError, match="allow_pickle"):
        load_lora(sd15, str(path))
    assert load_lora(sd15, str(path), allow_pickle=True) == "style"


def test_sd15_lora_on_sdxl_raises_incompatible_lora_error(sd15, tmp_path):
    sdxl = tiny_pipeline("sdxl", tmp_path / "sdxl")
    with pytest.raises(IncompatibleLoRAError, match="size mismatch"):
        load_lora(sdxl, str(random_lora_file(sd15, tmp_path / "sd15.safetensors")))
    assert sdxl.get_list_adapters() == {} or not any(sdxl.get_list_adapters().values())


def test_lora_matching_no_module_raises_incompatible_lora_error(sd15, tmp_path):
    flux = tiny_pipeline("flux", tmp_path / "flux")
    with pytest.raises(IncompatibleLoRAError, match="no module"):
        load_lora(sd15, str(random_lora_file(flux, tmp_path / "flux.safetensors")))


def test_negative_scale_raises_config_error(sd15, tmp_path):
    with pytest.raises(ConfigError, match="scale"):
        load_lora(sd15, str(random_lora_file(sd15, tmp_path / "a.safetensors")), scale=-0.5)
