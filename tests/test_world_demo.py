from PIL import Image

from autolora.cli import main
from autolora.images import read_png_params


def test_reduced_demo_writes_grid_and_prints_table(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--images", "2", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "LoRA+CFG" in out and "AutoLoRA" in out and "diversity" in out
    grid = tmp_path / "demo-neon.png"
    assert Image.open(grid).size[0] > 2 * 96
    assert read_png_params(grid)["lora"] == "world:neon"


def test_demo_refuses_a_single_image(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--images", "1"]) == 2
    assert "--images must be at least 2" in capsys.readouterr().err
