"""``autolora generate`` run in-process on a tiny SD1.5 pipeline saved to disk and a random LoRA."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from autolora import generate, load_lora, load_pipeline
from autolora.cli import main
from autolora.cli.generate import LoRASpec, parse_lora_spec
from autolora.errors import ConfigError
from autolora.images import read_png_params
from autolora.params import parse_interval
from autolora.testing import random_lora_file, tiny_pipeline


@pytest.fixture(scope="module")
def files(sd15_folder):
    """The shared tiny SD1.5 folder with its two LoRAs."""
    return sd15_folder


@pytest.fixture(scope="module")
def sdxl_lora(tmp_path_factory):
    """A LoRA for a tiny SDXL pipeline: another architecture than the SD1.5 model."""
    root = tmp_path_factory.mktemp("sdxl")
    return random_lora_file(tiny_pipeline("sdxl", root / "tokenizer"), root / "sdxl.safetensors")


@pytest.fixture
def base_args(files, tmp_path):
    return [
        "generate",
        "--model", str(files / "model"),
        "--lora", str(files / "style.safetensors"),
        "--prompt", "a red cat",
        "--steps", "2",
        "--out", str(tmp_path / "out"),
    ]  # fmt: skip


# A --lora records the LoRASpec it was loaded with: no adapter or weight name is given on the command line.
UNNAMED = {"adapter_name": None, "weight_name": None}


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _replace(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


# ---------------------------------------------------------------------------------------------
# Files and metadata
# ---------------------------------------------------------------------------------------------


def test_writes_one_png_per_seed_named_by_index_method_and_seed(base_args, tmp_path, capsys):
    code, out, _ = run_cli([*base_args, "--num-images", "2", "--seed", "3"], capsys)
    assert code == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["00000-autolora-seed3.png", "00001-autolora-seed4.png"]
    assert out.split() == [str(tmp_path / "out" / name) for name in names]


def test_png_metadata_round_trips_every_parameter(base_args, files, tmp_path, capsys):
    extra = ["--gamma", "2.5", "--gamma-end", "1", "--cfg-base", "3", "--cfg-lora", "4.5", "--seed", "11"]
    extra += ["--negative-prompt", "blurry", "--interval", "0.25,0.75", "--lora-scale", "0.5"]
    extra += ["--branch-mode", "sequential", "--reference", "0.2"]
    assert run_cli([*base_args, *extra], capsys)[0] == 0
    path = tmp_path / "out" / "00000-autolora-seed11.png"
    params = read_png_params(path)
    assert params["prompt"] == "a red cat" and params["negative_prompt"] == "blurry"
    assert params["method"] == "autolora" and params["seed"] == 11 and params["num_inference_steps"] == 2
    assert (params["gamma"], params["gamma_end"], params["cfg_base"], params["cfg_lora"]) == (
        2.5,
        1.0,
        3.0,
        4.5,
    )
    assert params["interval"] == [0.25, 0.75] and params["branch_mode"] == "sequential"
    assert params["reference"] == 0.2 and params["model"] == str(files / "model")
    assert params["loras"] == [{"source": str(files / "style.safetensors"), "scale": 0.5, **UNNAMED}]
    assert params["sampler"] == "DDIMScheduler" and params["dtype"] == "float32" and params["device"] == "cpu"
    with Image.open(path) as image:
        assert (params["width"], params["height"]) == image.size == (32, 32)
        text = image.text["parameters"]
    assert text.startswith("a red cat\nNegative prompt: blurry\n")
    assert "Steps: 2" in text and "Seed: 11" in text and "Gamma: 2.5" in text and "CFG scale: 4.5" in text


def test_default_steps_and_cfg_are_recorded_as_run(base_args, tmp_path, capsys):
    args = [a for a in base_args if a not in ("--steps", "2")]
    assert run_cli([*args, "--method", "base", "--height", "16", "--width", "16"], capsys)[0] == 0
    params = read_png_params(tmp_path / "out" / "00000-base-seed0.png")
    assert params["num_inference_steps"] == 50 and params["cfg_base"] == 7.5


def test_base_images_record_no_lora_parameters(base_args, tmp_path, capsys):
    assert run_cli([*base_args, "--method", "base"], capsys)[0] == 0
    params = read_png_params(tmp_path / "out" / "00000-base-seed0.png")
    assert params["gamma"] is None and params["loras"] is None and params["cfg_lora"] is None
    assert params["cfg_base"] == 7.5


def test_dtype_option_loads_the_weights_in_that_dtype(base_args, tmp_path, capsys):
    assert run_cli([*base_args, "--dtype", "bfloat16", "--device", "cpu"], capsys)[0] == 0
    params = read_png_params(tmp_path / "out" / "00000-autolora-seed0.png")
    assert (params["dtype"], params["device"]) == ("bfloat16", "cpu")


def test_second_run_continues_numbering_instead_of_overwriting(base_args, tmp_path, capsys):
    assert run_cli(base_args, capsys)[0] == 0
    assert run_cli([*base_args, "--method", "lora"], capsys)[0] == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["00000-autolora-seed0.png", "00001-lora-seed0.png"]


def test_compare_grid_has_a_row_per_method_and_a_column_per_seed(base_args, tmp_path, capsys):
    assert run_cli([*base_args, "--compare", "--num-images", "2", "--cfg-base", "5"], capsys)[0] == 0
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "00000-base-seed0.png", "00001-base-seed1.png",
        "00002-lora-seed0.png", "00003-lora-seed1.png",
        "00004-autolora-seed0.png", "00005-autolora-seed1.png",
        "00006-grid.png",
    ]  # fmt: skip
    pad, w, h = 2, 32, 32
    label_w = 8 + 6 * len("AutoLoRA gamma 1.5")  # the longest row label
    with Image.open(out / "00006-grid.png") as grid:
        assert grid.size == (label_w + 2 * (w + pad) + pad, 14 + 3 * (h + pad) + pad)
        corners = [
            (label_w + pad + j * (w + pad), 14 + pad + i * (h + pad)) for i in range(3) for j in range(2)
        ]
        tiles = [grid.crop((x, y, x + w, y + h)) for x, y in corners]
    for tile, name in zip(tiles, names[:6], strict=True):
        with Image.open(out / name) as image:
            np.testing.assert_array_equal(as_array(tile), as_array(image))
    params = read_png_params(out / "00006-grid.png")
    assert params["rows"] == ["base", "lora", "autolora"] and params["seeds"] == [0, 1]


def test_compare_rows_share_initial_noise_so_gamma_zero_autolora_equals_base(base_args, tmp_path, capsys):
    assert run_cli([*base_args, "--compare", "--gamma", "0"], capsys)[0] == 0
    out = tmp_path / "out"
    with (
        Image.open(out / "00000-base-seed0.png") as base,
        Image.open(out / "00002-autolora-seed0.png") as guided,
    ):
        difference = np.abs(as_array(base).astype(int) - as_array(guided).astype(int))
    assert difference.max() <= 1  # the same noise and the same prediction, up to float rounding


# ---------------------------------------------------------------------------------------------
# Same images as the Python API
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["autolora", "lora", "base"])
def test_images_equal_python_api_for_the_same_arguments(base_args, files, tmp_path, capsys, method):
    args = ["--method", method, "--gamma", "2", "--seed", "5", "--num-images", "2", "--lora-scale", "0.7"]
    assert run_cli([*base_args, *args], capsys)[0] == 0
    pipe = load_pipeline(str(files / "model"))
    load_lora(pipe, str(files / "style.safetensors"), scale=0.7)
    expected = generate(
        pipe, "a red cat", method=method, gamma=2.0, seed=5, num_images=2, num_inference_steps=2
    )
    for i, image in enumerate(expected):
        with Image.open(tmp_path / "out" / f"{i:05d}-{method}-seed{5 + i}.png") as written:
            np.testing.assert_array_equal(as_array(written), as_array(image))


def test_stacked_loras_with_their_own_scales_equal_python_api(base_args, files, tmp_path, capsys):
    args = [
        "--lora",
        f"{files / 'face.safetensors'}:0.4",
        "--lora-scale",
        "0.8",
        "--branch-mode",
        "sequential",
    ]
    assert run_cli([*base_args, *args], capsys)[0] == 0
    params = read_png_params(tmp_path / "out" / "00000-autolora-seed0.png")
    assert params["loras"] == [
        {"source": str(files / "style.safetensors"), "scale": 0.8, **UNNAMED},
        {"source": str(files / "face.safetensors"), "scale": 0.4, **UNNAMED},
    ]
    pipe = load_pipeline(str(files / "model"))
    load_lora(pipe, str(files / "style.safetensors"), scale=0.8)
    load_lora(pipe, str(files / "face.safetensors"), scale=0.4)
    expected = generate(pipe, "a red cat", num_inference_steps=2, branch_mode="sequential")[0]
    with Image.open(tmp_path / "out" / "00000-autolora-seed0.png") as written:
        np.testing.assert_array_equal(as_array(written), as_array(expected))


# ---------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit status 2
# ---------------------------------------------------------------------------------------------


def assert_one_line_error(code: int, err: str, message: str) -> None:
    """Exit status 2 and, after any loading progress bars, one line naming the problem and no traceback."""
    assert code == 2
    last = err.splitlines()[-1]
    assert last.startswith("autolora generate: error: ") and message in last, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lora", "missing.safetensors"], "LoRA missing.safetensors: no such file or folder"),
        (["--lora", "./missing-folder"], "no such file"),
        (["--lora-scale", "-1"], "--lora-scale -1 must be >= 0"),
        (["--gamma", "-2"], "gamma must be >= 0"),
        (["--gamma-end", "-0.5"], "--gamma-end must be >= 0"),
        (["--cfg-base", "0.5"], "--cfg-base must be >= 1 (1 = no classifier-free guidance), got 0.5"),
        (["--interval", "0.2"], "malformed"),
        (["--interval", "0.5,1.5"], "0 <= a <= b <= 1"),
        (["--interval", "0.6,0.3"], "0 <= a <= b <= 1"),
        (["--interval", "a,b"], "not a number"),
        (["--reference", "-1"], "--reference must be >= 0"),
        (["--reference", "lora"], "base or a LoRA scale"),
        (["--num-images", "0"], "--num-images must be >= 1, got 0"),
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--steps", "2.5"], "--steps: '2.5' is not an integer"),
        (["--seed", "-1"], "--seed must be >= 0, got -1"),
        (["--height", "64"], "together"),
        (["--height", "60", "--width", "64"], "--height must be a multiple of 8"),
        (["--compare", "--method", "lora"], "--compare"),
        (["--device", "not-a-device"], "--device"),
        (["--prompt", "  "], "--prompt is empty"),
    ],
)
def test_bad_option_is_a_one_line_error_before_loading(
    base_args, tmp_path, capsys, refuse_loading, extra, message
):
    code, _, err = run_cli([*base_args, *extra], capsys)
    assert_one_line_error(code, err, message)
    assert err.count("\n") == 1  # nothing was loaded, so nothing else was printed
    assert not (tmp_path / "out").exists()


def test_negative_scale_suffix_is_refused_before_loading(base_args, files, capsys, refuse_loading):
    args = _replace(base_args, "--lora", f"{files / 'style.safetensors'}:-0.5")
    assert_one_line_error(*run_cli(args, capsys)[::2], "scale -0.5 is negative")


def test_pickle_lora_is_refused_without_allow_pickle(base_args, tmp_path, capsys, refuse_loading):
    pickle_file = tmp_path / "lora.bin"
    pickle_file.write_bytes(b"never unpickled")
    code, _, err = run_cli(_replace(base_args, "--lora", str(pickle_file)), capsys)
    assert_one_line_error(code, err, "--allow-pickle")


def test_pickle_lora_loads_with_allow_pickle_and_gives_the_safetensors_images(
    base_args, files, tmp_path, capsys
):
    import torch
    from safetensors.torch import load_file

    pickle_file = tmp_path / "style.bin"
    torch.save(load_file(files / "style.safetensors"), pickle_file)
    assert run_cli([*_replace(base_args, "--lora", str(pickle_file)), "--allow-pickle"], capsys)[0] == 0
    assert run_cli(base_args, capsys)[0] == 0
    with (
        Image.open(tmp_path / "out" / "00000-autolora-seed0.png") as a,
        Image.open(tmp_path / "out" / "00001-autolora-seed0.png") as b,
    ):
        np.testing.assert_array_equal(as_array(a), as_array(b))


def test_missing_model_is_a_one_line_error(base_args, tmp_path, capsys):
    args = _replace(base_args, "--model", str(tmp_path / "no-model"))
    assert_one_line_error(*run_cli(args, capsys)[::2], "no-model")


def test_corrupt_safetensors_is_a_one_line_error_before_loading(base_args, tmp_path, capsys, refuse_loading):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a safetensors header")
    args = _replace(base_args, "--lora", str(corrupt))
    assert_one_line_error(*run_cli(args, capsys)[::2], "corrupt.safetensors")


def test_lora_for_another_architecture_is_a_one_line_error(base_args, sdxl_lora, capsys):
    args = _replace(base_args, "--lora", str(sdxl_lora))
    assert_one_line_error(*run_cli(args, capsys)[::2], "does not fit StableDiffusionPipeline")


# ---------------------------------------------------------------------------------------------
# Parsing --lora and --interval
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("style.safetensors", LoRASpec("style.safetensors", 0.9)),
        ("style.safetensors:0.8", LoRASpec("style.safetensors", 0.8)),
        ("owner/repo:1.5e-1", LoRASpec("owner/repo", 0.15)),
        ("world:style", LoRASpec("world:style", 0.9)),
        ("world:style:2", LoRASpec("world:style", 2.0)),
        ("C:\\loras\\style.safetensors", LoRASpec("C:\\loras\\style.safetensors", 0.9)),
        ("C:\\loras\\style.safetensors:.5", LoRASpec("C:\\loras\\style.safetensors", 0.5)),
    ],
)
def test_lora_spec_takes_a_numeric_suffix_as_scale_and_the_default_otherwise(text, expected):
    assert parse_lora_spec(text, default_scale=0.9) == expected


def test_existing_path_with_a_colon_is_not_split(tmp_path):
    odd = tmp_path / "lora:2"
    odd.write_bytes(b"")
    assert parse_lora_spec(str(odd), default_scale=1.0) == LoRASpec(str(odd), 1.0)


def test_interval_parses_exactly_two_numbers():
    assert parse_interval("0,0.5") == (0.0, 0.5)
    with pytest.raises(ConfigError, match="malformed"):
        parse_interval("0,0.5,1")
