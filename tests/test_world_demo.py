import numpy as np
from PIL import Image

from autolora import generate, load_lora, load_pipeline
from autolora.cli import main
from autolora.cli.demo import CELL, DEFAULT_LORA, ROWS, score
from autolora.images import read_png_params
from autolora.world.assets import lora_info
from autolora.world.evaluators import prompted_digit


def test_reduced_demo_shows_and_scores_the_api_images_of_every_row(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--images", "2", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    printed = {
        " ".join(line.split()[:-3]): [float(value) for value in line.split()[-3:]]
        for line in out.splitlines()
        if line.startswith(tuple(ROWS))
    }
    # The same images through the Python API, with the world's own default CFG (4): the last row
    # is LoRA+CFG at CFG 2 and LoRA scale 0.75.
    info = lora_info(DEFAULT_LORA)
    pipe = load_pipeline("world")
    load_lora(pipe, f"world:{DEFAULT_LORA}")
    common = {"num_inference_steps": 2, "num_images": 2, "progress": False}
    images = {
        "Base+CFG": generate(pipe, info.prompt, method="base", **common),
        "LoRA+CFG": generate(pipe, info.prompt, method="lora", **common),
        "AutoLoRA": generate(pipe, info.prompt, method="autolora", **common),
        "CFG/2 x0.75": generate(pipe, info.prompt, method="lora", cfg_lora=2.0, lora_scale=0.75, **common),
    }
    assert list(images) == list(ROWS)
    digit = info.digit if info.digit is not None else prompted_digit({"prompt": info.prompt})
    expected = score(images, info.prompt, info.style, digit)
    for label, row in expected.iterrows():
        assert printed[label] == [
            round(row.diversity, 3),
            round(row.style_score, 3),
            round(row.digit_score, 3),
        ]
    # The grid shows those images, one row per setting; every row's images differ from the others'.
    grid = tmp_path / f"demo-{DEFAULT_LORA}.png"
    assert read_png_params(grid)["lora"] == f"world:{DEFAULT_LORA}"
    with Image.open(grid) as opened:
        grid_pixels = np.asarray(opened.convert("RGB"))
    pad, label_w = 2, 8 + 6 * max(len(label) for label in ROWS)  # make_grid's layout
    for i, row_images in enumerate(images.values()):
        for j, image in enumerate(row_images):
            x, y = label_w + pad + j * (CELL + pad), 14 + pad + i * (CELL + pad)
            cell = image.resize((CELL, CELL), Image.Resampling.NEAREST).convert("RGB")
            np.testing.assert_array_equal(grid_pixels[y : y + CELL, x : x + CELL], np.asarray(cell))
    rows = [np.asarray(images[label][0]) for label in ROWS]
    assert all(not np.array_equal(a, b) for k, a in enumerate(rows) for b in rows[k + 1 :])


def test_demo_refuses_a_single_image(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--images", "1"]) == 2
    assert "--images must be at least 2" in capsys.readouterr().err
