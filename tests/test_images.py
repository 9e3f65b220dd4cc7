import os
import stat

import pytest
from PIL import Image

from autolora.images import a1111_parameters, atomic_write_bytes, make_grid, read_png_params, save_png


def test_png_round_trips_parameters_and_a1111_string(tmp_path):
    params = {
        "prompt": "a cat",
        "negative_prompt": "blurry",
        "seed": 3,
        "num_inference_steps": 4,
        "gamma": 1.5,
        "width": 8,
        "height": 8,
    }
    path = save_png(Image.new("RGB", (8, 8), "red"), tmp_path / "sub" / "x.png", params)
    assert read_png_params(path) == params
    with Image.open(path) as image:
        text = image.text["parameters"]
    assert text.startswith("a cat\nNegative prompt: blurry\n")
    assert "Steps: 4" in text and "Seed: 3" in text and "Gamma: 1.5" in text and "Size: 8x8" in text
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary file left behind


def test_png_without_parameters_reads_none(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    assert read_png_params(tmp_path / "plain.png") is None


def test_a1111_string_omits_absent_negative_prompt():
    assert a1111_parameters({"prompt": "p", "seed": 1}) == "p\nSeed: 1"


def test_grid_size_accounts_for_every_tile_and_labels():
    tile = Image.new("RGB", (10, 6))
    grid = make_grid([[tile] * 3, [tile] * 3], row_labels=["a", "bb"], col_labels=["1", "2", "3"], pad=2)
    label_w = 8 + 6 * 2
    assert grid.size == (label_w + 3 * 12 + 2, 14 + 2 * 8 + 2)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_users_umask_not_the_temporary_files_0600(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "out.json", b"{}")
        path = save_png(Image.new("RGB", (8, 8)), tmp_path / "x.png", {})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == mode
    assert stat.S_IMODE(path.stat().st_mode) == mode
