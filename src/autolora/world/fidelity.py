"""How faithful is the miniature world? ``python -m autolora.world.fidelity --world DIR``.

Measured per style on renders of held-out digits, with the evaluators of ``DIR/evaluators``
(trained on clean renders):

* **renders**: the evaluators' digit and style accuracy on the renders themselves (the ceiling);
* **VAE**: PSNR of the VAE's reconstructions and the evaluators' accuracy on them;
* **samples** (once ``DIR/pipeline`` and ``DIR/loras`` are trained): the base model's samples of
  "a three" (digit accuracy) and each style LoRA's LoRA+CFG samples of "a three in neon style"
  (style and digit accuracy), and the Fréchet distance (world features) between samples and
  held-out renders of the style, as a ratio to the distance between two held-out render sets.

Unseen random styles (seeds from 0, never in ``RANDOM_TRAINING_SEEDS``) are reported pooled and by
texture.
Writes a JSON file of the numbers, prints a markdown table, and optionally saves a grid of
renders, reconstructions and samples per style.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from autolora.metrics.distribution import frechet_distance
from autolora.world.evaluators import WorldEvaluators, load_evaluators
from autolora.world.study import sample, world_pipeline
from autolora.world.styles import (
    DIGIT_NAMES,
    STYLES,
    TEXTURES,
    Sample,
    get_style,
    random_style_names,
    sample_styles,
)
from autolora.world.training import images_to_tensor

#: The row that pools the unseen random styles.
RANDOM_ROW = "random (unseen)"


@dataclass
class StyleRow:
    """Every measurement of one style; ``nan`` where a stage is not trained or does not apply."""

    style: str
    renders: int
    render_digit: float
    render_style: float
    psnr: float = math.nan
    reconstruction_digit: float = math.nan
    reconstruction_style: float = math.nan
    sample_digit: float = math.nan
    sample_style: float = math.nan
    fd_ratio: float = math.nan
    grid: list[list[Image.Image]] = field(default_factory=list, repr=False)


def held_out_renders(style_names: Sequence[str], count: int, seed: int) -> dict[str, list[Sample]]:
    """``count`` renders of held-out digits per style, each style its own seed."""
    samples = sample_styles(dict.fromkeys(style_names, count), seed, split="held_out")
    return {name: [s for s in samples if s.style == name] for name in style_names}


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, for pixels in [-1, 1] (peak-to-peak 2)."""
    mse = (reconstruction - target).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(4.0 / mse)


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """Decode the posterior mean of each image, clamped to the pixel range."""
    return torch.cat(
        [vae.decode(vae.encode(chunk).latent_dist.mean).sample.clamp(-1, 1) for chunk in pixels.split(256)]
    )


def to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """``(N, 3, H, W)`` pixels in [-1, 1] as RGB images."""
    array = ((pixels.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    return [Image.fromarray(a, "RGB") for a in array]


def accuracies(
    evaluators: WorldEvaluators, images: Sequence[Image.Image], digits: Sequence[int], style: str
) -> tuple[float, float]:
    """Share of images whose predicted digit is ``digits[i]`` and whose predicted style is ``style``."""
    digit = (evaluators.digit_probabilities(images).argmax(1) == torch.tensor(digits)).float().mean()
    if style not in evaluators.styles:
        return float(digit), math.nan
    predicted = evaluators.style_probabilities(images).argmax(1)
    return float(digit), float((predicted == evaluators.styles.index(style)).float().mean())


def measure_renders_and_vae(
    evaluators: WorldEvaluators, vae: AutoencoderKL | None, renders: dict[str, list[Sample]]
) -> list[StyleRow]:
    """Ceiling accuracy on renders and, with ``vae``, PSNR and accuracy of its reconstructions."""
    rows = []
    for name, samples in renders.items():
        images, digits = [s.image for s in samples], [s.digit for s in samples]
        row = StyleRow(name, len(samples), *accuracies(evaluators, images, digits, name))
        row.grid.append(images[:8])
        if vae is not None:
            pixels = images_to_tensor(images)
            reconstruction = reconstruct(vae, pixels)
            row.psnr = float(psnr(reconstruction, pixels).mean())
            reconstructed = to_images(reconstruction)
            row.reconstruction_digit, row.reconstruction_style = accuracies(
                evaluators, reconstructed, digits, name
            )
            row.grid.append(reconstructed[:8])
        rows.append(row)
    return rows


def measure_samples(
    rows: list[StyleRow],
    evaluators: WorldEvaluators,
    world: Path,
    reference: dict[str, list[Sample]],
    second: dict[str, list[Sample]],
    per_digit: int,
    steps: int,
) -> None:
    """Fill the sample columns: base samples for ``base``, LoRA+CFG samples for each style with a LoRA.

    ``reference`` and ``second`` are two independent held-out render sets per style (for the FD ratio).
    """
    index = json.loads((world / "loras" / "index.json").read_text())
    for row in rows:
        if row.style != "base" and row.style not in index:
            continue
        style = get_style(row.style)
        method = "base" if row.style == "base" else "lora"
        pipe = world_pipeline(world, row.style if method == "lora" else None)
        digits = [style.digit] if style.digit is not None else list(range(10))
        images, labels = [], []
        for digit in digits:
            count = per_digit * (10 // len(digits))
            if style.kind == "character":
                prompt = f"a {style.trigger}"
            elif method == "base":
                prompt = f"a {DIGIT_NAMES[digit]}"
            else:
                prompt = f"a {DIGIT_NAMES[digit]} in {style.trigger} style"
            images += sample(pipe, prompt, count, steps, seed=1000 * digit, method=method)
            labels += [digit] * count
        row.sample_digit, row.sample_style = accuracies(evaluators, images, labels, row.style)
        row.grid.append(images[::per_digit][:8])
        row.fd_ratio = fd_ratio(
            evaluators, images, [s.image for s in reference[row.style]], [s.image for s in second[row.style]]
        )


def fd_ratio(
    evaluators: WorldEvaluators,
    samples: Sequence[Image.Image],
    reference: Sequence[Image.Image],
    renders: Sequence[Image.Image],
) -> float:
    """FD(samples, reference renders) over FD(other renders, reference renders), in world features.

    ``renders`` are a second held-out render set of the same style, drawn independently of
    ``reference``: the ratio is 1 when samples are as close to the style as fresh renders are.
    """
    reference_features = evaluators.features(list(reference))
    floor = frechet_distance(evaluators.features(list(renders)), reference_features)
    return frechet_distance(evaluators.features(list(samples)), reference_features) / floor


def markdown(rows: Sequence[StyleRow]) -> str:
    """The fidelity table: one line per style, percentages and dB."""

    def pct(value: float) -> str:
        return "" if math.isnan(value) else f"{100 * value:.0f}"

    def num(value: float, digits: int = 1) -> str:
        return "" if math.isnan(value) else f"{value:.{digits}f}"

    lines = [
        "| style | renders: digit / style % | VAE PSNR dB | reconstructions: digit / style % "
        "| samples: digit / style % | FD ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.style} | {pct(r.render_digit)} / {pct(r.render_style)} | {num(r.psnr)} "
            f"| {pct(r.reconstruction_digit)} / {pct(r.reconstruction_style)} "
            f"| {pct(r.sample_digit)} / {pct(r.sample_style)} | {num(r.fd_ratio, 2)} |"
        )
    return "\n".join(lines)


def save_grid(rows: Sequence[StyleRow], path: Path, cell: int = 48) -> None:
    """Per style, one line each of renders, reconstructions and samples, side by side."""
    from autolora.images import make_grid

    grid_rows, labels = [], []
    for row in rows:
        for kind, images in zip(("renders", "VAE", "samples"), row.grid, strict=False):
            grid_rows.append([image.resize((cell, cell), Image.Resampling.NEAREST) for image in images])
            labels.append(f"{row.style} {kind}")
    width = max(len(r) for r in grid_rows)
    grid_rows = [r + [Image.new("RGB", (cell, cell), "white")] * (width - len(r)) for r in grid_rows]
    make_grid(grid_rows, labels, [""] * width).save(path)


def main(argv: list[str] | None = None) -> int:
    """Command line: measure a trained world folder and print its fidelity table."""
    parser = argparse.ArgumentParser(
        prog="python -m autolora.world.fidelity", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--world", type=Path, required=True, help="trained world (pipeline, loras, evaluators)"
    )
    parser.add_argument("--vae", type=Path, help="VAE folder (default: the world pipeline's)")
    parser.add_argument("--evaluators", type=Path, help="evaluators folder (default: the world's)")
    parser.add_argument("--renders", type=int, default=100, help="held-out renders per style")
    parser.add_argument("--random-styles", type=int, default=30, help="unseen random styles (seeds 0..n-1)")
    parser.add_argument(
        "--per-digit", type=int, default=0, help="samples per digit and style (0: no samples)"
    )
    parser.add_argument("--steps", type=int, default=20, help="denoising steps of the samples")
    parser.add_argument("--json", type=Path, default=Path("world-fidelity.json"))
    parser.add_argument("--grid", type=Path, help="PNG of renders, reconstructions and samples per style")
    args = parser.parse_args(argv)
    evaluators = load_evaluators(args.evaluators or args.world / "evaluators")
    vae_folder = args.vae or args.world / "pipeline" / "vae"
    vae = AutoencoderKL.from_pretrained(vae_folder).eval() if vae_folder.exists() else None
    renders = held_out_renders(list(STYLES), args.renders, seed=7000)
    rows = measure_renders_and_vae(evaluators, vae, renders)
    if args.per_digit:
        second = held_out_renders(list(STYLES), args.renders, seed=8000)
        measure_samples(rows, evaluators, args.world, renders, second, args.per_digit, args.steps)
    unseen = held_out_renders(random_style_names(range(args.random_styles)), 10, seed=9000)
    pooled = {RANDOM_ROW: [s for samples in unseen.values() for s in samples]}
    for texture in TEXTURES:
        chosen = [
            s for name, samples in unseen.items() if get_style(name).texture == texture for s in samples
        ]
        if chosen:
            pooled[f"{RANDOM_ROW}, {texture}"] = chosen
    rows += measure_renders_and_vae(evaluators, vae, pooled)
    args.json.write_text(
        json.dumps([{k: v for k, v in vars(r).items() if k != "grid"} for r in rows], indent=2) + "\n"
    )
    if args.grid is not None:
        save_grid(rows, args.grid)
    print(markdown(rows))
    print(f"mean PSNR over named styles: {np.mean([r.psnr for r in rows[: len(STYLES)]]):.1f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
